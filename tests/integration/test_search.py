"""The search side on a synthetic shop: the rank stage writes query_topk, whose top
items match the query's attributes and follow its click-through, and
`fusionrank.search` answers a query nobody typed before."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.raw.synth import COLOUR_NAMES, TAXONOMY, generate
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 22)
NOUNS = sorted({leaf.noun for leaf in TAXONOMY}, key=len, reverse=True)


@pytest.fixture(scope="module")
def shop(spark, tmp_path_factory):
    from fusionrank.pipeline import run_all

    tmp = tmp_path_factory.mktemp("search")
    data = tmp / "shop"
    generate(data, items=400, users=250, days=30, seed=11, end_date=END, images="none")
    settings = make_settings(tmp, data / "catalog.jsonl", data / "events.jsonl",
                             evaluate={"holdout_days": 5}, query={"lookback_days": 30})
    results = run_all(settings, END, spark, stages=["clean_catalog", "clean_events", "encode_items", "build_index",
                                                    "build_profiles", "rank"])
    topk = DeltaTable(settings.storage.table_path("query_topk")).to_pandas()
    catalog = pd.DataFrame([json.loads(line) for line in (data / "catalog.jsonl").read_text().splitlines()])
    return {"settings": settings, "rank": results[-1].counts, "topk": topk,
            "catalog": catalog.set_index("item_id"), "spark": spark}


def _attributes(title: str) -> tuple[str | None, str | None]:
    title = title.lower()
    colour = next((c for c in COLOUR_NAMES if c in title.split()), None)
    noun = next((n for n in NOUNS if title.endswith(n)), None)
    return colour, noun


def test_query_topk_is_written_for_the_frequent_queries(shop):
    topk, counts = shop["topk"], shop["rank"]
    assert counts["queries"] > 20 and counts["query_rows"] == len(topk)
    assert set(topk["run_date"].astype(str)) == {str(END)}
    for _, group in topk.groupby("query"):
        assert list(group.sort_values("rank")["rank"]) == list(range(1, len(group) + 1))
        assert len(group) == 10
        assert (np.diff(group.sort_values("rank")["score"].to_numpy()) <= 1e-6).all()
    assert topk["model_version"].nunique() == 1
    assert (topk["searches"] >= 1).all()


def test_top_items_match_the_query(shop):
    """For "<colour> <product>" queries, most of the top 10 are that product in that colour."""
    topk, catalog = shop["topk"], shop["catalog"]
    shares = []
    for query, group in topk.groupby("query"):
        words = query.split()
        noun = " ".join(words[1:])
        if words[0] not in COLOUR_NAMES or noun not in NOUNS:
            continue
        matches = [_attributes(catalog.loc[i, "title"]) == (words[0], noun) for i in group["item_id"]]
        # The catalog may hold fewer than 10 such items: count against what exists.
        available = sum(_attributes(t) == (words[0], noun) for t in catalog["title"])
        shares.append(sum(matches) / min(10, available))
    assert len(shares) >= 10
    assert np.mean(shares) >= 0.8


def test_click_through_moves_clicked_items_up(shop):
    """Re-ranking with the logs' click-through (ctr_weight 0.5) against similarity only
    (ctr_weight 0), on the same index and the same engagement."""
    from fusionrank.ranks.query_topk import frequent_queries, query_engagement, top_k_for_queries

    settings, spark = shop["settings"], shop["spark"]
    from fusionrank.core.context import make_context

    ctx = make_context(settings, END, spark)
    until = ctx.holdout_start
    since = until - dt.timedelta(days=settings.query.lookback_days)
    events = ctx.training_events()
    queries = frequent_queries(events, since, until, 30)
    engaged = query_engagement(events, queries, since, until, settings.query.event_weights, 200).toPandas()
    queries_pd = queries.toPandas()
    blended = top_k_for_queries(queries_pd, engaged, ctx.index_path(), settings.query)
    plain_settings = settings.model_copy(deep=True)
    plain_settings.query.ctr_weight = 0.0
    plain = top_k_for_queries(queries_pd, engaged, ctx.index_path(), plain_settings.query)
    moved_up = moved_down = 0
    for query, group in engaged.groupby("query"):
        best = group.sort_values(["engagement", "item_id"], ascending=[False, True]).iloc[0]["item_id"]
        rank_of = {}
        for name, table in (("plain", plain), ("blended", blended)):
            rows = table[(table["query"] == query) & (table["item_id"] == best)]
            rank_of[name] = int(rows["rank"].iloc[0]) if len(rows) else 11
        moved_up += rank_of["blended"] < rank_of["plain"]
        moved_down += rank_of["blended"] > rank_of["plain"]
    assert moved_up >= 3 and moved_down == 0
    # The stage wrote what top_k_for_queries computes.
    stored = shop["topk"].set_index(["query", "rank"])["item_id"]
    for row in blended.itertuples():
        if (row.query, row.rank) in stored.index:
            assert stored[(row.query, row.rank)] == row.item_id


def test_search_answers_an_unseen_query(shop):
    import fusionrank

    settings, topk = shop["settings"], shop["topk"]
    query = "Crimson RED evening maxi dress for a summer wedding"
    assert query.lower() not in set(topk["query"])
    hits = fusionrank.search(query, k=8, settings=settings)
    assert [h.rank for h in hits] == list(range(1, 9))
    assert all(h.title for h in hits)
    assert all(a.score >= b.score - 1e-6 for a, b in zip(hits, hits[1:]))
    nouns = Counter(_attributes(h.title)[1] for h in hits)
    assert nouns.most_common(1)[0][0] in ("maxi dress", "mini dress")
    # A query of the night comes back as its query_topk rows (click-through included).
    known = topk.sort_values(["searches", "query"], ascending=[False, True])["query"].iloc[0]
    rows = topk[topk["query"] == known].sort_values("rank")
    hits = fusionrank.search(known.upper(), k=5, settings=settings, run_date=END)
    assert [h.item_id for h in hits] == list(rows["item_id"].iloc[:5])
    with pytest.raises(ValueError, match="non-empty"):
        fusionrank.search("   ", settings=settings)


def test_report_lists_the_most_searched_queries(shop, tmp_path):
    from fusionrank.interfaces.report import build_report

    out = build_report(shop["settings"], END, shop["spark"], out_path=tmp_path / "report.html")
    section = out.read_text().split('<section id="search">')[1].split("</section>")[0]
    most = shop["topk"].groupby("query")["searches"].max().sort_values(ascending=False)
    assert most.index[0] in section and "Not available" not in section
    assert section.count("<tr>") - 1 == min(10, len(most))  # header row + one per query


def test_rank_caps_each_category_when_asked(shop):
    """Rerun rank with rank.max_per_category 2 (runs last in this module): no ranked list
    holds more than 2 items of one top-level category; cold-start lists are left as they are."""
    from fusionrank.pipeline import run_stage

    base = shop["settings"]
    settings = base.model_copy(update={"rank": base.rank.model_copy(update={"max_per_category": 2})})
    counts = run_stage("rank", settings, END, shop["spark"]).counts
    recs = DeltaTable(settings.storage.table_path("recs_user_topk")).to_pandas()
    recs = recs[recs["run_date"].astype(str) == str(END)]
    top_level = shop["catalog"]["category"].str.split(">").str[0].str.strip()
    capped = 0
    for _, group in recs.groupby("user_id"):
        group = group.sort_values("rank")
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        if group["reason"].str.startswith("popular").all():
            continue
        assert max(Counter(top_level[i] for i in group["item_id"]).values()) <= 2
        assert len(group) <= settings.rank.k
        capped += 1
    assert capped > 100
    assert counts["users_ranked"] == recs["user_id"].nunique() and counts["recs_rows"] == len(recs)
