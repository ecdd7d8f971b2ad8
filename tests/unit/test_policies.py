"""policies.diversify and policies.cold_start on small frames built in code."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def _catalog(spark):
    return spark.createDataFrame(
        [("a1", "A > x"), ("a2", "A > y"), ("a3", "A"), ("b1", "B > z"), ("b2", "B"), ("n1", None)],
        "item_id string, category string",
    )


def test_diversify_caps_each_category_and_renumbers(spark):
    from fusionrank.policies import diversify

    recs = spark.createDataFrame(
        [("u", 1, "a1", 0.9), ("u", 2, "a2", 0.8), ("u", 3, "a3", 0.7), ("u", 4, "b1", 0.6), ("u", 5, "n1", 0.5),
         ("u", 6, "b2", 0.4)],
        "user_id string, rank int, item_id string, score double",
    )
    got = [(r["rank"], r["item_id"]) for r in diversify(recs, _catalog(spark), 4, 2).orderBy("rank").collect()]
    assert got == [(1, "a1"), (2, "a2"), (3, "b1"), (4, "n1")]  # a3 dropped: third of A
    off = diversify(recs, _catalog(spark), 3, 0).orderBy("rank").collect()
    assert [r["item_id"] for r in off] == ["a1", "a2", "a3"]


def test_cold_start_uses_the_users_category_then_overall(spark):
    from fusionrank.policies import cold_start

    ts = dt.datetime(2024, 5, 1, tzinfo=UTC)
    events = spark.createDataFrame(
        [("x", "b1", ts), ("y", "b1", ts), ("z", "b2", ts), ("x", "a1", ts), ("y", "a1", ts), ("z", "a1", ts),
         ("w", "a2", ts), ("cold_b", "b2", ts), ("old", "a3", ts - dt.timedelta(days=90))],
        "user_id string, item_id string, event_ts timestamp",
    )
    users = spark.createDataFrame([("cold_b",), ("nobody",)], "user_id string")
    out = cold_start(users, events, _catalog(spark), 3, ts - dt.timedelta(days=30))
    rows = {}
    for r in out.orderBy("user_id", "rank").collect():
        rows.setdefault(r["user_id"], []).append((r["item_id"], r["reason"]))
    # cold_b touched a B item: popular in B first (b1 twice, b2 twice: ties by id), then overall
    assert rows["cold_b"][:2] == [("b1", "popular in B"), ("b2", "popular in B")]
    assert rows["cold_b"][2] == ("a1", "popular")
    # nobody has no category: overall popularity in the window (a3 is too old to count)
    assert [i for i, _ in rows["nobody"]] == ["a1", "b1", "b2"]
    assert all(reason == "popular" for _, reason in rows["nobody"])
