"""policies.cold_start on small frames built in code."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def _catalog(spark):
    return spark.createDataFrame(
        [("a1", "A > x"), ("a2", "A > y"), ("a3", "A"), ("b1", "B > z"), ("b2", "B"), ("n1", None)],
        "item_id string, category string",
    )


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
