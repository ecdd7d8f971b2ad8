"""policies.cold_start on small frames built in code."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

UTC = dt.timezone.utc


def _catalog(spark):
    return spark.createDataFrame(
        [("a1", "A > x"), ("a2", "A > y"), ("a3", "A"), ("b1", "B > z"), ("b2", "B"), ("n1", None)],
        "item_id string, category string",
    )


def test_cold_start_uses_the_users_category_then_overall(spark):
    from fusionrank.ranks.cold_start import assign_lists, popular_lists
    from fusionrank.ranks.users import PopularLists, popular_rows

    ts = dt.datetime(2024, 5, 1, tzinfo=UTC)
    events = spark.createDataFrame(
        [("x", "b1", ts), ("y", "b1", ts), ("z", "b2", ts), ("x", "a1", ts), ("y", "a1", ts), ("z", "a1", ts),
         ("w", "a2", ts), ("cold_b", "b2", ts), ("old", "a3", ts - dt.timedelta(days=90))],
        "user_id string, item_id string, event_ts timestamp",
    )
    users = spark.createDataFrame([("cold_b",), ("nobody",)], "user_id string")
    lists = popular_lists(events, _catalog(spark), 3, ts - dt.timedelta(days=30))
    assigned = assign_lists(users, events, _catalog(spark), lists).toArrow()
    assert dict(zip(*[assigned.column(c).to_pylist() for c in ("user_id", "popular_list")])) == {"cold_b": "B", "nobody": ""}
    # The workers expand each user's list into rows (users without a profile only).
    batch = pa.table({"user_id": assigned.column("user_id"), "profile_vec": pa.nulls(2, pa.list_(pa.float32())),
                      "popular_list": assigned.column("popular_list")}).to_batches()[0]
    out = popular_rows(batch, PopularLists(lists), "v1").to_pylist()
    assert [r["rank"] for r in out] == [1, 2, 3, 1, 2, 3] and {r["model_version"] for r in out} == {"v1"}
    assert all(r["reason_item_id"] is None for r in out)
    rows = {}
    for r in sorted(out, key=lambda r: (r["user_id"], r["rank"])):
        rows.setdefault(r["user_id"], []).append((r["item_id"], r["reason"]))
    # cold_b touched a B item: popular in B first (b1 twice, b2 twice: ties by id), then overall
    assert rows["cold_b"][:2] == [("b1", "popular in B"), ("b2", "popular in B")]
    assert rows["cold_b"][2] == ("a1", "popular")
    # nobody has no category: overall popularity in the window (a3 is too old to count)
    assert [i for i, _ in rows["nobody"]] == ["a1", "b1", "b2"]
    assert all(reason == "popular" for _, reason in rows["nobody"])
