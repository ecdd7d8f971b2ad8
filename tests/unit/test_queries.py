"""query_topk building blocks: normalisation, click-through re-ranking, and the
attribution of clicks to the search before them (Spark)."""

from __future__ import annotations


import numpy as np
import pytest

from fusionrank.ranks.query_topk import normalize_query, rerank


def test_normalize_query():
    assert normalize_query("  Red   MAXI\tdress ") == "red maxi dress"


def test_click_through_moves_a_clicked_item_up():
    ids = ["a", "b", "c", "d"]
    sims = np.array([0.60, 0.58, 0.55, 0.40])
    plain = rerank(ids, sims, {}, searches=20, k=4, ctr_weight=0.5, ctr_prior=10.0)
    assert [r[0] for r in plain] == ["a", "b", "c", "d"]  # similarity order without clicks
    clicked = rerank(ids, sims, {"d": (9.0, 6)}, searches=20, k=4, ctr_weight=0.5, ctr_prior=10.0)
    assert [r[0] for r in clicked][0] == "d"
    d = clicked[0]
    assert d[3] == pytest.approx(9.0 / 30.0) and d[4] == 6
    assert d[1] == pytest.approx(0.5 * 0.40 + 0.5 * 0.3)
    # ctr_weight 0 ignores the clicks; k cuts the list.
    assert [r[0] for r in rerank(ids, sims, {"d": (9.0, 6)}, 20, 2, 0.0, 10.0)] == ["a", "b"]


def test_click_through_is_smoothed_towards_zero_for_rare_queries():
    one = rerank(["x"], np.array([0.5]), {"x": (1.0, 1)}, searches=1, k=1, ctr_weight=0.5, ctr_prior=10.0)
    many = rerank(["x"], np.array([0.5]), {"x": (100.0, 100)}, searches=100, k=1, ctr_weight=0.5, ctr_prior=10.0)
    assert one[0][3] < 0.1 < many[0][3]  # same raw rate (1 per search), far less trust in one search


