"""The nightly DAG: it parses, its shape, and one real run of it with `dag.test()`.

The end-to-end run uses Airflow with a SQLite metadata DB in a temp folder, the
Spark connection from an AIRFLOW_CONN_ environment variable (spark-submit
--master local[2]) and the deployment Variables from AIRFLOW_VAR_ variables, over
a small MovieLens slice. Airflow runs in a subprocess (tests/dags/run_dag.py)
so its settings never leak into the other tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, RUN_DATE

DAGS = ROOT / "airflow_dags"
DAG_FILE = DAGS / "fusionrank_nightly.py"
STAGES = ["clean_catalog", "clean_events", "encode_items", "build_index", "build_profiles", "rank", "evaluate",
          "publish"]
SENSORS = ["wait_for_catalog", "wait_for_events"]

# Airflow reads its home when first imported: give the in-process DagBag tests a
# throw-away one (no DB is needed to parse DAGs).
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="fusionrank-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("tests/dags need the airflow extra: pip install -e '.[dev,airflow]' (make install does)") from exc


def load_dag():
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}, bag.import_errors
    assert list(bag.dags) == ["fusionrank_nightly"]
    return bag.dags["fusionrank_nightly"]


# -- structure --------------------------------------------------------------------------
def test_stage_tasks_follow_the_pipeline_order():
    from fusionrank.pipeline import ORDER

    assert STAGES == ORDER
    dag = load_dag()
    assert sorted(dag.task_ids) == sorted(SENSORS + STAGES)
    for sensor in SENSORS:
        task = dag.get_task(sensor)
        assert task.upstream_task_ids == set()
        assert task.downstream_task_ids == {"clean_catalog"}
        assert task.mode == "reschedule"
    for before, after in zip(STAGES, STAGES[1:]):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert dag.get_task("publish").downstream_task_ids == set()
    assert dag.max_active_runs == 1


def test_every_stage_is_a_spark_submit_of_its_job():
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    dag = load_dag()
    for stage in STAGES:
        task = dag.get_task(stage)
        assert isinstance(task, SparkSubmitOperator)
        assert task.application.endswith(f"/jobs/{stage}.py")
        assert (ROOT / "jobs" / f"{stage}.py").exists()
        assert task.application_args[:2] == ["--date", "{{ ds }}"]
        assert task.application_args[2] == "--conf"


def test_every_task_has_retries_with_backoff_and_a_timeout():
    dag = load_dag()
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None, task.task_id
        assert task.on_failure_callback, task.task_id


def test_encoding_waits_in_the_gpu_pool_named_by_a_variable(monkeypatch):
    dag = load_dag()
    assert dag.get_task("encode_items").pool == "fusionrank_gpu"
    assert {dag.get_task(s).pool for s in STAGES if s != "encode_items"} == {"default_pool"}
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_GPU_POOL", "gpu_a100")
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_SPARK_CONN_ID", "spark_yarn")
    dag = load_dag()
    assert dag.get_task("encode_items").pool == "gpu_a100"
    # SparkSubmitOperator keeps the connection id in `_conn_id` (it is not templated).
    assert {dag.get_task(s)._conn_id for s in STAGES} == {"spark_yarn"}


def test_no_paths_or_secrets_in_the_dag_file():
    source = DAG_FILE.read_text()
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    code = code.split('"""', 2)[2]  # the module docstring documents the Variables
    literals = re.findall(r"[\"']([^\"'\n]*)[\"']", code)
    # An absolute path or a URI with a location (`<project_dir>/jobs/...` is relative to a Variable).
    hard_coded = [s for s in literals if re.match(r"^/(?!jobs/)", s) or re.match(r"^[a-z0-9]+://\S", s)]
    assert hard_coded == []
    assert not re.search(r"password|secret|token|AKIA", code, re.IGNORECASE)
    dag = load_dag()
    assert "fusionrank_setting(params, 'conf')" in dag.get_task("rank").application_args[3]
    assert "fusionrank_setting(params, 'project_dir')" in dag.get_task("rank").application


def test_a_missing_variable_names_itself():
    sys.path.insert(0, str(DAGS))
    try:
        import fusionrank_nightly
    finally:
        sys.path.remove(str(DAGS))
    with pytest.raises(ValueError, match="set the Airflow Variable fusionrank_conf .*DAG param 'conf'"):
        fusionrank_nightly.fusionrank_setting({}, "conf")
    assert fusionrank_nightly.fusionrank_setting({"conf": "x.yaml"}, "conf") == "x.yaml"
    assert fusionrank_nightly.fusionrank_setting({}, "py_files", "") == ""


# -- one real night ------------------------------------------------------------------------
ITEMS = 150  # the slice's most-touched items: text encoding dominates the run's time


def _small_slice(movielens: Path, out: Path) -> Path:
    """Every tenth user's events on the ITEMS items they touched most, and those items."""
    out.mkdir(parents=True)
    events = [e for e in map(json.loads, open(movielens / "events.jsonl")) if int(e["user_id"]) % 10 == 0]
    keep = {item for item, _ in Counter(e["item_id"] for e in events).most_common(ITEMS)}
    with open(out / "events.jsonl", "w") as dst:
        dst.writelines(json.dumps(e) + "\n" for e in events if e["item_id"] in keep)
    with open(movielens / "catalog.jsonl") as src, open(out / "catalog.jsonl", "w") as dst:
        dst.writelines(line for line in src if json.loads(line)["item_id"] in keep)
    return out


