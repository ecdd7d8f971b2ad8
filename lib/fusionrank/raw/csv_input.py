"""CSV inputs as mainstream writers produce them (RFC 4180: pandas, Excel, Python's csv).

A header row; fields quoted with `quote` may hold the delimiter, line breaks and
doubled quotes; UTF-8 with or without a BOM; LF or CRLF line ends. Before Spark
parses anything, each file's bytes are checked once on the executors (`scan_csv`,
one record per file, nothing but a verdict per file comes back to the driver): an
unbalanced quote is an error naming the file and the line where the quoted field
opens, not a table with shifted columns. The check also tells whether any quoted
field spans lines (or a lone CR, which pandas leaves unquoted, sits in a field);
only then is the input parsed in Spark's multiLine mode (which reads each file in
one task), so plain CSVs keep splitting into parallel reads.

A row with more or fewer fields than the header is kept as a malformed record
(`_corrupt_record`) and quarantined by cleaning, never shifted into other columns.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

BOM = b"\xef\xbb\xbf"


class CsvError(ValueError):
    """A CSV file is malformed as a whole (unbalanced quote)."""


def scan_csv(data: bytes, delimiter: str = ",", quote: str = '"') -> tuple[str | None, bool]:
    """(problem or None, whether the file needs multiLine parsing: a quoted field holds
    a line break, or a lone CR sits anywhere) for one file's bytes.

    A quote opens a quoted field only at the start of a field (after the delimiter or
    a line break, or at the start of the file); elsewhere it is a literal character,
    as Spark reads it. Inside a quoted field a doubled quote is one quote; the closing
    quote must be followed by the delimiter, a line break or the end of the file."""
    q, d = ord(quote), ord(delimiter)
    start = 3 if data.startswith(BOM) else 0
    n, pos, multiline = len(data), start, False
    line_ends = (d, 0x0A, 0x0D)
    while True:
        p = data.find(quote.encode(), pos)
        if p < 0:
            # A lone CR (pandas leaves one unquoted) would end a line in Spark's
            # line-split mode: such a file is parsed in multiLine mode too.
            return None, multiline or data.count(b"\r") != data.count(b"\r\n")
        if p > start and data[p - 1] not in line_ends:
            pos = p + 1  # a quote inside an unquoted field: a literal character
            continue
        c = p + 1
        while True:
            c = data.find(quote.encode(), c)
            if c < 0:
                line = data.count(b"\n", 0, p) + 1
                return (f"line {line}: a quoted field opens here and is never closed "
                        f"(unbalanced {quote}; a quote inside a quoted field is written twice: {quote}{quote})",
                        multiline)
            if c + 1 < n and data[c + 1] == q:
                c += 2
                continue
            break
        if not multiline and (data.find(b"\n", p, c) >= 0 or data.find(b"\r", p, c) >= 0):
            multiline = True
        if c + 1 < n and data[c + 1] not in line_ends:
            line, opened = data.count(b"\n", 0, c) + 1, data.count(b"\n", 0, p) + 1
            after = data[c + 1:c + 11].decode("utf-8", "replace").splitlines()[0]
            where = f"opened on line {opened}" if opened != line else "on the same line"
            return (f"line {line}: text {after!r} follows the closing quote of a field {where} "
                    f"(unbalanced {quote}? a quote inside a quoted field is written twice: {quote}{quote})",
                    multiline)
        pos = c + 1


def validate_files(spark: SparkSession, path: str, delimiter: str, quote: str) -> list[tuple[str, str | None, bool]]:
    """[(file, problem or None, quoted line breaks)] for every file under `path`."""

    def scan(records):
        for name, data in records:
            problem, multiline = scan_csv(bytes(data), delimiter, quote)
            yield name, problem, multiline

    return spark.sparkContext.binaryFiles(path).mapPartitions(scan).collect()


def read_csv(spark: SparkSession, path: str, delimiter: str, quote: str, corrupt: str,
             kind: str, shown: str | None = None) -> tuple[DataFrame, set[str], str | None]:
    """(rows as strings with `corrupt` holding malformed rows, header columns, error).

    The error (file and line of an unbalanced quote) is returned, not raised, so the
    caller can first report missing columns, the clearer message for a file that is
    not CSV at all. `path` is what Spark reads; `shown` names it in messages."""
    shown_path = shown or path
    base = spark.read.option("header", True).option("inferSchema", False).option("sep", delimiter) \
        .option("quote", quote).option("escape", quote)
    present = [c.lstrip("\ufeff") for c in base.csv(path).columns]
    verdicts = validate_files(spark, path, delimiter, quote)
    bad = sorted((f, p) for f, p, _ in verdicts if p)
    error = None
    if bad:
        shown = "; ".join(f"{f.removeprefix('file:')}: {p}" for f, p in bad[:3])
        more = f" (and {len(bad) - 3} more file(s))" if len(bad) > 3 else ""
        error = f"{kind} input {shown_path} is not well-formed CSV: {shown}{more}"
    multiline = any(m for _, _, m in verdicts)
    schema = T.StructType([T.StructField(c, T.StringType()) for c in present] + [T.StructField(corrupt, T.StringType())])
    df = (base.schema(schema).option("multiLine", multiline).option("mode", "PERMISSIVE")
          .option("columnNameOfCorruptRecord", corrupt).option("enforceSchema", True).csv(path))
    return df, set(present), error
