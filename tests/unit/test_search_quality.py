"""The search benchmark's fast version: on held-out search sessions of a small noisy
synthetic shop, the tuned hybrid (+ CTR + intent, weights chosen on a validation
slice of training) beats zero-shot dense retrieval and BM25. Real MiniLM, real
tuning (a few steps), real BM25; no Spark."""

from __future__ import annotations

import pytest

from fusionrank.metrics.search_quality import SYSTEMS, run
from fusionrank.raw.synth import generate
from fusionrank.vectors.tune_text import TuneParams


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    shop = tmp_path_factory.mktemp("shop")
    generate(shop, items=300, users=400, days=40, seed=5, images="none", query_noise=0.4)
    return run(shop, tmp_path_factory.mktemp("work"), test_days=7, val_days=7, seed=0,
               tune=TuneParams(max_steps=8, batch_size=16, freeze_layers=3, lr=1e-4), max_pairs=400,
               log=lambda _: None)


def test_every_system_is_scored_on_clean_and_noisy_cases(result):
    assert set(result["results"]) == set(SYSTEMS)
    for system in SYSTEMS:
        groups = result["results"][system]
        assert groups["clean"]["cases"] > 20 and groups["noisy"]["cases"] > 10
        assert groups["all"]["cases"] == groups["clean"]["cases"] + groups["noisy"]["cases"]
    assert result["tuning"]["steps"] == 8 and "val_ndcg_tuned" in result["tuning"]


def test_tuned_hybrid_beats_dense_and_bm25(result):
    ndcg = {s: result["results"][s]["all"]["ndcg"] for s in SYSTEMS}
    assert ndcg["full"] > ndcg["dense"]
    assert ndcg["full"] > ndcg["bm25"]
    assert result["results"]["full"]["noisy"]["ndcg"] > result["results"]["bm25"]["noisy"]["ndcg"]


def test_intent_is_mostly_right_for_seen_queries(result):
    assert result["intent"]["seen"] > 0.8
