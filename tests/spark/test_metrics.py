"""Unit tests for fusionrank.evaluation: numpy reference metrics by hand, the Spark
versions against the reference, the popularity baseline and the relevant sets."""

from __future__ import annotations

import math

import pytest

from fusionrank.metrics import measures as ev
from fusionrank.metrics.measures import (
    average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)


def inv(i: int) -> float:
    """Discount of rank i: 1 / log2(i + 1)."""
    return 1.0 / math.log2(i + 1)


# -- Spark vs reference -----------------------------------------------------------------------
RECS = {
    # user: ranked list
    "u1": ["a", "b", "c", "d", "e"],
    "u2": ["x", "y", "z"],  # no hits
    "u3": ["c", "a", "f", "g"],
    "u5": ["a", "b"],  # not in `relevant`: must be ignored
    # u4 has relevant items but no recommendations at all -> zeros
}


RELEVANT = {
    "u1": {"b", "d", "f"},
    "u2": {"a"},
    "u3": {"c", "a", "f", "g", "h", "i"},
    "u4": {"a", "b"},
}


def _reference_means(k: int) -> dict[str, float]:
    users = sorted(RELEVANT)
    out = {}
    for name, fn in (
        ("precision", precision_at_k),
        ("recall", recall_at_k),
        ("ndcg", ndcg_at_k),
        ("map", average_precision_at_k),
    ):
        out[name] = sum(fn(RECS.get(u, []), RELEVANT[u], k) for u in users) / len(users)
    return out


# -- popularity baseline ------------------------------------------------------------------------
EVENTS_SCHEMA = "user_id string, item_id string"


@pytest.fixture(scope="module")
def recs_and_relevant(spark):
    recs = spark.createDataFrame(
        [(u, rank, item) for u, items in RECS.items() for rank, item in enumerate(items, start=1)],
        "user_id string, rank int, item_id string",
    )
    # a repeated (user, item) must not count twice
    rel_rows = [(u, item) for u, items in RELEVANT.items() for item in sorted(items)] + [("u1", "b")]
    relevant = spark.createDataFrame(rel_rows, "user_id string, item_id string")
    return recs, relevant


@pytest.fixture(scope="module")
def spark_metrics(recs_and_relevant):
    recs, relevant = recs_and_relevant
    return {k: ev.ranking_metrics(recs, relevant, k) for k in (1, 3, 10)}


@pytest.mark.parametrize("k", [1, 3, 10])
def test_spark_ranking_metrics_match_reference(spark_metrics, k):
    got = spark_metrics[k]
    expected = _reference_means(k)
    assert got["users"] == 4  # u1..u4; u5 has recs but no relevant items
    for name in ev.METRIC_NAMES:
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name


def test_spark_ranking_metrics_hand_value_k3(spark_metrics):
    # k = 3.  u1 [a,b,c] vs {b,d,f}: 1 hit at rank 2; u2: 0; u4 (no recs): 0;
    # u3 [c,a,f] vs 6 relevant: hits at 1,2,3.
    # precision = (1/3 + 0 + 3/3 + 0) / 4 = 1/3
    # recall    = (1/3 + 0 + 3/6 + 0) / 4 = 5/24
    # map       = ((1/2)/3 + 0 + (1+1+1)/3 + 0) / 4 = (1/6 + 1) / 4 = 7/24
    got = spark_metrics[3]
    assert got["precision"] == pytest.approx(1 / 3)
    assert got["recall"] == pytest.approx(5 / 24)
    assert got["map"] == pytest.approx(7 / 24)
    # ndcg: u1 = inv(2) / (inv(1)+inv(2)+inv(3)); u3 = 1
    u1 = inv(2) / (inv(1) + inv(2) + inv(3))
    assert got["ndcg"] == pytest.approx((u1 + 1.0) / 4)


def test_spark_ranking_metrics_user_without_recs_counts_as_zero(spark):
    recs = spark.createDataFrame([("u1", 1, "a")], "user_id string, rank int, item_id string")
    relevant = spark.createDataFrame([("u1", "a"), ("u2", "a")], "user_id string, item_id string")
    got = ev.ranking_metrics(recs, relevant, 1)
    assert got["users"] == 2
    for name in ev.METRIC_NAMES:
        assert got[name] == pytest.approx(0.5), name


def test_spark_ranking_metrics_no_recs_at_all(spark):
    recs = spark.createDataFrame([], "user_id string, rank int, item_id string")
    relevant = spark.createDataFrame([("u1", "a")], "user_id string, item_id string")
    got = ev.ranking_metrics(recs, relevant, 5)
    assert got["users"] == 1
    assert all(got[name] == 0.0 for name in ev.METRIC_NAMES)


