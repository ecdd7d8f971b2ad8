"""The grown-up search side through the real stages: with query.hybrid, build_index
writes the BM25 index beside FAISS, query_topk is fused and carries the predicted
category, evaluate writes search metrics (split `search`), the published snapshot
pins query_topk and `fusionrank.search` reads it, also personalised."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from deltalake import DeltaTable

from fusionrank.raw.synth import generate
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 22)


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory):
    from fusionrank.pipeline import run_all

    tmp = tmp_path_factory.mktemp("hybrid")
    data = tmp / "shop"
    generate(data, items=300, users=250, days=30, seed=12, end_date=END, images="none", query_noise=0.4)
    settings = make_settings(tmp, data / "catalog.jsonl", data / "events.jsonl",
                             evaluate={"holdout_days": 5}, query={"lookback_days": 30, "hybrid": True,
                                                                  "intent_weight": 0.1, "neighbour_weight": 0.5,
                                                                  "unseen_neighbour_weight": 0.5},
                             publish={"floors": {}, "regression_metrics": []})
    results = run_all(settings, END, spark)
    return {"settings": settings, "counts": {r.stage: r.counts for r in results}, "spark": spark}


def test_lexical_index_beside_faiss_and_query_topk_carries_the_category(night):
    from fusionrank.core.catalog import layout
    from fusionrank.index.lexical import lexical_dir

    assert night["counts"]["build_index"]["lexical_items"] == 300
    assert (Path(lexical_dir(layout(night["settings"]).index(END))) / "item_ids.json").exists()
    topk = DeltaTable(night["settings"].storage.table_path("query_topk")).to_pandas()
    assert len(topk)
    # Queries with engagement get their own intent, the others their nearest such queries'.
    engaged = topk.groupby("query")["ctr"].max() > 0
    by_query = topk.groupby("query")["category"].first()
    assert by_query[engaged[engaged].index].notna().all()
    assert by_query.notna().mean() > 0.8


def test_evaluate_writes_search_metrics(night):
    metrics = DeltaTable(night["settings"].storage.table_path("metrics")).to_pandas()
    search = metrics[metrics["split"] == "search"].set_index("metric")
    assert {"search_ndcg", "search_recall", "search_mrr", "search_cases"} <= set(search.index)
    assert search.loc["search_cases", "value"] > 10
    for m in ("search_ndcg", "search_recall", "search_mrr"):
        assert 0.0 < search.loc[m, "value"] <= 1.0 and 0.0 <= search.loc[m, "baseline"] <= 1.0
    assert set(search["baseline_name"]) == {"dense_zero_shot"}


def test_search_reads_the_published_snapshot_and_personalises(night):
    import fusionrank
    from fusionrank.interfaces.search import published_snapshot

    settings = night["settings"]
    snapshot = published_snapshot(settings)
    assert snapshot is not None and snapshot.run_date == str(END) and "query_topk" in snapshot.table_versions
    topk = DeltaTable(settings.storage.table_path("query_topk")).to_pandas()
    known = topk.sort_values(["searches", "query"], ascending=[False, True])["query"].iloc[0]
    hits = fusionrank.search(known, k=5, settings=settings)
    assert [h.item_id for h in hits] == list(topk[topk["query"] == known].sort_values("rank")["item_id"].iloc[:5])
    unseen = fusionrank.search("crimson long dress", k=5, settings=settings)
    assert len(unseen) == 5 and all(h.title for h in unseen)
    profiles = DeltaTable(settings.storage.table_path("user_profiles")).to_pandas()
    user = sorted(profiles["user_id"])[0]
    personal = fusionrank.search("crimson long dress", k=5, settings=settings, user_id=user)
    assert len(personal) == 5 and all(a.score >= b.score - 1e-9 for a, b in zip(personal, personal[1:]))
    with pytest.raises(LookupError, match="no profile"):
        fusionrank.search("mug", k=3, settings=settings, user_id="nobody")


def test_an_unseen_query_gets_the_intent_and_clicks_of_the_nights_frequent_queries(night):
    import numpy as np

    import fusionrank
    from fusionrank.interfaces.search import published_snapshot

    settings = night["settings"]
    memory = DeltaTable(settings.storage.table_path("query_memory")).to_pandas()
    topk = DeltaTable(settings.storage.table_path("query_topk")).to_pandas()
    assert set(memory["query"]) == set(topk["query"]) == set(memory["query"].unique())
    assert night["counts"]["rank"]["query_memory_rows"] == len(memory)
    assert np.allclose([np.linalg.norm(v) for v in memory["query_vec"]], 1.0, atol=1e-4)
    assert "query_memory" in published_snapshot(settings).table_versions
    frequent = memory[memory["engaged_items"].map(len) > 0].sort_values(["searches", "query"], ascending=[False, True])
    reworded = "buy " + " ".join(reversed(frequent["query"].iloc[0].split()))
    assert reworded not in set(topk["query"])
    hits = fusionrank.search(reworded, k=10, settings=settings)
    without = settings.model_copy(update={"query": settings.query.model_copy(
        update={"intent_weight": 0.0, "unseen_neighbour_weight": 0.0})})
    plain = {h.item_id: h.score for h in fusionrank.search(reworded, k=50, settings=without)}
    # Intent and pooled click-through only add to an item's score: some hit gains.
    gains = [h.score - plain[h.item_id] for h in hits if h.item_id in plain]
    assert gains and min(gains) >= -1e-6 and max(gains) > 1e-3
