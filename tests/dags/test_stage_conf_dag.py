"""The nightly DAG's per-stage Spark conf: each SparkSubmitOperator task gets its
stage's conf from the fusionrank_stage_conf Variable, as `fusionrank config
stage-conf` prints it for conf/cluster.yaml; GPU amounts appear only on the GPU
stages, and those (only) wait in the GPU pool. DagBag parse only, no run."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from fusionrank.core.config import GPU_AMOUNT_KEYS
from fusionrank.interfaces.cli import main
from tests.conftest import ROOT
from tests.dags.test_nightly_dag import STAGES, load_dag


def stage_conf_json(conf: str = "conf/cluster.yaml") -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", "stage-conf", "--conf", str(ROOT / conf)]) == 0
    return out.getvalue()


def test_each_task_gets_its_stage_conf_and_gpus_only_where_used(monkeypatch):
    exported = stage_conf_json()
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_STAGE_CONF", exported)
    dag = load_dag()
    confs = json.loads(exported)
    for stage in STAGES:
        task = dag.get_task(stage)
        assert task.conf == confs[stage], stage  # what spark-submit gets as --conf
        gpu = {k: v for k, v in task.conf.items() if k in GPU_AMOUNT_KEYS or ".resource.gpu." in k}
        if stage == "encode_items":
            assert gpu["spark.executor.resource.gpu.amount"] == "1"
            assert gpu["spark.task.resource.gpu.amount"] == "1"
            assert task.pool == "fusionrank_gpu"
        else:
            assert gpu == {}, stage  # cleaning, profiles, ranking on CPU executors
            assert task.pool == "default_pool", stage
        assert task.conf["spark.executor.memoryOverhead"] and task.conf["spark.driver.memory"]
    assert dag.get_task("rank").conf["spark.task.cpus"] == dag.get_task("rank").conf["spark.executor.cores"]


def test_a_gpu_rank_joins_the_pool(monkeypatch):
    confs = json.loads(stage_conf_json())
    confs["rank"].update({"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"})
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_STAGE_CONF", json.dumps(confs))
    dag = load_dag()
    assert {s for s in STAGES if dag.get_task(s).pool == "fusionrank_gpu"} == {"encode_items", "rank"}


def test_a_bad_stage_conf_variable_names_itself(monkeypatch):
    import sys

    from tests.dags.test_nightly_dag import DAGS

    sys.path.insert(0, str(DAGS))
    try:
        import fusionrank_nightly
    finally:
        sys.path.remove(str(DAGS))
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_STAGE_CONF", "{not json")
    with pytest.raises(ValueError, match="fusionrank_stage_conf is not JSON"):
        fusionrank_nightly.stage_conf()
    monkeypatch.setenv("AIRFLOW_VAR_FUSIONRANK_STAGE_CONF", '{"encode_item": {}}')
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['encode_item'\]"):
        fusionrank_nightly.stage_conf()
    monkeypatch.delenv("AIRFLOW_VAR_FUSIONRANK_STAGE_CONF")
    assert fusionrank_nightly.stage_conf() is None
