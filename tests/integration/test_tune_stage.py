"""tune_text_encoder (weekly) through the real stage: pairs from the cleaned events,
a tuned safetensors folder under storage.root, and the held-out verdict that decides
whether models.text.use_tuned may use it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fusionrank.raw.synth import generate
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 22)


def test_the_weekly_stage_tunes_and_judges_on_validation(spark, tmp_path):
    from fusionrank.core.catalog import layout
    from fusionrank.pipeline import ORDER, run_all
    from fusionrank.pipeline.runner import run_stage
    from fusionrank.vectors.encoders import default_text_model_path, folder_digest, text_model_path

    assert "tune_text_encoder" not in ORDER  # weekly, not nightly
    generate(tmp_path / "shop", items=200, users=200, days=30, seed=4, end_date=END, images="none", query_noise=0.4)
    settings = make_settings(tmp_path, tmp_path / "shop" / "catalog.jsonl", tmp_path / "shop" / "events.jsonl",
                             evaluate={"holdout_days": 3}, models={"text": {"use_tuned": True}},
                             tuning={"max_steps": 3, "negative_pool": 150, "val_days": 5, "lookback_days": 20,
                                     "batch_size": 8})
    run_all(settings, END, spark, stages=["clean_catalog", "clean_events"])
    verdict = run_stage("tune_text_encoder", settings, END).counts
    assert verdict["steps"] == 3 and verdict["pairs"] > 50 and verdict["val_cases"] > 10
    assert folder_digest(verdict["path"]) == verdict["digest"] != verdict["base_digest"]
    saved = json.loads(Path(layout(settings).tuned_text_pointer()).read_text())  # a local URI here
    assert saved["accepted"] == (verdict["val_ndcg_tuned"] > verdict["val_ndcg_base"])
    expected = verdict["path"] if saved["accepted"] else str(default_text_model_path())
    assert str(text_model_path(settings)) == expected
