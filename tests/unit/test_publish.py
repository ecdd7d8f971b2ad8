"""The publish gate's rules and its config (no Spark)."""

from __future__ import annotations

import datetime as dt

import pytest

from fusionrank.core.config import ConfigError, PublishConfig
from fusionrank.publish.gate import gate_failures, metric_key
from tests.conftest import make_settings

DEMO = {"ndcg@10": 0.1481, "recall@10": 0.0785, "precision@10": 0.1296, "coverage@10": 0.1457,
        "users_evaluated": 71.0}
PREVIOUS = dt.date(2026, 11, 21)


def test_metric_keys():
    assert metric_key("ndcg", 10) == "ndcg@10"
    assert metric_key("users_evaluated", None) == "users_evaluated"


def test_default_gate_passes_the_movielens_demo_numbers(tmp_path):
    cfg = make_settings(tmp_path).publish  # conf/base.yaml + local.yaml
    assert gate_failures(DEMO, cfg) == []
    assert gate_failures(DEMO, cfg, previous=DEMO, previous_run_date=PREVIOUS) == []


def test_a_metric_below_its_floor_is_named_with_value_and_floor():
    cfg = PublishConfig(floors={"ndcg@10": 0.2, "recall@10": 0.05})
    failures = gate_failures(DEMO, cfg)
    assert failures == ["ndcg@10 = 0.1481 is below its floor 0.2000 (publish.floors.ndcg@10)"]


def test_a_missing_or_nan_metric_fails():
    cfg = PublishConfig(floors={"map@10": 0.01, "ndcg@10": 0.01})
    failures = gate_failures({**DEMO, "ndcg@10": float("nan")}, cfg)
    assert len(failures) == 2
    assert all("missing" in f for f in failures)
    assert "map@10" in failures[0] and "ndcg@10" in failures[1]


def test_regression_against_the_previous_published_run():
    cfg = PublishConfig(floors={}, max_relative_regression=0.1, regression_metrics=["ndcg@10", "recall@10"])
    previous = {"ndcg@10": 0.20, "recall@10": 0.08}
    # ndcg 0.1481 < 0.18 (= 0.20 * 0.9); recall 0.0785 >= 0.072
    failures = gate_failures(DEMO, cfg, previous, PREVIOUS)
    assert len(failures) == 1
    assert failures[0].startswith("ndcg@10 = 0.1481 is more than 10% below the previous published run")
    assert "2026-11-21: 0.2000" in failures[0] and "limit 0.1800" in failures[0]
    # exactly at the limit passes; the margin can be switched off
    assert gate_failures({"ndcg@10": 0.18, "recall@10": 0.08}, cfg, previous, PREVIOUS) == []
    off = PublishConfig(floors={}, max_relative_regression=None, regression_metrics=["ndcg@10"])
    assert gate_failures(DEMO, off, previous, PREVIOUS) == []


def test_first_run_and_metrics_the_previous_run_lacked_are_not_compared():
    cfg = PublishConfig(floors={}, regression_metrics=["ndcg@10", "map@10"])
    assert gate_failures(DEMO, cfg, None, None) == []
    assert gate_failures(DEMO, cfg, {"ndcg@10": 0.1}, PREVIOUS) == []


def test_unknown_metric_keys_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"publish\.floors.*unknown metric key 'ndcg10'"):
        make_settings(tmp_path, publish={"floors": {"ndcg10": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown metric key 'auc@10'"):
        make_settings(tmp_path, publish={"regression_metrics": ["auc@10"]})
    with pytest.raises(ConfigError, match=r"max_relative_regression"):
        make_settings(tmp_path, publish={"max_relative_regression": 1.5})
    with pytest.raises(ConfigError, match=r"publish\.gate"):
        make_settings(tmp_path, publish={"gate": 1})


def test_gate_metrics_must_be_evaluated(tmp_path):
    with pytest.raises(ConfigError, match=r"\['ndcg@20'\] are not evaluated: evaluate.ks is \[10\]"):
        make_settings(tmp_path, publish={"floors": {"ndcg@20": 0.1}})
    settings = make_settings(tmp_path, evaluate={"ks": [10, 20]}, publish={"floors": {"ndcg@20": 0.1}})
    # overlays merge into base.yaml's floors
    assert settings.publish.floors == {"ndcg@10": 0.05, "ndcg@20": 0.1}


def test_the_library_imports_without_airflow():
    import subprocess
    import sys

    code = ("import sys; sys.modules['airflow'] = None\n"  # any `import airflow` now fails
            "import fusionrank.interfaces.cli, fusionrank.pipeline, fusionrank.publish\n"
            "assert fusionrank.pipeline.ORDER[-1] == 'publish'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
