"""The publish stage over several nights: what consumers see as "current".

The night's tables are small Delta tables written through TableStore with metric
values chosen per case (the whole pipeline with the gate runs in
tests/dags/test_nightly_dag.py); the stage, the gate and the reads are the real ones.
"""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from fusionrank.publish import gate as publish
from fusionrank.core.context import make_context
from fusionrank.core.errors import StageError
from fusionrank.pipeline import run_stage
from fusionrank.core.catalog import SNAPSHOT_TABLES
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

D1, D2, D0 = dt.date(2026, 11, 21), dt.date(2026, 11, 22), dt.date(2026, 11, 20)


def write_night(ctx, day: dt.date, ndcg: float, recs_item: str = "i1") -> None:
    """The snapshot tables of `day`: metrics with `ndcg`, one recommendation."""
    store, spark = ctx.store, ctx.spark
    metrics = spark.createDataFrame(
        [(day, "ndcg", 10, ndcg, 0.1), (day, "recall", 10, 0.08, 0.09), (day, "users_evaluated", None, 50.0, 50.0)],
        "run_date date, metric string, k int, value double, baseline double",
    )
    recs = spark.createDataFrame([(day, "u1", 1, recs_item, 0.9)],
                                 "run_date date, user_id string, rank int, item_id string, score double")
    queries = spark.createDataFrame([(day, "red dress", 1, recs_item, 0.9)],
                                    "run_date date, query string, rank int, item_id string, score double")
    for table in SNAPSHOT_TABLES:
        frame = metrics if table == "metrics" else queries if table == "query_topk" else recs
        store.write(frame, table, partition_by=["run_date"], replace={"run_date": day})


@pytest.fixture()
def settings(tmp_path):
    return make_settings(tmp_path, publish={"floors": {"ndcg@10": 0.05}, "max_relative_regression": 0.1})


def test_nothing_is_current_before_the_first_publish(spark, settings):
    assert publish.current_run_date(settings, spark) is None
    with pytest.raises(LookupError, match="nothing is published yet"):
        publish.read_current(settings, "recs_user_topk", spark)


def test_current_moves_only_when_the_gate_passes(spark, settings):
    ctx = make_context(settings, D1, spark)
    write_night(ctx, D1, ndcg=0.15)
    result = run_stage("publish", settings, D1, spark=spark)
    assert result.counts["status"] == "published" and result.counts["previous_run_date"] is None
    assert publish.current_run_date(settings, spark) == D1

    # D2 is 20% worse than D1: above the floor, beyond the allowed regression.
    write_night(ctx, D2, ndcg=0.12, recs_item="i2")
    with pytest.raises(StageError) as failure:
        run_stage("publish", settings, D2, spark=spark)
    message = str(failure.value)
    assert "publish gate failed for 2026-11-22; the current snapshot stays 2026-11-21" in message
    assert "ndcg@10 = 0.1200 is more than 10% below the previous published run (2026-11-21: 0.1500" in message
    assert publish.current_run_date(settings, spark) == D1
    assert [r["item_id"] for r in publish.read_current(settings, "recs_user_topk", spark).collect()] == ["i1"]

    # Fixed and rerun: D2 is published and becomes current.
    write_night(ctx, D2, ndcg=0.16, recs_item="i3")
    result = run_stage("publish", settings, D2, spark=spark)
    assert result.counts["previous_run_date"] == str(D1)
    pinned = publish.current(settings, spark)
    assert pinned.run_date == D2 and pinned.previous_run_date == D1
    assert [r["item_id"] for r in publish.read_current(settings, "recs_user_topk", spark).collect()] == ["i3"]

    # A rerun of D2 rewrites its tables, then fails the gate: consumers still read
    # the approved version of D2, not the new rows.
    write_night(ctx, D2, ndcg=0.01, recs_item="i4")
    with pytest.raises(StageError, match=r"ndcg@10 = 0.0100 is below its floor 0.0500 \(publish.floors.ndcg@10\)"):
        run_stage("publish", settings, D2, spark=spark)
    assert publish.current(settings, spark) == pinned
    assert [r["item_id"] for r in publish.read_current(settings, "recs_user_topk", spark).collect()] == ["i3"]
    latest = ctx.store.read("recs_user_topk", where={"run_date": D2}).collect()
    assert [r["item_id"] for r in latest] == ["i4"]

    # A backfill of an older date is published but does not move "current" back.
    write_night(ctx, D0, ndcg=0.14)
    run_stage("publish", settings, D0, spark=spark)
    assert publish.current(settings, spark) == pinned

    history = publish.decisions(settings, spark)
    assert [(d.run_date, d.status) for d in history] == [
        (D0, "published"), (D2, "rejected"), (D2, "published"), (D2, "rejected"), (D1, "published")]
    rejected = history[1]
    assert rejected.reasons == [
        "ndcg@10 = 0.0100 is below its floor 0.0500 (publish.floors.ndcg@10)",
        "ndcg@10 = 0.0100 is more than 10% below the previous published run "
        "(2026-11-21: 0.1500; limit 0.1350, publish.max_relative_regression)",
    ]
    assert rejected.metrics == {"ndcg@10": 0.01, "recall@10": 0.08, "users_evaluated": 50.0}
    # One row per decision, partitioned by run date; nothing else is rewritten.
    rows = ctx.store.read("published").groupBy("run_date").agg(F.count("*").alias("n")).collect()
    assert {r["run_date"]: r["n"] for r in rows} == {D0: 1, D1: 1, D2: 3}


def test_publish_needs_the_nights_tables(spark, settings):
    with pytest.raises(StageError, match="table metrics does not exist yet"):
        run_stage("publish", settings, D1, spark=spark)


def test_show_published_lists_the_decisions(spark, settings, tmp_path, capsys):
    import json
    import shutil

    from fusionrank.interfaces import cli
    from tests.conftest import ROOT

    ctx = make_context(settings, D1, spark)
    write_night(ctx, D1, ndcg=0.01)
    with pytest.raises(StageError):
        run_stage("publish", settings, D1, spark=spark)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", conf_dir / "base.yaml")
    (conf_dir / "test.yaml").write_text(json.dumps({
        "storage": {"root": str(settings.storage.root)},
        "inputs": {"catalog": {"path": str(settings.inputs.catalog.path)},
                   "events": {"path": str(settings.inputs.events.path)}},
    }))
    assert cli.main(["show", "published", "--conf", str(conf_dir / "test.yaml")]) == 0
    out = capsys.readouterr().out
    assert "current snapshot: none (nothing published yet)" in out
    assert "2026-11-21  rejected: ndcg@10 = 0.0100 is below its floor" in out
    assert cli.main(["show", "published", "--conf", str(conf_dir / "test.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["current"] is None and data["decisions"][0]["status"] == "rejected"
