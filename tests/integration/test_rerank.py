"""The re-ranker in the pipeline, on a small synthetic shop: the rank stage trains it
on the driver (labels from the last days of training), it beats retrieval order on
its validation slice, the rank pass applies it on the executors (model_version names
it), and a night without enough labels falls back to the last good model."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from deltalake import DeltaTable

from fusionrank.core.catalog import layout
from fusionrank.raw.synth import generate
from fusionrank.ranks.rerank import ranker as rk
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 22)
STAGES = ["clean_catalog", "clean_events", "encode_items", "build_index", "build_profiles", "rank"]


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory):
    from fusionrank.pipeline import run_all

    tmp = tmp_path_factory.mktemp("rerank")
    data = tmp / "shop"
    generate(data, items=600, users=800, days=40, seed=5, end_date=END, images="none")
    settings = make_settings(tmp, data / "catalog.jsonl", data / "events.jsonl",
                             evaluate={"holdout_days": 7}, rank={"write_similar": False},
                             rerank={"enabled": True, "label_days": 7, "candidates": 100, "num_threads": 1,
                                     "min_labels": 50})
    results = run_all(settings, END, spark, stages=STAGES)
    recs = DeltaTable(settings.storage.table_path("recs_user_topk")).to_pandas()
    return {"settings": settings, "counts": results[-1].counts, "recs": recs, "spark": spark}


def test_rank_stage_trains_a_reranker_that_beats_retrieval_order(night):
    counts = night["counts"]
    assert counts["rerank"] == "trained", counts
    assert counts["rerank_users"] >= 100
    assert counts["rerank_valid_ndcg"] > counts["rerank_valid_ndcg_retrieval"] * 1.05, counts
    # the guard's backtest (a model one label window earlier, on tonight's set) agrees
    assert counts["rerank_backtest_ndcg"] > counts["rerank_backtest_ndcg_retrieval"], counts
    folder = Path(layout(night["settings"]).reranker(END))  # a local URI here
    meta = json.loads((folder / rk.META_FILE).read_text())
    assert meta["version"] == counts["rerank_version"] and len(meta["features"]) > 20
    # the blend weight served is the backtest's best of rerank.retrieval_blends
    blends = night["settings"].rerank.retrieval_blends
    assert meta["retrieval_blend"] == counts["rerank_retrieval_blend"] and meta["retrieval_blend"] in blends
    by_blend = dict(part.split(": ") for part in counts["rerank_backtest_by_blend"].split(", "))
    assert len(by_blend) == len(blends)
    assert float(by_blend[f"{meta['retrieval_blend']:g}"]) == counts["rerank_backtest_ndcg"]
    assert counts["rerank_backtest_ndcg"] == max(float(v) for v in by_blend.values())
    assert (folder / rk.MODEL_FILE).exists() and (folder / rk.STATS_FILE).exists()


def test_rank_pass_applies_it(night):
    recs, counts, k = night["recs"], night["counts"], night["settings"].rank.k
    ranked = recs[~recs["reason"].str.startswith("popular")]  # cold-start lists are not re-ranked
    assert ranked["model_version"].str.endswith("+" + counts["rerank_version"]).all()
    sizes = ranked.groupby("user_id").size()
    assert (sizes == k).mean() > 0.95
    for _, group in ranked.groupby("user_id"):
        assert list(group.sort_values("rank")["score"]) == sorted(group["score"], reverse=True)
        assert group["item_id"].is_unique
    reasons = ranked["reason"]
    assert reasons.str.startswith(("similar to", "bought together with", "trending in", "close to")).all()
    assert reasons.str.startswith("similar to").mean() > 0.3


def _train_a_later_night(night, settings, days: int):
    """train_nightly for END + `days` under `settings`, on the first night's index and
    data (its model version matches; only the settings differ): (folder, counts, index, ctx)."""
    from fusionrank.core.context import make_context
    from fusionrank.index.build import load_index
    from fusionrank.ranks.rerank import nightly

    later = END + dt.timedelta(days=days)
    Path(layout(settings).index(later)).parent.mkdir(parents=True, exist_ok=True)
    ctx = make_context(settings, END, night["spark"])
    index = load_index(ctx.index_path())
    ctx_later = make_context(settings, later, night["spark"])
    ctx_later.index_path = ctx.index_path
    ctx_later.training_events = ctx.training_events
    ctx_later.for_date = ctx.for_date
    folder, counts = nightly.train_nightly(ctx_later, index, ctx.spec.behaviour_dim)
    return folder, counts, index, ctx


def test_too_few_labels_falls_back_to_the_last_good_model(night):
    settings = night["settings"]
    strict = settings.model_copy(update={"rerank": settings.rerank.model_copy(update={"min_labels": 10 ** 9})})
    folder, counts, _, _ = _train_a_later_night(night, strict, days=1)  # only the label floor differs
    assert counts["rerank"] == "fallback" and "too few labels" in counts["rerank_reason"]
    assert folder == str(layout(settings).reranker(END))


def test_a_model_trained_on_too_few_users_never_serves(night):
    settings = night["settings"]
    strict = settings.model_copy(update={"rerank": settings.rerank.model_copy(update={"min_serve_users": 10 ** 6})})
    folder, counts, _, _ = _train_a_later_night(night, strict, days=3)
    assert folder is None and counts["rerank"] == "rejected", counts
    assert "fewer than rerank.min_serve_users 1000000" in counts["rerank_reason"], counts
    assert counts["rerank_users"] >= 100  # it was trained, and reported, but does not rank


def test_a_model_that_loses_to_retrieval_order_on_validation_is_rejected(night):
    from fusionrank.core.context import make_context
    from fusionrank.ranks.rerank import nightly

    settings = night["settings"]
    # a margin no model reaches: the night must rank in retrieval order and say why
    strict = settings.model_copy(update={"rerank": settings.rerank.model_copy(update={"min_valid_gain": 1e6})})
    later = END + dt.timedelta(days=2)
    folder, counts, index, ctx = _train_a_later_night(night, strict, days=2)
    assert folder is None and counts["rerank"] == "rejected", counts
    assert counts["rerank_reason"].startswith("backtest nDCG@10") and "does not beat retrieval order" in \
        counts["rerank_reason"]
    assert nightly.model_version("v1", folder) == "v1"
    meta = json.loads((Path(layout(settings).reranker(later)) / rk.META_FILE).read_text())
    assert meta["rejected"] is True  # kept for the report, never reused as the last good model
    ctx_after = make_context(settings, later + dt.timedelta(days=1), night["spark"])
    version, dim = index.manifest.get("model_version"), ctx.spec.behaviour_dim
    assert nightly._last_good(ctx_after, version, dim) == str(layout(settings).reranker(END))
    # a model on other features (an older release's) is never reused: the rank pass would stop on it
    good = Path(layout(settings).reranker(END)) / rk.META_FILE
    saved = good.read_text()
    try:
        good.write_text(json.dumps({**json.loads(saved), "features": json.loads(saved)["features"][:-1]}))
        assert nightly._last_good(ctx_after, version, dim) is None
    finally:
        good.write_text(saved)


def test_report_has_a_ranker_section(night, tmp_path):
    from fusionrank.interfaces.report import build_report

    out = build_report(night["settings"], END, spark=night["spark"], out_path=tmp_path / "report.html")
    section = out.read_text(encoding="utf-8").split('<section id="ranker">')[1].split("</section>")[0]
    assert "trained" in section and "retrieval order" in section and "Top features by gain" in section


def test_show_user_lists_each_recommendations_top_features(night):
    from fusionrank.core.context import make_context
    from fusionrank.interfaces.show import render_user, show_user

    ctx = make_context(night["settings"], END, night["spark"])
    recs = night["recs"]
    user = recs[~recs["reason"].str.startswith("popular")]["user_id"].iloc[0]
    shown = show_user(ctx, user)
    features = [r.get("features") for r in shown["recommendations"]]
    assert all(f and len(f) == 3 for f in features)
    names = set(json.loads((Path(layout(night["settings"]).reranker(END)) / rk.META_FILE).read_text())["features"])
    assert {f["feature"] for fs in features for f in fs} <= names
    assert "top features" in render_user(shown)


def test_a_night_with_interest_vectors_trains_and_records_them(night):
    settings = night["settings"]
    multi = settings.model_copy(update={
        "profiles": settings.profiles.model_copy(update={"interests": 3}),
        "rerank": settings.rerank.model_copy(update={"guard": "slice", "interest_candidates": 20})})
    _, counts, _, _ = _train_a_later_night(night, multi, days=5)
    assert counts["rerank"] in ("trained", "rejected"), counts
    meta = json.loads((Path(layout(settings).reranker(END + dt.timedelta(days=5))) / rk.META_FILE).read_text())
    assert meta["interests"] == 3 and meta["interest_candidates"] == 20
    assert meta["features"][-2:] == ["from_interest", "max_interest_score_rel"]


def test_a_rerun_of_the_rank_stage_trains_the_same_model_and_writes_the_same_lists(night):
    """Reruns stay identical: fixed seeds and deterministic LightGBM training on the
    driver, the same model applied on the executors, the same rows."""
    from fusionrank.pipeline import run_stage

    settings = night["settings"]
    again = run_stage("rank", settings, END, night["spark"])
    assert again.counts["rerank"] == "trained"
    assert again.counts["rerank_version"] == night["counts"]["rerank_version"], (again.counts, night["counts"])
    recs = DeltaTable(settings.storage.table_path("recs_user_topk")).to_pandas()
    columns = ["user_id", "rank", "item_id", "score", "reason", "reason_item_id", "model_version"]
    first = night["recs"][columns].sort_values(["user_id", "rank"]).reset_index(drop=True)
    second = recs[recs["run_date"] == night["recs"]["run_date"].iloc[0]][columns] \
        .sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert len(second) == len(first) > 0
    assert first.equals(second)
