"""Per-stage Spark conf (spark.stages): the merge, what a stage's session gets, and
the shipped cluster files (GPU amounts only on the stages that use a GPU). No Spark."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusionrank.core.config import GPU_AMOUNT_KEYS, STAGE_NAMES, ConfigError, load_config
from fusionrank.core.spark import REQUIRED_CONF, session_conf
from fusionrank.pipeline.registry import STAGES

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GPU_STAGES = {"encode_items", "tune_text_encoder"}


def overlay(tmp_path: Path, spark: dict) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(CONF / "base.yaml"),
        "inputs": {"catalog": {"path": str(tmp_path / "c.jsonl")}, "events": {"path": str(tmp_path / "e.jsonl")}},
        "storage": {"root": str(tmp_path / "wh"), "engine": "delta-rs"},
        "spark": spark}))
    return path


def test_stage_names_are_the_registered_stages():
    assert set(STAGE_NAMES) == set(STAGES)


def test_stage_conf_merges_over_the_global_conf_and_null_removes_a_key(tmp_path):
    settings = load_config(overlay(tmp_path, {
        "conf": {"spark.executor.memory": "8g", "spark.sql.shuffle.partitions": 64},
        "stages": {"rank": {"conf": {"spark.executor.memory": "16g", "spark.task.cpus": 8,
                                     "spark.sql.shuffle.partitions": None}}}}))
    rank = settings.spark.conf_for("rank")
    assert rank["spark.executor.memory"] == "16g"
    assert rank["spark.task.cpus"] == "8"  # Spark values are strings
    assert "spark.sql.shuffle.partitions" not in rank
    other = settings.spark.conf_for("clean_events")
    assert other["spark.executor.memory"] == "8g" and other["spark.sql.shuffle.partitions"] == "64"
    assert "spark.task.cpus" not in other
    assert settings.spark.conf_for(None) == settings.spark.conf
    # The session a stage builds gets its conf, plus what every session needs.
    built = session_conf(settings, "rank")
    assert built["spark.executor.memory"] == "16g" and built["spark.task.cpus"] == "8"
    assert {k: built[k] for k in REQUIRED_CONF} == REQUIRED_CONF
    assert session_conf(settings, "clean_events")["spark.executor.memory"] == "8g"


def test_an_unknown_stage_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"spark\.stages.*unknown stage.*encode_item'"):
        load_config(overlay(tmp_path, {"stages": {"encode_item": {"conf": {"spark.task.cpus": 2}}}}))
    settings = load_config(overlay(tmp_path, {}))
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        settings.spark.conf_for("nope")


def test_cluster_yaml_asks_for_gpus_only_on_the_gpu_stages():
    settings = load_config(CONF / "cluster.yaml")
    assert not any(key in settings.spark.conf for key in GPU_AMOUNT_KEYS)  # cleaning needs no GPU host
    gpu = {stage for stage in STAGE_NAMES if settings.spark.uses_gpu(stage)}
    assert gpu == GPU_STAGES
    encode = settings.spark.conf_for("encode_items")
    assert encode["spark.executor.resource.gpu.amount"] == "1" and encode["spark.task.resource.gpu.amount"] == "1"
    assert encode["spark.executor.resource.gpu.discoveryScript"]
    # tune_text_encoder trains on the driver: the driver asks for the GPU, the executors do not.
    tune = settings.spark.conf_for("tune_text_encoder")
    assert tune["spark.driver.resource.gpu.amount"] == "1" and "spark.executor.resource.gpu.amount" not in tune
    # One rank task (one Python worker, one index copy) per executor.
    rank = settings.spark.conf_for("rank")
    assert rank["spark.task.cpus"] == rank["spark.executor.cores"]
    for stage in STAGE_NAMES:  # the memory plan: every stage has driver and Python memory set
        conf = settings.spark.conf_for(stage)
        assert {"spark.driver.memory", "spark.driver.memoryOverhead", "spark.executor.memory",
                "spark.executor.memoryOverhead"} <= set(conf), stage


def test_cluster_k8s_yaml_is_cluster_yaml_plus_the_gpu_vendor():
    plain, k8s = load_config(CONF / "cluster.yaml"), load_config(CONF / "cluster-k8s.yaml")
    for stage in STAGE_NAMES:
        a, b = plain.spark.conf_for(stage), k8s.spark.conf_for(stage)
        for who in ("executor", "driver"):
            if f"spark.{who}.resource.gpu.amount" in b:
                assert b.pop(f"spark.{who}.resource.gpu.vendor") == "nvidia.com", stage
                assert b.pop(f"spark.{who}.resource.gpu.discoveryScript").endswith("getGpusResources.sh")
                a.pop(f"spark.{who}.resource.gpu.discoveryScript")
        assert a == b, stage
    dump = lambda s: {k: v for k, v in s.model_dump(mode="json").items() if k != "spark"}  # noqa: E731
    assert dump(plain) == dump(k8s)


def test_gpu_tasks_profile_the_encoder_alone(tmp_path):
    from fusionrank.core.spark import task_profile

    gpu_executors = {"spark.executor.resource.gpu.amount": 1,
                     "spark.executor.resource.gpu.discoveryScript": "/opt/gpus.sh"}
    settings = load_config(overlay(tmp_path, {"stages": {"encode_items": {
        "conf": gpu_executors, "gpu_tasks": {"gpus": 1, "cpus": 4}}}}))
    assert settings.spark.uses_gpu("encode_items")  # the executors have GPUs: the DAG's pool
    assert "spark.task.resource.gpu.amount" not in settings.spark.conf_for("encode_items")
    profile = task_profile(settings.spark.stages["encode_items"].gpu_tasks.gpus, 4)
    assert profile.taskResources["gpu"].amount == 1 and profile.taskResources["cpus"].amount == 4
    assert profile.executorResources == {}  # a task profile: the executors the application has
    with pytest.raises(ConfigError, match="gpu_tasks.*remove spark.task.resource.gpu.amount"):
        load_config(overlay(tmp_path, {"stages": {"encode_items": {
            "conf": {**gpu_executors, "spark.task.resource.gpu.amount": 1}, "gpu_tasks": {"gpus": 1}}}}))
    with pytest.raises(ConfigError, match=r"rank.gpu_tasks: only \['encode_items'\]"):
        load_config(overlay(tmp_path, {"stages": {"rank": {"gpu_tasks": {"gpus": 1}}}}))
