"""storage: rows written to Parquet by the executors (ExecutorBatches) commit together
with Spark-written rows, replace only their partition, and only reported files count."""

from __future__ import annotations

import datetime as dt
import os
from functools import partial

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.storage.store import ExecutorBatches, StorageError, TableStore
from tests.conftest import make_settings

TABLE = T.StructType([T.StructField("run_date", T.DateType(), False), T.StructField("key", T.StringType(), False),
                      T.StructField("value", T.IntegerType())])
PRODUCED = T.StructType(TABLE.fields[1:])


def double_values(batches, offset: int):
    """A produce function: each input row (n) -> rows (n-a, 2n+offset), (n-b, ...)."""
    for batch in batches:
        n = batch.column("n").to_pylist()
        yield pa.RecordBatch.from_pydict({"key": [f"{i}-{s}" for i in n for s in "ab"],
                                          "value": [2 * i + offset for i in n for _ in "ab"]})


@pytest.fixture()
def store(spark, tmp_path):
    return TableStore(spark, make_settings(tmp_path))


def _batches(spark, n: int, offset: int = 0) -> ExecutorBatches:
    return ExecutorBatches(spark.range(n).select(F.col("id").cast("int").alias("n")).repartition(3),
                           partial(double_values, offset=offset), PRODUCED, distinct="key")


def test_executor_rows_and_spark_rows_land_in_one_commit(spark, store):
    day1, day2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
    extra = spark.createDataFrame([(day1, "spark-row", -1)], TABLE)
    store.write(extra, "recs_item_similar", partition_by=["run_date"], replace={"run_date": day1},
                batches=_batches(spark, 20), schema=TABLE)
    store.write(None, "recs_item_similar", partition_by=["run_date"], replace={"run_date": day2},
                batches=_batches(spark, 5, offset=100), schema=TABLE)
    first = {r["key"]: r["value"] for r in store.read("recs_item_similar", where={"run_date": day1}).collect()}
    assert len(first) == 41 and first["spark-row"] == -1 and first["7-b"] == 14
    assert store.count_rows("recs_item_similar", where={"run_date": day1}) == 41  # numRecords from the reports
    assert store.last_write == {"rows": 10, "distinct": 10}  # the day-2 write: the tasks' own counts
    # Rerunning a date replaces that date only; the files committed are the reported ones.
    store.write(None, "recs_item_similar", partition_by=["run_date"], replace={"run_date": day1},
                batches=_batches(spark, 2, offset=1), schema=TABLE)
    assert sorted(r["value"] for r in store.read("recs_item_similar", where={"run_date": day1}).collect()) == [1, 1, 3, 3]
    assert store.read("recs_item_similar", where={"run_date": day2}).count() == 10
    live = pa.table(DeltaTable(store.path("recs_item_similar")).get_add_actions(flatten=True)).column("path").to_pylist()
    assert len(live) <= 3 + 3  # day 1: one file per non-empty task; day 2: at most one per task
    assert all(os.path.exists(os.path.join(store.path("recs_item_similar"), f)) for f in live)
    assert store.read("recs_item_similar").schema["value"].dataType == T.IntegerType()


def test_executor_batches_are_checked_against_the_table(spark, store):
    with pytest.raises(StorageError, match="every partition column"):
        store.write(None, "query_topk", partition_by=["run_date"], batches=_batches(spark, 2), schema=TABLE)
    wrong = ExecutorBatches(_batches(spark, 2).frame, partial(double_values, offset=0),
                            T.StructType([T.StructField("value", T.IntegerType())]))
    with pytest.raises(StorageError, match="expected \\['key', 'value'\\]"):
        store.write(None, "query_topk", partition_by=["run_date"], replace={"run_date": dt.date(2024, 5, 1)},
                    batches=wrong, schema=TABLE)
