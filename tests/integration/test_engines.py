"""Both table engines for real: delta-spark (the cached jars, `make jars`) and delta-rs
write the same nights into the same tables, row for row and column for column, as the
consumers read them with `deltalake`; and both follow one schema-evolution policy
(fusionrank.storage.table_schema) when a later night adds, retypes or drops a column."""

from __future__ import annotations

import datetime as dt
from functools import partial

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.spark import delta_spark_available
from fusionrank.storage.store import ExecutorBatches, TableStore
from fusionrank.storage.table_schema import SchemaEvolutionError
from tests.conftest import make_settings

ENGINES = ("delta-rs", "delta-spark")
D1, D2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)

RECS = T.StructType([
    T.StructField("run_date", T.DateType(), False),
    T.StructField("user_id", T.StringType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("item_id", T.StringType(), False),
    T.StructField("score", T.FloatType()),
    T.StructField("reason", T.StringType()),
])
EMB = T.StructType([
    T.StructField("item_id", T.StringType(), False),
    T.StructField("vector", T.ArrayType(T.FloatType(), False)),
    T.StructField("updated_at", T.TimestampType()),
])
METRICS = T.StructType([
    T.StructField("run_date", T.DateType(), False),
    T.StructField("metric", T.StringType(), False),
    T.StructField("k", T.IntegerType()),
    T.StructField("value", T.DoubleType()),
])


@pytest.fixture(scope="module")
def both(spark):
    assert delta_spark_available(spark), (
        "the Delta jars are not on the test session's classpath: run `make jars` "
        "(python -m fusionrank.core.jars fetch) before the tests")
    return spark


def store(spark, tmp_path, engine: str) -> TableStore:
    settings = make_settings(tmp_path / engine, storage={"engine": engine})
    made = TableStore(spark, settings)
    assert made.engine == engine
    return made


def recs_frame(spark, day: dt.date, users: range, tag: str):
    rows = [(day, f"u{u}", r, f"{tag}-{(u * 7 + r) % 50}", float(u) / (r + 1), None if r % 3 else f"because {r}")
            for u in users for r in range(1, 4)]
    return spark.createDataFrame(rows, RECS)


def produce_recs(batches, tag: str):
    """An ExecutorBatches body: each input user number -> two ranked rows."""
    for batch in batches:
        users = batch.column("n").to_pylist()
        yield pa.RecordBatch.from_pydict({
            "user_id": [f"x{u}" for u in users for _ in (1, 2)],
            "rank": pa.array([r for _ in users for r in (1, 2)], pa.int32()),
            "item_id": [f"{tag}-{u + r}" for u in users for r in (1, 2)],
            "score": pa.array([u / r for u in users for r in (1, 2)], pa.float32()),
            "reason": [None for _ in users for _ in (1, 2)],
        })


def night(spark, tables: TableStore) -> list[int]:
    """Two nights and a rerun, through every write path TableStore has; the versions."""
    versions = []
    emb = spark.createDataFrame([(str(i), [float(i), 1.0, -0.5], dt.datetime(2026, 11, 20, 3, i)) for i in range(20)],
                                EMB)
    versions.append(tables.write(emb, "item_embeddings"))
    versions.append(tables.write(recs_frame(spark, D1, range(0, 30), "a"), "recs_user_topk",
                                 partition_by=["run_date"], replace={"run_date": D1}))
    versions.append(tables.write(recs_frame(spark, D2, range(10, 40), "b"), "recs_user_topk",
                                 partition_by=["run_date"], replace={"run_date": D2}))
    # The rerun of D1: other users, other items; D2 must stay as it was.
    batches = ExecutorBatches(spark.range(12).select(F.col("id").cast("int").alias("n")).repartition(2),
                              partial(produce_recs, tag="c"), T.StructType(RECS.fields[1:]), distinct="user_id")
    versions.append(tables.write(recs_frame(spark, D1, range(100, 105), "c"), "recs_user_topk",
                                 partition_by=["run_date"], replace={"run_date": D1}, batches=batches, schema=RECS))
    for day, value in ((D1, 0.25), (D2, 0.5), (D1, 0.75)):
        rows = pa.table({"metric": ["recall", "ndcg"], "k": pa.array([10, 10], pa.int32()), "value": [value, value / 2]})
        versions.append(tables.write_rows(rows, "metrics", METRICS, partition_by=["run_date"], replace={"run_date": day}))
    # An empty write into an empty partition still commits (a rerun shows in the history).
    empty = pa.table({"metric": pa.array([], pa.string()), "k": pa.array([], pa.int32()),
                      "value": pa.array([], pa.float64())})
    versions.append(tables.write_rows(empty, "metrics", METRICS, partition_by=["run_date"],
                                      replace={"run_date": dt.date(2026, 11, 23)}))
    # A whole-table replace.
    versions.append(tables.write(emb.where(F.col("item_id").cast("int") % 2 == 0), "item_embeddings"))
    return versions


def consumer_view(tables: TableStore, name: str) -> pa.Table:
    """The table as a consumer reads it: deltalake, current version, rows sorted."""
    data = DeltaTable(tables.path(name)).to_pyarrow_table()
    keys = [c for c in ("run_date", "user_id", "rank", "item_id", "metric") if c in data.column_names]
    return data.sort_by([(k, "ascending") for k in keys])


def test_both_engines_write_the_same_tables(both, tmp_path):
    stores = {engine: store(both, tmp_path, engine) for engine in ENGINES}
    versions = {engine: night(both, tables) for engine, tables in stores.items()}
    # One commit per write with either engine.
    assert versions["delta-rs"] == versions["delta-spark"] == [0, 0, 1, 2, 0, 1, 2, 3, 1]
    for name in ("item_embeddings", "recs_user_topk", "metrics"):
        rs, spark_written = (consumer_view(stores[e], name) for e in ENGINES)
        assert rs.schema.names == spark_written.schema.names, name
        assert rs.schema.types == spark_written.schema.types, name
        assert rs.to_pylist() == spark_written.to_pylist(), name
        meta = [DeltaTable(stores[e].path(name)).metadata().partition_columns for e in ENGINES]
        assert meta[0] == meta[1], name
    recs = consumer_view(stores["delta-spark"], "recs_user_topk").to_pylist()
    d1 = [r for r in recs if r["run_date"] == D1]
    assert {r["user_id"] for r in d1} == {f"u{u}" for u in range(100, 105)} | {f"x{u}" for u in range(12)}
    assert len([r for r in recs if r["run_date"] == D2]) == 30 * 3
    assert sorted(r["item_id"] for r in consumer_view(stores["delta-rs"], "item_embeddings").to_pylist()) == \
        sorted(str(i) for i in range(0, 20, 2))
    metrics = consumer_view(stores["delta-spark"], "metrics").to_pylist()
    assert [(r["run_date"], r["metric"], r["value"]) for r in metrics] == [
        (D1, "ndcg", 0.375), (D1, "recall", 0.75), (D2, "ndcg", 0.25), (D2, "recall", 0.5)]
    # Each engine reads what the other wrote (Spark reads through TableStore).
    for reader, writer in (("delta-rs", "delta-spark"), ("delta-spark", "delta-rs")):
        path = stores[writer].path("recs_user_topk")
        from fusionrank.storage.store import read_delta_path

        got = read_delta_path(both, path, reader, where={"run_date": D2}).orderBy("user_id", "rank").collect()
        assert len(got) == 90 and got[0]["user_id"] == "u10" and got[0]["run_date"] == D2
    # An older version stays readable: D1 before its rerun.
    for engine in ENGINES:
        old = DeltaTable(stores[engine].path("recs_user_topk"), version=1).to_pyarrow_table()
        assert sorted(set(old.column("user_id").to_pylist()))[:2] == ["u0", "u1"] and old.num_rows == 2 * 30 * 3


@pytest.mark.parametrize("engine", ENGINES)
def test_a_later_night_may_add_a_column_and_nothing_else(both, tmp_path, engine):
    tables = store(both, tmp_path, engine)
    path = tables.path("recs_user_topk")
    tables.write(recs_frame(both, D1, range(5), "a"), "recs_user_topk", partition_by=["run_date"],
                 replace={"run_date": D1})
    # Night 2 adds a column: merged, nullable, null in night 1's rows.
    later = recs_frame(both, D2, range(5), "b").withColumn("model_version", F.lit("m2"))
    assert tables.write(later, "recs_user_topk", partition_by=["run_date"], replace={"run_date": D2}) == 1
    table = DeltaTable(path)
    assert [f.name for f in table.schema().fields] == [f.name for f in RECS.fields] + ["model_version"]
    assert table.schema().fields[-1].nullable
    rows = table.to_pyarrow_table().to_pylist()
    assert {r["model_version"] for r in rows if r["run_date"] == D1} == {None}
    assert {r["model_version"] for r in rows if r["run_date"] == D2} == {"m2"}
    assert tables.read("recs_user_topk", where={"run_date": D1}).where("model_version is null").count() == 15
    # Night 3 retypes a column: refused before anything is written, naming table and column.
    retyped = recs_frame(both, D2, range(5), "c").withColumn("score", F.col("score").cast("string")) \
        .withColumn("model_version", F.lit("m3"))
    with pytest.raises(SchemaEvolutionError, match=r"table recs_user_topk: column 'score' is float .* but string"):
        tables.write(retyped, "recs_user_topk", partition_by=["run_date"], replace={"run_date": D2})
    # ... and drops one: refused too.
    with pytest.raises(SchemaEvolutionError, match=r"table recs_user_topk: the write has no column\(s\) \['model_version'\]"):
        tables.write(recs_frame(both, D2, range(5), "d"), "recs_user_topk", partition_by=["run_date"],
                     replace={"run_date": D2})
    # Driver-written rows follow the same policy.
    assert tables.write_rows(pa.table({"metric": ["a"], "k": pa.array([1], pa.int32()), "value": [1.0]}),
                             "metrics", METRICS, partition_by=["run_date"], replace={"run_date": D1}) == 0
    as_text = T.StructType(METRICS.fields[:3] + [T.StructField("value", T.StringType())])
    with pytest.raises(SchemaEvolutionError, match="table metrics: column 'value' is double"):
        tables.write_rows(pa.table({"metric": ["a"], "k": pa.array([1], pa.int32()), "value": ["x"]}), "metrics",
                          as_text, partition_by=["run_date"], replace={"run_date": D1})
    assert DeltaTable(tables.path("metrics")).version() == 0
    assert DeltaTable(path).version() == 1
    assert DeltaTable(path).to_pyarrow_table().num_rows == 30
