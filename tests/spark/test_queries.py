"""query_topk building blocks: normalisation, click-through re-ranking, and the
attribution of clicks to the search before them (Spark)."""

from __future__ import annotations

import datetime as dt


from fusionrank.ranks.query_topk import frequent_queries, query_engagement


T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)


def _events(spark, rows):
    return spark.createDataFrame(
        [(u, t, i, T0 + dt.timedelta(seconds=s), q, sess) for u, t, i, s, q, sess in rows],
        "user_id string, event_type string, item_id string, event_ts timestamp, query string, session_id string",
    )


def test_events_are_attributed_to_the_latest_search_of_their_session(spark):
    events = _events(spark, [
        ("u1", "search", None, 0, "Red  Dress", "s1"),
        ("u1", "view", "A", 5, None, "s1"),
        ("u1", "click", "A", 10, None, "s1"),
        ("u1", "add_to_cart", "A", 20, None, "s1"),
        ("u1", "search", None, 30, "blue mug", "s1"),
        ("u1", "click", "B", 40, None, "s1"),
        ("u1", "click", "C", 50, None, "s2"),          # another session: no search before it
        ("u2", "click", "A", -5, None, "s3"),           # before the search in its session
        ("u2", "search", None, 0, "red dress", "s3"),
        ("u2", "purchase", "A", 0, None, "s3"),         # same second as the search: after it
        ("u3", "search", None, 0, "red dress", "s4"),
    ])
    since, until = T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1)
    top = frequent_queries(events, since, until, n=10)
    assert [(r["query"], r["searches"], r["users"]) for r in top.collect()] == [
        ("red dress", 3, 3), ("blue mug", 1, 1)]
    engaged = query_engagement(events, top, since, until, {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}, 10)
    got = {(r["query"], r["item_id"]): (r["engagement"], r["clicks"]) for r in engaged.collect()}
    assert got == {("red dress", "A"): (1.0 + 2.0 + 3.0, 1), ("blue mug", "B"): (1.0, 1)}
    # Only the queries asked for, and at most max_items per query.
    only_mug = frequent_queries(events, since, until, n=10).where("query = 'blue mug'")
    assert {r["query"] for r in query_engagement(events, only_mug, since, until, {"click": 1.0}, 10).collect()} \
        == {"blue mug"}
    # The window bounds both the searches and the events.
    assert frequent_queries(events, T0 + dt.timedelta(seconds=1), until, n=10).count() == 1


