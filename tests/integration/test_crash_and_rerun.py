"""A stage killed mid-write, a write that fails before its commit, and reruns.

The kill is real: the stage runs as its spark-submit entry point in a child process
(with its own JVM) and gets SIGKILL. The table's last committed version must stay
intact and readable, the files of the killed write must stay invisible to readers
(reads go through the Delta log), a rerun must complete and equal a clean run, and
the leftover folder is removed by a later write once its grace period has passed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.core.context import make_context
from fusionrank.pipeline import run_stage
from fusionrank.storage.store import FAULT_ENV, StorageError, referenced_write_dirs
from tests.conftest import ROOT, make_settings, write_jsonl

pytestmark = pytest.mark.integration

RUN_DATE = dt.date(2026, 11, 22)
OTHER_DATE = dt.date(2026, 11, 21)


def catalog(tag: str, n: int) -> list[dict]:
    rows = [{"item_id": str(i), "title": f"{tag} item {i}", "price": i % 97, "description": f"{tag} " * 40}
            for i in range(n)]
    return rows + [{"item_id": "bad", "title": ""}]  # one quarantined row per version


def write_conf(tmp: Path, settings) -> str:
    folder = tmp / "conf"
    folder.mkdir(exist_ok=True)
    shutil.copy(ROOT / "conf" / "base.yaml", folder / "base.yaml")
    (folder / "test.yaml").write_text(json.dumps({
        "spark": {"master": "local[2]", "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": 2}},
        "storage": {"root": str(settings.storage.root)},
        "inputs": {"catalog": {"path": str(settings.inputs.catalog.path)},
                   "events": {"path": str(settings.inputs.events.path)}},
    }))
    return str(folder / "test.yaml")


def start_job(conf: str, stage: str, date: dt.date, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    # A new session: the kill reaches the Python driver and its JVM together.
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / f"{stage}.py"), "--conf", conf, "--date", str(date)],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def write_dirs(table: Path) -> set[str]:
    return {p.name for p in table.glob("part-*") if p.is_dir()}


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the kill point never came")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def rows(table: Path, version: int | None = None, date: dt.date | None = None) -> pd.DataFrame:
    filters = [("run_date", "=", date)] if date else None
    df = DeltaTable(str(table), version=version).to_pandas(filters=filters)
    df = df.drop(columns=[c for c in ("quarantined_at",) if c in df.columns])
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def files_for(table: Path, date: dt.date) -> list[str]:
    return sorted(DeltaTable(str(table)).file_uris(file_pruning_predicate=[("run_date", "=", str(date))]))


@pytest.fixture()
def two_nights(spark, tmp_path):
    """catalog_clean and quarantine committed for two dates from the first catalog."""
    path = write_jsonl(tmp_path / "raw" / "catalog.jsonl", catalog("old", 300))
    settings = make_settings(tmp_path, path)
    ctx = make_context(settings, RUN_DATE, spark)
    run_stage("clean_catalog", settings, OTHER_DATE, spark=spark)
    run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx)
    table = tmp_path / "warehouse" / "catalog_clean"
    return {"tmp": tmp_path, "path": path, "settings": settings, "ctx": ctx, "table": table,
            "quarantine": tmp_path / "warehouse" / "quarantine",
            "version": DeltaTable(str(table)).version(), "rows": rows(table),
            "other_files": files_for(table, OTHER_DATE),
            "other_quarantine": rows(tmp_path / "warehouse" / "quarantine", date=OTHER_DATE)}


def clean_run(spark, tmp: Path, rows_: list[dict]) -> pd.DataFrame:
    settings = make_settings(tmp, write_jsonl(tmp / "raw" / "catalog.jsonl", rows_))
    run_stage("clean_catalog", settings, RUN_DATE, spark=spark)
    return rows(tmp / "warehouse" / "catalog_clean", date=RUN_DATE)


def test_killed_between_files_and_commit(spark, two_nights, tmp_path_factory):
    n = two_nights
    table = n["table"]
    before_dirs = write_dirs(table)
    new_catalog = catalog("new", 500)
    write_jsonl(n["path"], new_catalog)
    proc = start_job(write_conf(n["tmp"], n["settings"]), "clean_catalog", RUN_DATE, fault="catalog_clean:hang")
    # Killed once Spark has finished writing every Parquet file of the new version
    # (its _SUCCESS marker) and the driver is about to commit.
    kill_when(proc, lambda: any((table / d / "_SUCCESS").exists() for d in write_dirs(table) - before_dirs))

    # The last committed version is intact and readable, by delta-rs and by Spark.
    assert DeltaTable(str(table)).version() == n["version"]
    pd.testing.assert_frame_equal(rows(table), n["rows"])
    spark_rows = n["ctx"].store.read("catalog_clean", where={"run_date": RUN_DATE}).count()
    assert spark_rows == len(n["rows"][n["rows"]["run_date"] == RUN_DATE]) == 300
    # The killed write's files exist on disk but no reader sees them.
    (orphan,) = write_dirs(table) - before_dirs
    assert list((table / orphan).rglob("*.parquet"))
    assert orphan not in referenced_write_dirs(str(table))
    assert not any(orphan in uri for uri in DeltaTable(str(table)).file_uris())

    # The rerun completes and equals a clean run on the same input; the other date
    # and the other date's quarantine are untouched.
    counts = run_stage("clean_catalog", n["settings"], RUN_DATE, ctx=n["ctx"]).counts
    assert (counts["clean_rows"], counts["quarantined_rows"]) == (500, 1)
    expected = clean_run(spark, tmp_path_factory.mktemp("clean"), new_catalog)
    pd.testing.assert_frame_equal(rows(table, date=RUN_DATE), expected)
    assert files_for(table, OTHER_DATE) == n["other_files"]
    pd.testing.assert_frame_equal(rows(n["quarantine"], date=OTHER_DATE), n["other_quarantine"])
    assert len(rows(n["quarantine"], date=RUN_DATE)) == 1

    # The orphan is within its grace period (a write could still be in flight): kept.
    assert (table / orphan).exists()
    # Once it is older than storage.orphan_grace_hours, the next write removes it,
    # and only it: every committed version stays readable (time travel).
    stale = time.time() - 7 * 3600
    for path in [table / orphan, *(table / orphan).rglob("*")]:
        os.utime(path, (stale, stale))
    run_stage("clean_catalog", n["settings"], RUN_DATE, ctx=n["ctx"])
    assert not (table / orphan).exists()
    for version in range(DeltaTable(str(table)).version() + 1):
        assert len(DeltaTable(str(table), version=version).to_pandas()) > 0
    pd.testing.assert_frame_equal(rows(table, version=n["version"]), n["rows"])


def test_killed_while_spark_writes(spark, two_nights):
    # No hook: SIGKILL as soon as the write's folder appears. The table is then at
    # exactly the old version or (had the commit won the race) the new one, never
    # in between; the rerun completes either way.
    n = two_nights
    table = n["table"]
    before_dirs = write_dirs(table)
    write_jsonl(n["path"], catalog("new", 500))
    proc = start_job(write_conf(n["tmp"], n["settings"]), "clean_catalog", RUN_DATE)
    kill_when(proc, lambda: bool(write_dirs(table) - before_dirs))
    version = DeltaTable(str(table)).version()
    assert version in (n["version"], n["version"] + 1)
    titles = set(rows(table, date=RUN_DATE)["title"])
    if version == n["version"]:
        pd.testing.assert_frame_equal(rows(table), n["rows"])
    else:
        assert len(titles) == 500 and all(t.startswith("new") for t in titles)
    run_stage("clean_catalog", n["settings"], RUN_DATE, ctx=n["ctx"])
    assert set(rows(table, date=RUN_DATE)["title"]) == {f"new item {i}" for i in range(500)}
    assert files_for(table, OTHER_DATE) == n["other_files"]


def test_failure_before_commit_leaves_no_files(spark, two_nights, monkeypatch):
    n = two_nights
    table = n["table"]
    before_dirs = write_dirs(table)
    write_jsonl(n["path"], catalog("new", 500))
    monkeypatch.setenv(FAULT_ENV, "catalog_clean:raise")
    with pytest.raises(StorageError, match="write of catalog_clean interrupted before its commit"):
        run_stage("clean_catalog", n["settings"], RUN_DATE, ctx=n["ctx"])
    assert write_dirs(table) == before_dirs  # the uncommitted files were removed
    assert DeltaTable(str(table)).version() == n["version"]
    pd.testing.assert_frame_equal(rows(table), n["rows"])
    monkeypatch.delenv(FAULT_ENV)
    run_stage("clean_catalog", n["settings"], RUN_DATE, ctx=n["ctx"])
    assert len(rows(table, date=RUN_DATE)) == 500
