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


def test_spark_submit_runs_a_job_file(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    catalog = write_jsonl(tmp_path / "raw" / "catalog.jsonl",
                          [{"item_id": "1", "title": "Toy Story (1995)"}, {"item_id": "2", "title": ""}])
    (conf / "job.yaml").write_text(json.dumps({
        "spark": {"master": None, "ui_enabled": False},
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
    assert "clean_catalog" in proc.stdout and "clean_rows=1" in proc.stdout
    rows = DeltaTable(str(tmp_path / "warehouse" / "catalog_clean")).to_pandas()
    assert list(rows["item_id"]) == ["1"]
    quarantine = DeltaTable(str(tmp_path / "warehouse" / "quarantine")).to_pandas()
    assert list(quarantine["reason"]) == ["missing title"]
