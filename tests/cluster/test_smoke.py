"""The cluster tier: jobs spark-submitted to a standalone master with two workers
write Delta tables to an S3-compatible object store, with delta-spark and with
delta-rs; the test reads them back from the store with `deltalake`, as consumers do."""

from __future__ import annotations

from pathlib import Path

import pytest
from deltalake import DeltaTable

from fusionrank.core.jars import cached_jars
from tests.cluster.conftest import submit

JOBS = Path(__file__).parent / "jobs"
ROWS = 400


@pytest.fixture(scope="module")
def jars():
    delta, s3a = cached_jars("delta"), cached_jars("s3a")
    assert delta and s3a, "the Delta and S3A jars are not cached: run `make jars` (python -m fusionrank.core.jars fetch)"
    return {"delta": delta, "s3a": s3a}


def ran_on_both_workers(cluster, dirs: set[str]) -> None:
    """Every row names its executor's work folder: both workers' folders must show up."""
    owners = {i for d in dirs for i, work in enumerate(cluster.worker_dirs) if d.startswith(str(work))}
    assert owners == {0, 1}, f"rows came from executor folders {sorted(dirs)}, not from both workers"
    assert all(any(d.startswith(str(w)) for w in cluster.worker_dirs) for d in dirs), dirs


def finished_app(cluster, name: str) -> dict:
    apps = [a for a in cluster.state()["completedapps"] if a["name"] == name]
    assert apps and apps[-1]["state"] == "FINISHED", cluster.state()["completedapps"]
    return apps[-1]


def test_delta_spark_writes_to_the_object_store_from_both_workers(cluster, object_store, jars):
    uri = f"s3a://{object_store.bucket}/smoke/delta_spark"
    conf = {**object_store.hadoop_conf(),
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"}
    # Delta ships with the job (spark.jars, as fusionrank's sessions do); the 650 MiB AWS
    # SDK bundle is on the hosts' class path, as a cluster image provides it.
    proc = submit(cluster, JOBS / "write_delta_spark.py", [uri, str(ROWS)], conf, jars=jars["delta"],
                  class_path=jars["s3a"])
    assert f"delta-spark wrote {ROWS} rows" in proc.stdout
    table = DeltaTable(f"s3://{object_store.bucket}/smoke/delta_spark", storage_options=object_store.storage_options())
    data = table.to_pyarrow_table()
    assert sorted(data.column("id").to_pylist()) == list(range(ROWS))
    assert table.metadata().partition_columns == ["part"]
    assert {p: v for p, v in zip(*[data.column(c).to_pylist() for c in ("id", "part")])}[7] == "1"
    ran_on_both_workers(cluster, set(data.column("executor_dir").to_pylist()))
    finished_app(cluster, "fusionrank-smoke-delta-spark")


def test_delta_rs_commits_executor_files_on_the_object_store(cluster, object_store):
    proc = submit(cluster, JOBS / "write_delta_rs.py",
                  [object_store.endpoint, object_store.bucket, "smoke/delta_rs", str(ROWS)], {})
    assert "delta-rs committed 4 files" in proc.stdout
    table = DeltaTable(f"s3://{object_store.bucket}/smoke/delta_rs", storage_options=object_store.storage_options())
    data = table.to_pyarrow_table().sort_by("id")
    assert data.column("id").to_pylist() == list(range(ROWS))
    assert data.column("value").to_pylist() == [2.0 * i for i in range(ROWS)]
    assert table.version() == 0
    ran_on_both_workers(cluster, set(data.column("executor_dir").to_pylist()))
    finished_app(cluster, "fusionrank-smoke-delta-rs")