@pytest.fixture(scope="module")
def train(spark):
    rows = [
        # item popularity (distinct users): p=4, q=3, r=2, s=2, t=1, w=1
        ("u1", "p"), ("u1", "p"), ("u1", "q"),  # a repeat must not count twice
        ("u2", "p"), ("u2", "q"), ("u2", "r"),
        ("u3", "p"), ("u3", "q"), ("u3", "s"),
        ("u4", "p"), ("u4", "s"), ("u4", "r"), ("u4", "t"),
        ("u5", "w"),
        ("u5", None),  # e.g. a search event: ignored
    ]
    return spark.createDataFrame(rows, EVENTS_SCHEMA)


def test_popularity_recs_order_and_unseen(spark, train):
    users = spark.createDataFrame([("u1",), ("u4",), ("u5",), ("new",)], "user_id string")
    recs = ev.popularity_recs(train, users, k=3)
    got = {}
    for row in recs.orderBy("user_id", "rank").collect():
        got.setdefault(row.user_id, []).append((row.rank, row.item_id))
    # global order: p(4), q(3), r(2), s(2) [tie -> item id], t(1), w(1)
    assert got["u1"] == [(1, "r"), (2, "s"), (3, "t")]  # p, q seen
    assert got["u4"] == [(1, "q"), (2, "w")]  # only two unseen items exist
    assert got["u5"] == [(1, "p"), (2, "q"), (3, "r")]
    assert got["new"] == [(1, "p"), (2, "q"), (3, "r")]  # no history: plain popularity
    assert set(got) == {"u1", "u4", "u5", "new"}


def test_popularity_recs_never_recommends_seen_items(spark, train):
    users = train.select("user_id").distinct()
    recs = ev.popularity_recs(train, users, k=10)
    seen = {(r.user_id, r.item_id) for r in train.where("item_id is not null").collect()}
    rows = recs.collect()
    assert rows, "expected some recommendations"
    assert not [(r.user_id, r.item_id) for r in rows if (r.user_id, r.item_id) in seen]
    # ranks are 1..n per user with no gaps, items unique per user
    by_user: dict[str, list] = {}
    for r in rows:
        by_user.setdefault(r.user_id, []).append(r)
    all_items = {"p", "q", "r", "s", "t", "w"}
    for user, user_rows in by_user.items():
        assert sorted(r.rank for r in user_rows) == list(range(1, len(user_rows) + 1))
        items = {r.item_id for r in user_rows}
        assert len(items) == len(user_rows)
        seen_items = {i for u, i in seen if u == user}
        assert items == all_items - seen_items  # k=10 covers every unseen item


# -- relevant items -----------------------------------------------------------------------------------
def test_relevant_items(spark, train):
    holdout = spark.createDataFrame(
        [
            ("u1", "r"),  # new for u1 -> relevant
            ("u1", "r"),  # duplicate -> once
            ("u1", "p"),  # seen in training -> dropped
            ("u2", "s"),  # relevant
            ("u9", "p"),  # u9 has no training history -> dropped
            ("u5", None),  # no item -> dropped
            ("u5", "t"),  # relevant (u5's only training item row is w)
        ],
        EVENTS_SCHEMA,
    )
    got = sorted((r.user_id, r.item_id) for r in ev.relevant_items(train, holdout).collect())
    assert got == [("u1", "r"), ("u2", "s"), ("u5", "t")]


def test_relevant_items_user_with_only_itemless_training_events_is_dropped(spark):
    train = spark.createDataFrame([("u1", None)], EVENTS_SCHEMA)
    holdout = spark.createDataFrame([("u1", "a")], EVENTS_SCHEMA)
    assert ev.relevant_items(train, holdout).count() == 0


def test_coverage(spark):
    recs = spark.createDataFrame(
        [("u1", 1, "a"), ("u1", 2, "b"), ("u2", 1, "a"), ("u2", 2, "c"), ("u3", 1, "d")],
        "user_id string, rank int, item_id string",
    )
    users = spark.createDataFrame([("u1",), ("u2",)], "user_id string")
    # top-1 of u1, u2: {a} -> 1/4;  top-2: {a, b, c} -> 3/4 (u3 not evaluated)
    assert ev.coverage(recs, users, 1, 4) == pytest.approx(0.25)
    assert ev.coverage(recs, users, 2, 4) == pytest.approx(0.75)
    assert ev.coverage(recs, users, 2, 0) == 0.0


