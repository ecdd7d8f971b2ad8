"""Shared fixtures: one Spark session per test run, the MovieLens sample, configs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "raw" / "movielens-100k"
RUN_DATE = "1998-04-22"  # the last day of MovieLens-100k

TEST_ENGINE = os.environ.get("FUSIONRANK_TEST_ENGINE", "delta-rs")

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

# CI replays the same generated examples on every run (a failure there is reproducible);
# local runs explore new ones each time.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def make_settings(root: Path, catalog: Path | None = None, events: Path | None = None, **overrides):
    """conf/local.yaml with test paths and a small Spark."""
    from fusionrank.core.config import deep_merge, load_config

    base = {
        "spark": {"master": "local[2]", "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": "2"}},
        # The engine the suite's tables are written with: FUSIONRANK_TEST_ENGINE=delta-spark
        # runs it with the Delta jars (`make jars`); tests/integration/test_engines.py runs both.
        "storage": {"root": str(root / "warehouse"), "engine": TEST_ENGINE},
        "inputs": {
            "catalog": {"path": str(catalog or DATA / "catalog.jsonl"), "format": "json"},
            "events": {"path": str(events or DATA / "events.jsonl"), "format": "json"},
        },
    }
    return load_config(ROOT / "conf" / "local.yaml", overrides=deep_merge(base, overrides))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from fusionrank.core.spark import get_session

    # The one session of the run carries the Delta jars when they are cached, so that
    # tests can write with both engines (each TableStore follows its settings' engine).
    # Without the cache, a Delta catalog without its classes would break every test.
    from fusionrank.core.jars import cached_jars

    engine = "delta-spark" if cached_jars("delta") else "delta-rs"
    settings = make_settings(tmp_path_factory.mktemp("spark"), storage={"engine": engine})
    session = get_session(settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def movielens() -> Path:
    """The canonical raw MovieLens-100k (fetched from the recbole wheel on first use)."""
    from fusionrank.raw.adapters import fetch_movielens_100k

    fetch_movielens_100k(DATA)
    return DATA


@pytest.fixture(scope="session")
def movielens_slice(movielens, tmp_path_factory) -> Path:
    """Every fifth user's events (about 20k) and the items they touched."""
    out = tmp_path_factory.mktemp("ml_slice")
    items: set[str] = set()
    with open(movielens / "events.jsonl") as src, open(out / "events.jsonl", "w") as dst:
        for line in src:
            event = json.loads(line)
            if int(event["user_id"]) % 5 == 0:
                dst.write(line)
                items.add(event["item_id"])
    with open(movielens / "catalog.jsonl") as src, open(out / "catalog.jsonl", "w") as dst:
        for line in src:
            if json.loads(line)["item_id"] in items:
                dst.write(line)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A 2-layer ViT (hidden 32, 32px images, 8px patches) saved as a Hugging Face folder:
    no ViT weights ship on PyPI, so the HF image path is tested with this one."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
