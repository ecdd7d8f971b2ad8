"""Run by test_store_on_s3.py in its own process (its own Spark session with the S3A and
Delta jars): TableStore writes of Spark rows plus executor batches to an s3a:// root
with both engines, twice for one date; prints what the test checks as JSON."""

from __future__ import annotations

import datetime as dt
import json
import sys
from functools import partial

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.config import load_config
from fusionrank.core.spark import get_session
from fusionrank.storage.store import ExecutorBatches, TableStore

TABLE = T.StructType([T.StructField("run_date", T.DateType(), False), T.StructField("key", T.StringType(), False),
                      T.StructField("value", T.IntegerType())])


def double_values(batches, offset: int):
    for batch in batches:
        n = batch.column("n").to_pylist()
        yield pa.RecordBatch.from_pydict({"key": [f"{i}-{s}" for i in n for s in "ab"],
                                          "value": [2 * i + offset for i in n for _ in "ab"]})


def main(conf_path: str, roots: dict[str, str]) -> dict:
    out = {}
    spark = None
    for engine, root in roots.items():
        settings = load_config(conf_path, overrides={"storage": {"root": root, "engine": engine}})
        spark = spark or get_session(settings)
        store = TableStore(spark, settings)
        day = dt.date(2024, 5, 1)
        frame = spark.range(20).select(F.col("id").cast("int").alias("n")).repartition(3)
        extra = spark.createDataFrame([(day, "spark-row", -1)], TABLE)
        for offset in (0, 1):  # a rerun of the date replaces it
            store.write(extra, "recs_item_similar", partition_by=["run_date"], replace={"run_date": day},
                        batches=ExecutorBatches(frame, partial(double_values, offset=offset),
                                                T.StructType(TABLE.fields[1:]), distinct="key"),
                        schema=TABLE)
        rows = {r["key"]: r["value"] for r in store.read("recs_item_similar", where={"run_date": day}).collect()}
        out[engine] = {"engine": store.engine, "last_write": store.last_write, "rows": len(rows),
                       "value_7b": rows.get("7-b"), "spark_row": rows.get("spark-row"),
                       "count_rows": store.count_rows("recs_item_similar", where={"run_date": day}),
                       "version": store._version("recs_item_similar"),
                       "partitions": store.partition_values("recs_item_similar", "run_date")}
    spark.stop()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
