"""A stage's own Spark conf (spark.stages.<stage>.conf) reaches the session that
`jobs/<stage>.py` builds under spark-submit: seen through Spark's event log, which
only the stage's conf switches on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_jsonl

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_a_job_builds_its_session_with_its_stage_conf(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    catalog = write_jsonl(tmp_path / "raw" / "catalog.jsonl", [{"item_id": "1", "title": "Toy Story (1995)"}])
    mine, other = tmp_path / "events-clean_catalog", tmp_path / "events-rank"
    mine.mkdir(), other.mkdir()
    log_conf = lambda folder: {"spark.eventLog.enabled": True, "spark.eventLog.dir": folder.as_uri()}  # noqa: E731
    (conf / "job.yaml").write_text(json.dumps({
        "spark": {"master": None, "ui_enabled": False,
                  "stages": {"clean_catalog": {"conf": log_conf(mine)}, "rank": {"conf": log_conf(other)}}},
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
    assert "clean_rows=1" in proc.stdout
    assert list(mine.iterdir()), "clean_catalog's own conf (its event log) did not reach its session"
    assert not list(other.iterdir())  # another stage's conf stays with that stage
