"""The stage is reachable from the console script and from spark-submit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import ROOT, write_jsonl

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_console_script_help_lists_the_commands():
    out = subprocess.run([str(BIN / "fusionrank"), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "stage", "data"):
        assert command in out
    stage = subprocess.run([str(BIN / "fusionrank"), "stage", "--help"], capture_output=True, text=True, check=True)
    assert "encode_items" in stage.stdout and "evaluate" in stage.stdout


def test_invalid_config_fails_with_key_and_file(tmp_path):
    shutil.copy(ROOT / "conf" / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "bad.yaml").write_text("rank:\n  kk: 10\n")
    proc = subprocess.run([str(BIN / "fusionrank"), "run", "--conf", str(tmp_path / "bad.yaml"), "--date", "2026-11-22"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "bad.yaml: rank.kk: unknown key" in proc.stderr


def submit_clean_catalog(tmp_path, catalog_rows: list[dict], spark: dict | None = None) -> subprocess.CompletedProcess:
    """spark-submit jobs/clean_catalog.py (local[1]) on `catalog_rows`, with a conf whose
    `spark` section adds `spark` to the cluster-style master: null; it must succeed."""
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    catalog = write_jsonl(tmp_path / "raw" / "catalog.jsonl", catalog_rows)
    (conf / "job.yaml").write_text(json.dumps({
        "spark": {"master": None, "ui_enabled": False, **(spark or {})},
        "storage": {"root": str(tmp_path / "warehouse")},
        "inputs": {"catalog": {"path": str(catalog)}, "events": {"path": str(catalog)}},
    }))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "clean_catalog.py"), "--conf", str(conf / "job.yaml"), "--date", "2026-11-22"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_spark_submit_runs_a_job_file(tmp_path):
    proc = submit_clean_catalog(tmp_path, [{"item_id": "1", "title": "Toy Story (1995)"}, {"item_id": "2", "title": ""}])
    assert "clean_catalog" in proc.stdout and "clean_rows=1" in proc.stdout
    rows = DeltaTable(str(tmp_path / "warehouse" / "catalog_clean")).to_pandas()
    assert list(rows["item_id"]) == ["1"]
    quarantine = DeltaTable(str(tmp_path / "warehouse" / "quarantine")).to_pandas()
    assert list(quarantine["reason"]) == ["missing title"]


def test_a_job_builds_its_session_with_its_stage_conf(tmp_path):
    """A stage's own Spark conf (spark.stages.<stage>.conf) reaches the session that
    `jobs/<stage>.py` builds under spark-submit: seen through Spark's event log, which
    only the stage's conf switches on."""
    mine, other = tmp_path / "events-clean_catalog", tmp_path / "events-rank"
    mine.mkdir(), other.mkdir()
    log_conf = lambda folder: {"spark.eventLog.enabled": True, "spark.eventLog.dir": folder.as_uri()}  # noqa: E731
    proc = submit_clean_catalog(tmp_path, [{"item_id": "1", "title": "Toy Story (1995)"}],
                                {"stages": {"clean_catalog": {"conf": log_conf(mine)}, "rank": {"conf": log_conf(other)}}})
    assert "clean_rows=1" in proc.stdout
    assert list(mine.iterdir()), "clean_catalog's own conf (its event log) did not reach its session"
    assert not list(other.iterdir())  # another stage's conf stays with that stage


def test_amazon_reviews_convert_feeds_the_cleaning_stages(spark, tmp_path):
    """`fusionrank data convert amazon-reviews-2023` output is valid raw input."""
    import datetime as dt

    from fusionrank.interfaces import cli
    from fusionrank.core.context import make_context
    from fusionrank.pipeline import run_stage
    from tests.conftest import make_settings

    meta = write_jsonl(tmp_path / "meta_Toys.jsonl", [
        {"parent_asin": "B01", "title": "Wooden Train Set", "main_category": "Toys", "store": "Brio",
         "categories": ["Toys & Games", "Trains"], "price": 39.99, "features": ["40 pieces"],
         "description": ["Classic set."], "images": [{"large": "https://img/b01.jpg", "variant": "MAIN"}]},
        {"parent_asin": "B02", "title": "Puzzle", "main_category": "Toys", "price": "None", "images": []},
    ])
    reviews = write_jsonl(tmp_path / "Toys.jsonl", [
        {"user_id": "AX1", "parent_asin": "B01", "asin": "B01a", "rating": 5.0, "timestamp": 1700000000000,
         "verified_purchase": True, "title": "great", "text": "kids love it"},
        {"user_id": "AX2", "parent_asin": "B02", "asin": "B02", "rating": 3.0, "timestamp": 1700000100000,
         "verified_purchase": False},
    ])
    out = tmp_path / "raw"
    assert cli.main(["data", "convert", "amazon-reviews-2023", "--reviews", str(reviews), "--meta", str(meta),
                     "--out", str(out)]) == 0
    settings = make_settings(tmp_path, out / "catalog.jsonl", out / "events.jsonl")
    ctx = make_context(settings, dt.date(2023, 11, 30), spark)
    catalog = run_stage("clean_catalog", settings, ctx.run_date, ctx=ctx).counts
    events = run_stage("clean_events", settings, ctx.run_date, ctx=ctx).counts
    assert catalog["clean_rows"] == 2 and catalog["quarantined_rows"] == 0
    assert events["raw_rows"] == 3 and events["clean_rows"] == 3  # 2 ratings + 1 verified purchase
    item = ctx.store.read("catalog_clean").where("item_id = 'B01'").first()
    assert item["category"] == "Toys & Games > Trains" and item["brand"] == "Brio"
    assert item["image_uri"] == "https://img/b01.jpg" and item["price"] == 39.99
