"""Extract: read the raw catalog and events as users bring them.

Every contract column is read as a string, so that a bad value (a price of "abc",
a timestamp of "yesterday") reaches cleaning and is quarantined with its reason
instead of failing the job or turning silently into null. Problems with the input
as a whole (missing path, empty file, wrong format, missing required columns) are
errors that name the file and what is wrong.
"""

from __future__ import annotations

import json
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core import uri as uris
from fusionrank.core.config import InputSource
from fusionrank.core.errors import InputError
from fusionrank.raw.csv_input import read_csv

log = logging.getLogger(__name__)

CORRUPT = "_corrupt_record"
SOURCE_FILE = "_source_file"
SAMPLE_LINES = 1000



def path_exists(spark: SparkSession, path: str) -> bool:
    """Existence check through Hadoop's FileSystem, so any URI Spark reads works."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(fs.exists(hadoop_path))


def _json_columns(spark: SparkSession, where: str, kind: str, path: str | None = None) -> set[str]:
    """Keys of the first lines' objects (`where`: what Spark reads; `path`: for messages)."""
    path = path or where
    lines = [r.value for r in spark.read.text(where).limit(SAMPLE_LINES).collect()]
    if not lines:
        raise InputError(f"{kind} input {path} is empty")
    keys: set[str] = set()
    parsed = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            keys.update(record)
            parsed += 1
    if parsed == 0:
        raise InputError(
            f"{kind} input {path}: none of the first {len(lines)} lines is a JSON object; "
            "is the file really JSON lines (inputs.*.format)?"
        )
    return keys


def _check_column_types(df: DataFrame, fields: list[str], kind: str, path: str) -> None:
    """Contract columns must be scalars (a string, number, boolean or timestamp)."""
    nested = (T.StructType, T.ArrayType, T.MapType)
    for field in df.schema.fields:
        if field.name in fields and isinstance(field.dataType, nested):
            raise InputError(
                f"{kind} input {path}: column {field.name!r} has type {field.dataType.simpleString()}; "
                f"the data contract expects a single value (string or number) per row"
            )


def read_raw(
    spark: SparkSession,
    source: InputSource,
    fields: list[str],
    required: list[str],
    kind: str,
    delta_reader=None,
    drift: dict | None = None,
) -> DataFrame:
    """Read `source` with every contract field as a string, plus the source file and
    the raw text of malformed records (`_corrupt_record`, JSON only).

    Schema drift is reported, not fatal: columns outside the contract are ignored
    (logged as a warning and, when `drift` is given, listed in it under
    `ignored_columns`, so a renamed optional column shows up in the stage counts);
    absent optional contract columns read as null. A contract column of a nested
    type (struct, array, map) is an error naming the column."""
    path = str(source.path)
    where = uris.spark_uri(path)  # fully qualified: never resolved against fs.defaultFS
    if not path_exists(spark, where):
        raise InputError(f"{kind} input {path} does not exist (inputs.{kind}.path)")
    fmt = source.format
    try:
        if fmt == "json":
            present = _json_columns(spark, where, kind, path)
            schema = T.StructType([T.StructField(f, T.StringType()) for f in fields] + [T.StructField(CORRUPT, T.StringType())])
            df = (
                spark.read.schema(schema)
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT)
                .json(where)
            )
        elif fmt == "csv":
            df, present, csv_error = read_csv(spark, where, source.delimiter, source.quote, CORRUPT, kind, path)
        elif fmt == "parquet":
            df = spark.read.parquet(where)
            present = set(df.columns)
        elif fmt == "delta":
            if delta_reader is None:
                raise InputError(f"{kind} input {path}: format delta needs a Delta reader")
            df = delta_reader(path)
            present = set(df.columns)
        else:  # pydantic already limits the choices
            raise InputError(f"{kind} input {path}: unknown format {fmt!r}")
    except InputError:
        raise
    except Exception as exc:  # Spark's AnalysisException and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{kind} input {path} could not be read as {fmt}: {first}") from exc

    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(
            f"{kind} input {path} has no column(s) {missing}; required: {required}; "
            f"found: {sorted(present)}"
        )
    if fmt == "csv" and csv_error:
        raise InputError(csv_error)
    _check_column_types(df, fields, kind, path)
    ignored = sorted(c for c in present if c not in fields and c != CORRUPT)
    if ignored:
        absent = [f for f in fields if f not in present]
        log.warning("%s input %s: column(s) %s are not in the data contract and are ignored "
                    "(renamed? contract columns absent from the input: %s)", kind, path, ignored, absent)
        if drift is not None:
            drift["ignored_columns"] = ignored
    columns = []
    for field in fields:
        if field in df.columns:
            columns.append(F.col(f"`{field}`").cast("string").alias(field))
        else:
            columns.append(F.lit(None).cast("string").alias(field))
    corrupt = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
    return df.select(*columns, corrupt.alias(CORRUPT), F.input_file_name().alias(SOURCE_FILE))
