"""CSV reading cost: the per-file quote check and multiLine parsing against a plain read.

    python bench/csv_read.py --rows 200000 --multiline-share 0.1 --cores 2

Writes a catalog CSV with pandas (descriptions of about 200 characters; the given
share of them hold line breaks, so the file needs multiLine parsing; 0 keeps it
line-splittable), then prints one table:
  * scan_csv: the quote check alone on the file's bytes, one Python process (MB/s);
  * check: the same through Spark (`validate_files`: the file's bytes to a worker);
  * read_raw: fusionrank's CSV reader (quote check on the executors + parse), every
    row parsed (rows counted, description lengths summed), Spark local[cores];
  * plain: Spark's line-split CSV read with a header, the old reader (wrong when a
    field holds a line break: its row count is shown).
Self-contained: writes its data under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--multiline-share", type=float, default=0.1)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession

    from fusionrank.core.config import InputSource
    from pyspark.sql import functions as F

    from fusionrank.raw.csv_input import scan_csv, validate_files
    from fusionrank.raw.readers import read_raw
    from fusionrank.raw.contract import CATALOG_FIELDS, CATALOG_REQUIRED

    tmp = Path(tempfile.mkdtemp(prefix="bench_csv_"))
    rng = np.random.default_rng(0)
    words = np.array(["soft", "cotton", "blue", "a \"classic\"", "fit,", "warm", "size", "M", "L", "wool"])
    desc = [" ".join(rng.choice(words, 30)) for _ in range(1000)]
    breaks = rng.random(args.rows) < args.multiline_share
    frame = pd.DataFrame({
        "item_id": [f"I{i}" for i in range(args.rows)],
        "title": [f"Item {i}" for i in range(args.rows)],
        "description": [desc[i % 1000].replace(" warm ", "\nwarm\n") if b else desc[i % 1000]
                        for i, b in enumerate(breaks)],
        "price": rng.uniform(1, 500, args.rows).round(2),
    })
    path = tmp / "catalog.csv"
    frame.to_csv(path, index=False)
    size_mb = path.stat().st_size / 1e6

    data = path.read_bytes()
    t = time.perf_counter()
    problem, multiline = scan_csv(data)
    scan_s = time.perf_counter() - t
    assert problem is None

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{args.cores}]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(args.cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    source = InputSource(path=path, format="csv")
    def parsed(df):  # forces every row to be parsed (a bare count would only count lines)
        return df.agg(F.count(F.lit(1)).alias("n"), F.sum(F.length("description")).alias("chars")).first()

    parsed(read_raw(spark, source, CATALOG_FIELDS, CATALOG_REQUIRED, "catalog"))  # warm-up
    t = time.perf_counter()
    validate_files(spark, str(path), ",", '"')
    check_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = parsed(read_raw(spark, source, CATALOG_FIELDS, CATALOG_REQUIRED, "catalog"))["n"]
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    plain = parsed(spark.read.option("header", True).option("escape", '"').csv(str(path)))["n"]
    plain_s = time.perf_counter() - t
    spark.stop()

    print(f"\n{args.rows:,} rows, {size_mb:.1f} MB, {breaks.mean():.0%} with line breaks "
          f"(multiLine parse: {multiline}), local[{args.cores}]")
    print(f"  {'step':<10} {'seconds':>8} {'MB/s':>8} {'rows':>10}")
    print(f"  {'scan_csv':<10} {scan_s:>8.2f} {size_mb / scan_s:>8.1f} {'':>10}")
    print(f"  {'check':<10} {check_s:>8.2f} {size_mb / check_s:>8.1f} {'':>10}")
    print(f"  {'read_raw':<10} {ours_s:>8.2f} {size_mb / ours_s:>8.1f} {ours:>10,}")
    print(f"  {'plain':<10} {plain_s:>8.2f} {size_mb / plain_s:>8.1f} {plain:>10,}")


if __name__ == "__main__":
    main()
