"""`fusionrank.inspect_tables` on one pipeline run over the MovieLens slice.

What the inspection functions report is checked against the tables read back
with `deltalake`, as a downstream consumer would read them.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.interfaces import show as inspect_tables
from fusionrank.core.catalog import OUTPUT_TABLES
from fusionrank.core.context import make_context
from tests.conftest import RUN_DATE, make_settings

pytestmark = pytest.mark.integration

DATE = dt.date.fromisoformat(RUN_DATE)
HOLDOUT_START = pd.Timestamp("1998-04-09", tz="UTC")  # run date + 1 day - 14 days


def read(root, name, date: str | None = RUN_DATE) -> pd.DataFrame:
    filters = [("run_date", "=", dt.date.fromisoformat(date))] if date else None
    return DeltaTable(str(root / name)).to_pandas(filters=filters)


@pytest.fixture(scope="module")
def run(night, spark):
    return {"root": night["root"], "ctx": make_context(night["settings"], DATE, spark=spark)}


@pytest.fixture(scope="module")
def tables(run):
    root = run["root"]
    catalog = read(root, "catalog_clean")
    events = read(root, "events_clean", date=None)
    events["event_ts"] = pd.to_datetime(events["event_ts"], utc=True)
    return {
        "catalog": catalog,
        "titles": dict(zip(catalog["item_id"], catalog["title"])),
        "events": events,
        "recs": read(root, "recs_user_topk"),
        "similar": read(root, "recs_item_similar"),
    }


@pytest.fixture(scope="module")
def user(run, tables):
    """A user with recommendations and held-out events (the most active such user)."""
    recs, events = tables["recs"], tables["events"]
    held_out = set(events.loc[events["event_ts"] >= HOLDOUT_START, "user_id"])
    candidates = events[events["user_id"].isin(set(recs["user_id"]) & held_out)]
    user_id = candidates["user_id"].value_counts().index[0]
    return user_id, inspect_tables.show_user(run["ctx"], user_id)


@pytest.fixture(scope="module")
def item(run, tables):
    """The item most users touched in training."""
    events = tables["events"]
    training = events[events["event_ts"] < HOLDOUT_START]
    item_id = training.groupby("item_id")["user_id"].nunique().idxmax()
    return item_id, inspect_tables.show_item(run["ctx"], item_id)


def test_show_user_history_newest_first_with_titles(user, tables):
    user_id, shown = user
    assert shown["user_id"] == user_id and shown["run_date"] == RUN_DATE
    json.dumps(shown)  # JSON-serialisable as it is
    mine = tables["events"][tables["events"]["user_id"] == user_id]
    assert shown["history_total"] == len(mine)
    history = shown["history"]
    assert len(history) == min(10, len(mine))
    stamps = [dt.datetime.fromisoformat(h["event_ts"]) for h in history]
    assert all(s.tzinfo is not None for s in stamps)
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] == mine["event_ts"].max().to_pydatetime()
    for h in history:
        assert h["title"] == tables["titles"][h["item_id"]]
        assert h["event_type"] == "rating" and h["value"] is not None
    # The user was chosen with held-out events, so the newest one shown is held out.
    assert stamps[0] >= HOLDOUT_START.to_pydatetime()
    profile = shown["profile"]
    assert profile is not None and profile["history_len"] > 0
    assert dt.datetime.fromisoformat(profile["last_event_ts"]) < HOLDOUT_START.to_pydatetime()


def test_show_user_recommendations_by_rank_and_unseen(user, tables):
    user_id, shown = user
    recs = shown["recommendations"]
    expected = tables["recs"][tables["recs"]["user_id"] == user_id].sort_values("rank")
    assert [r["rank"] for r in recs] == list(range(1, len(expected) + 1))
    assert len(recs) > 0
    assert [r["item_id"] for r in recs] == list(expected["item_id"])
    for r in recs:
        assert r["title"] == tables["titles"][r["item_id"]]
        assert r["reason"].startswith("similar to ")
        assert r["reason_item_id"] in tables["titles"]
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)
    # Nothing the user saw in training is recommended (held-out items may be).
    events = tables["events"]
    trained = set(events.loc[(events["user_id"] == user_id) & (events["event_ts"] < HOLDOUT_START), "item_id"])
    assert not trained & {r["item_id"] for r in recs}
    shown_trained = {
        h["item_id"] for h in shown["history"]
        if dt.datetime.fromisoformat(h["event_ts"]) < HOLDOUT_START.to_pydatetime()
    }
    assert not shown_trained & {r["item_id"] for r in recs}


def test_show_item_modalities_and_similar(item, tables):
    item_id, shown = item
    json.dumps(shown)
    row = tables["catalog"].set_index("item_id").loc[item_id]
    assert shown["title"] == row["title"] and shown["category"] == row["category"]
    assert shown["content_hash"] == row["content_hash"]
    modalities = shown["modalities"]
    assert modalities["text"] is True and modalities["behaviour"] is True
    assert modalities["dims"]["text"] == 384
    assert modalities["dims"]["behaviour"] > 0
    assert modalities["dims"]["fused"] == modalities["dims"]["text"] + modalities["dims"]["behaviour"]
    if not modalities["image"]:
        assert modalities["dims"]["image"] == 0
    similar = shown["similar"]
    assert len(similar) > 0 and [s["rank"] for s in similar] == list(range(1, len(similar) + 1))
    assert item_id not in {s["similar_item_id"] for s in similar}
    for s in similar:
        assert s["title"] == tables["titles"][s["similar_item_id"]]
    recs = tables["recs"]
    assert shown["recommended_to_users"] == recs.loc[recs["item_id"] == item_id, "user_id"].nunique()


def test_show_tables_from_the_log(run):
    root = run["root"]
    rows = inspect_tables.show_tables(run["ctx"].store)
    json.dumps(rows)
    assert [r["table"] for r in rows] == [name for name in OUTPUT_TABLES]
    for r in rows:
        assert r["exists"] is True, r
        table = DeltaTable(str(root / r["table"]))
        assert r["version"] >= 0 and r["version"] == table.version()
        assert r["rows"] == len(table.to_pandas()), r["table"]
        assert r["partition_columns"] == list(table.metadata().partition_columns)
        if r["rows"] == 0:  # e.g. an empty quarantine: no files, so no partitions
            assert r["partitions"] == 0 and r["latest_partition"] is None
            continue
        assert r["partitions"] >= 1
        if r["partition_columns"][0] == "run_date":
            assert r["latest_partition"] == RUN_DATE
    by_name = {r["table"]: r for r in rows}
    assert by_name["events_clean"]["partition_columns"] == ["event_date"]
    assert by_name["events_clean"]["latest_partition"] <= RUN_DATE


def test_show_tables_lists_missing_tables(spark, tmp_path):
    ctx = make_context(make_settings(tmp_path), DATE, spark=spark)
    rows = inspect_tables.show_tables(ctx.store)
    assert [r["table"] for r in rows] == [name for name in OUTPUT_TABLES]
    assert all(r["exists"] is False for r in rows)
    assert "missing" in inspect_tables.render_tables(rows)


def test_renderers(run, user, item):
    user_id, shown_user = user
    text = inspect_tables.render_user(shown_user)
    assert f"user {user_id}" in text
    assert shown_user["recommendations"][0]["title"][:20] in text
    assert all(len(line) <= 120 for line in text.splitlines())
    item_id, shown_item = item
    text = inspect_tables.render_item(shown_item)
    assert item_id in text and shown_item["title"][:20] in text and "text (384)" in text
    assert shown_item["similar"][0]["title"][:20] in text
    text = inspect_tables.render_tables(inspect_tables.show_tables(run["ctx"].store))
    for name in OUTPUT_TABLES:
        assert name in text


def test_unknown_user_and_item(run):
    with pytest.raises(LookupError, match=f"user no-such-user has no events and no recommendations for {RUN_DATE}"):
        inspect_tables.show_user(run["ctx"], "no-such-user")
    with pytest.raises(LookupError, match=f"item no-such-item .*{RUN_DATE}"):
        inspect_tables.show_item(run["ctx"], "no-such-item")
