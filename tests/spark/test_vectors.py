"""Unit tests for the vector maths: encoding.fuse / l2_normalize, ranking.top_unseen /
pick_reasons, profiles.pool_user (pure numpy/pandas) and profiles.event_weight /
weighted_history (Spark)."""

from __future__ import annotations

import datetime as dt

import pytest

from fusionrank.core.config import ProfilesConfig
from fusionrank.profiles.build import event_weight, weighted_history


UTC = dt.timezone.utc


# -- profiles.event_weight (Spark) ------------------------------------------------------------------
AS_OF = dt.datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def weights(spark):
    rows = [
        # tag, event_type, event_ts, value
        ("purchase_now", "purchase", AS_OF, None),
        ("purchase_half_life", "purchase", AS_OF - dt.timedelta(days=30), None),
        ("purchase_two_half_lives", "purchase", AS_OF - dt.timedelta(days=60), None),
        ("purchase_future", "purchase", AS_OF + dt.timedelta(days=3), None),
        ("view_now", "view", AS_OF, None),
        ("rating_5", "rating", AS_OF, 5.0),
        ("rating_0", "rating", AS_OF, 0.0),
        ("rating_2_5", "rating", AS_OF, 2.5),
        ("rating_none", "rating", AS_OF, None),
        ("search_now", "search", AS_OF, None),
        ("unknown_type", "wishlist", AS_OF, None),
    ]
    frame = spark.createDataFrame(rows, "tag string, event_type string, event_ts timestamp, value double")
    default = ProfilesConfig()  # purchase 3, view 0.25, rating 1, search 0; half-life 30 days
    custom = ProfilesConfig(
        event_weights={"purchase": 2.0, "rating": 1.0, "view": 0.0},
        half_life_days=15,
        rating_offset=1.0,
        rating_scale=4.0,
    )
    out = frame.select(
        "tag",
        event_weight(default, AS_OF).alias("w"),
        event_weight(custom, AS_OF).alias("w_custom"),
    ).collect()
    return {r.tag: (r.w, r.w_custom) for r in out}


def test_event_weight_half_life(weights):
    now, _ = weights["purchase_now"]
    assert now == 3.0
    assert weights["purchase_half_life"][0] == now / 2  # exactly half after one half-life
    assert weights["purchase_two_half_lives"][0] == pytest.approx(now / 4)
    assert weights["purchase_future"][0] == now  # no growth for events after as_of
    # half-life 15 days: 30 days is two half-lives
    assert weights["purchase_now"][1] == 2.0
    assert weights["purchase_half_life"][1] == pytest.approx(0.5)


def test_event_weight_type_weights(weights):
    assert weights["view_now"][0] == pytest.approx(0.25)
    assert weights["search_now"][0] == 0.0  # weight 0 in the config
    assert weights["unknown_type"][0] == 0.0  # not in the config
    assert weights["view_now"][1] == 0.0  # weight 0 in the custom config
    assert weights["search_now"][1] == 0.0  # absent from the custom config


def test_event_weight_rating_scaling(weights):
    # default: 1.0 * value / 5
    assert weights["rating_5"][0] == pytest.approx(1.0)
    assert weights["rating_0"][0] == 0.0
    assert weights["rating_2_5"][0] == pytest.approx(0.5)
    assert weights["rating_none"][0] == pytest.approx(1.0)  # no value: the type weight alone
    # custom: max(value - 1, 0) / 4
    assert weights["rating_5"][1] == pytest.approx(1.0)
    assert weights["rating_0"][1] == 0.0  # floored at zero, not negative
    assert weights["rating_2_5"][1] == pytest.approx(0.375)


def test_weighted_history_collapses_events(spark):
    day = dt.timedelta(days=1)
    rows = [
        ("u1", "purchase", "a", AS_OF - 30 * day, None),
        ("u1", "view", "a", AS_OF - 2 * day, None),
        ("u1", "view", "b", AS_OF, None),
        ("u1", "search", None, AS_OF, None),
        ("u2", "rating", "a", AS_OF, 2.5),
    ]
    events = spark.createDataFrame(
        rows, "user_id string, event_type string, item_id string, event_ts timestamp, value double"
    )
    got = {
        (r.user_id, r.item_id): (r.weight, r.last_ts)
        for r in weighted_history(events, ProfilesConfig(), AS_OF).collect()
    }
    assert set(got) == {("u1", "a"), ("u1", "b"), ("u2", "a")}
    # 3 * 0.5 + 0.25 * 2^(-2/30)
    assert got[("u1", "a")][0] == pytest.approx(1.5 + 0.25 * 2 ** (-2 / 30))
    assert got[("u1", "b")][0] == pytest.approx(0.25)
    assert got[("u2", "a")][0] == pytest.approx(0.5)
    assert got[("u1", "a")][1] == got[("u1", "b")][1] - 2 * day  # latest event of the pair


def test_weighted_history_decays_from_each_users_last_event(spark):
    day = dt.timedelta(days=1)
    rows = [("u1", "purchase", "a", AS_OF - 40 * day, None), ("u1", "purchase", "b", AS_OF - 10 * day, None)]
    events = spark.createDataFrame(rows, "user_id string, event_type string, item_id string, event_ts timestamp, value double")
    own = {r.item_id: r.weight for r in weighted_history(events, ProfilesConfig(half_life_days=30), AS_OF).collect()}
    assert own["b"] == pytest.approx(3.0)  # the user's latest event weighs in full
    assert own["a"] == pytest.approx(1.5)  # one half-life older than it
    run = {r.item_id: r.weight for r in weighted_history(
        events, ProfilesConfig(half_life_days=30, decay_from="run_date"), AS_OF).collect()}
    assert run["b"] == pytest.approx(3.0 * 2 ** (-10 / 30))
    flat = {r.item_id: r.weight for r in weighted_history(events, ProfilesConfig(half_life_days=None), AS_OF).collect()}
    assert flat == {"a": 3.0, "b": 3.0}