@pytest.fixture(scope="module")
def night(movielens, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly_dag")
    data = _small_slice(movielens, tmp / "raw")
    conf_dir = tmp / "conf"
    conf_dir.mkdir()
    shutil.copy(ROOT / "conf" / "base.yaml", conf_dir / "base.yaml")
    overlay = {
        # The master comes from the Airflow connection (spark-submit --master local[2]).
        "spark": {"master": None, "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": 2}},
        "storage": {"root": str(tmp / "warehouse")},
        "inputs": {"catalog": {"path": str(data / "catalog.jsonl")}, "events": {"path": str(data / "events.jsonl")}},
        # Lighter than production: this checks the orchestration, not the model.
        "models": {"text": {"max_length": 32}},
        "behaviour": {"max_iter": 3},
        "index": {"self_check_queries": 100},
        # 5 held-out users on 150 items say nothing about quality (ndcg@10 is 0.0
        # here): a floor on what the slice can show; strict.yaml makes it fail.
        "publish": {"floors": {"ndcg@10": 0.0, "users_evaluated": 3}},
    }
    (conf_dir / "night.yaml").write_text(json.dumps(overlay))
    strict = dict(overlay, publish={"floors": {"ndcg@10": 0.99}})
    (conf_dir / "strict.yaml").write_text(json.dumps(strict))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        "AIRFLOW_CONN_FUSIONRANK_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_VAR_FUSIONRANK_SPARK_CONN_ID": "fusionrank_spark",
        "AIRFLOW_VAR_FUSIONRANK_CONF": str(conf_dir / "night.yaml"),
        "AIRFLOW_VAR_FUSIONRANK_PROJECT_DIR": str(ROOT),
        "AIRFLOW_VAR_FUSIONRANK_EVENTS_READY": str(data / "events.jsonl"),
        "AIRFLOW_VAR_FUSIONRANK_RETRY_DELAY_SECONDS": "1",
        # Airflow creates no task instances for dates before the DAG's start date.
        "AIRFLOW_VAR_FUSIONRANK_START_DATE": "1998-01-01",
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    (tmp / "airflow").mkdir()
    return {"tmp": tmp, "env": env, "root": tmp / "warehouse", "strict": str(conf_dir / "strict.yaml"),
            "conf": str(conf_dir / "night.yaml")}


def run_dag(night, name: str, run_conf: dict | None = None, mark_success: str | None = None,
            timeout: int = 1800) -> dict:
    out = night["tmp"] / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).parent / "run_dag.py"), "--date", RUN_DATE, "--out", str(out),
           "--run-conf", json.dumps(run_conf or {})]
    if mark_success:
        cmd += ["--mark-success", mark_success]
    # Its own process group, so a timeout also stops the spark-submit children.
    proc = subprocess.Popen(cmd, env=night["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=night["tmp"], start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"dag.test() {name} ran over {timeout}s:\n{log[-6000:]}")
    (night["tmp"] / f"{name}.log").write_text(log)
    assert proc.returncode == 0 and out.exists(), log[-6000:]
    return {**json.loads(out.read_text()), "log": log}


@pytest.fixture(scope="module")
def first_night(night):
    return run_dag(night, "first")


def test_a_night_runs_every_task_and_publishes_the_date(first_night, night, spark):
    from fusionrank.publish import gate as publish
    from fusionrank.core.config import load_config

    assert first_night["tasks"] == {t: "success" for t in SENSORS + STAGES}, first_night["log"][-6000:]
    assert first_night["state"] == "success"
    settings = load_config(night["conf"])
    assert str(publish.current_run_date(settings, spark)) == RUN_DATE
    current = publish.current(settings, spark)
    assert current.status == "published" and current.reasons == []
    assert current.metrics["users_evaluated"] >= 3
    recs = publish.read_current(settings, "recs_user_topk", spark)
    assert recs.count() > 0
    assert {str(r["run_date"]) for r in recs.select("run_date").distinct().collect()} == {RUN_DATE}


def test_a_failed_gate_fails_the_run_and_keeps_the_snapshot(first_night, night, spark):
    from fusionrank.publish import gate as publish
    from fusionrank.core.config import load_config

    settings = load_config(night["conf"])
    before = publish.current(settings, spark)
    recs_before = sorted(tuple(r) for r in publish.read_current(settings, "recs_user_topk", spark).collect())
    # Rerun the date's publish with an impossible floor (the other tasks are marked
    # done): the gate rejects the night. (tests/integration/test_publish.py covers
    # reruns that rewrite the tables before a rejection.)
    rerun = run_dag(night, "strict", run_conf={"conf": night["strict"]}, mark_success=r"(?!publish$).*")
    assert rerun["tasks"]["publish"] == "failed", rerun["log"][-6000:]
    assert rerun["state"] == "failed"
    assert rerun["tries"]["publish"] == 2  # one retry, then the run fails
    assert "ndcg@10 = " in rerun["log"] and "is below its floor 0.9900 (publish.floors.ndcg@10)" in rerun["log"]
    assert f"stage publish failed for run date {RUN_DATE}" in rerun["log"]  # the failure callback

    after = publish.current(settings, spark)
    assert after == before  # same row: date, versions, metrics
    recs_after = sorted(tuple(r) for r in publish.read_current(settings, "recs_user_topk", spark).collect())
    assert recs_after == recs_before
    rejected = [d for d in publish.decisions(settings, spark) if d.status == "rejected"]
    assert len(rejected) == 2 and all("ndcg@10" in d.reasons[0] for d in rejected)
