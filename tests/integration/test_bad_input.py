"""Dirty raw input: every rejected row lands in quarantine with a reason, the counts
add up, and whole-input problems fail with an error that names the file."""

from __future__ import annotations

import datetime as dt

import pytest
from deltalake import DeltaTable

from fusionrank.data.inputs import InputError
from fusionrank.pipeline import StageError, make_context, run_stage
from tests.conftest import make_settings, write_jsonl

pytestmark = pytest.mark.integration

RUN_DATE = dt.date(2026, 11, 22)

CATALOG = [
    {"item_id": "A1", "title": "Red  Maxi\tDress", "category": "Women>Dresses >  Maxi", "price": "59.90",
     "updated_at": "2026-11-01T10:00:00Z"},
    {"item_id": "A1", "title": "Red Maxi Dress (old)", "price": "49.90", "updated_at": "2026-10-01T10:00:00Z"},
    {"item_id": "B2", "title": "Blue Jeans", "price": 80, "brand": "Denimco"},
    {"item_id": "C3", "title": "Wool Scarf", "price": None, "image_uri": "/img/c3.jpg"},
    {"item_id": "", "title": "No id"},
    {"item_id": "D4", "title": "   "},
    {"item_id": "E5", "title": "Cheap?", "price": "abc"},
    {"item_id": "F6", "title": "Refund", "price": -3},
    {"item_id": "G7", "title": "Yacht", "price": 5e9},
    {"item_id": "H8", "title": "Lamp", "updated_at": "last tuesday"},
    '{"item_id": "I9", "title": "broken json',
]

EVENTS = [
    {"user_id": "u1", "event_type": "view", "event_ts": 1763800000, "item_id": "A1"},
    {"user_id": "u1", "event_type": "purchase", "event_ts": "2025-11-22T08:00:00Z", "item_id": "B2", "value": 1},
    {"user_id": "u1", "event_type": "purchase", "event_ts": "2025-11-22T08:00:00Z", "item_id": "B2", "value": 1},
    {"user_id": "u2", "event_type": "rating", "event_ts": 1763800000000, "item_id": "C3", "value": "4.5"},
    {"user_id": "u2", "event_type": "search", "event_ts": 1763800001, "query": "red dress"},
    {"user_id": "u2", "event_type": "search", "event_ts": 1763800002},
    {"user_id": "u3", "event_type": "teleport", "event_ts": 1763800000, "item_id": "A1"},
    {"user_id": "u3", "event_type": "view", "event_ts": "yesterday-ish", "item_id": "A1"},
    {"user_id": "u3", "event_type": "view", "event_ts": 1763800000, "item_id": "ZZZ"},
    {"user_id": "u3", "event_type": "view", "event_ts": 1763800000, "item_id": "E5"},
    {"user_id": "u3", "event_type": "view", "event_ts": "2030-01-01T00:00:00Z", "item_id": "A1"},
    {"user_id": "", "event_type": "view", "event_ts": 1763800000, "item_id": "A1"},
    {"user_id": "u4", "event_type": "click", "event_ts": 1763800000, "value": "lots", "item_id": "A1"},
    {"user_id": "u5", "event_type": "view", "event_ts": 1763800000},
    "not json at all",
] + [{"user_id": "bot", "event_type": "view", "event_ts": 1763700000 + i, "item_id": "A1"} for i in range(12)]


@pytest.fixture(scope="module")
def cleaned(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dirty")
    settings = make_settings(
        tmp, write_jsonl(tmp / "raw" / "catalog.jsonl", CATALOG), write_jsonl(tmp / "raw" / "events.jsonl", EVENTS),
        cleaning={"bot_max_events_per_day": 10},
    )
    ctx = make_context(settings, RUN_DATE, spark)
    catalog = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    events = run_stage("clean_events", settings, RUN_DATE, ctx=ctx).counts
    quarantine = DeltaTable(str(tmp / "warehouse" / "quarantine")).to_pandas()
    return {"ctx": ctx, "settings": settings, "tmp": tmp, "catalog": catalog, "events": events, "quarantine": quarantine}


def test_catalog_counts_add_up(cleaned):
    c = cleaned["catalog"]
    assert c["raw_rows"] == len(CATALOG)
    assert c["clean_rows"] == 3  # A1 (newest), B2, C3
    assert c["raw_rows"] == c["clean_rows"] + c["quarantined_rows"]
    q = cleaned["quarantine"]
    assert (q["stage"] == "clean_catalog").sum() == c["quarantined_rows"]


def test_catalog_reasons(cleaned):
    q = cleaned["quarantine"]
    reasons = list(q[q["stage"] == "clean_catalog"]["reason"])
    for expected in ["missing item_id", "missing title", "price is not a number: 'abc'", "negative price",
                     "price above cleaning.max_price", "unparseable updated_at: 'last tuesday'", "malformed record",
                     "duplicate item_id: superseded by a newer version"]:
        assert any(r.startswith(expected) for r in reasons), (expected, reasons)
    superseded = q[q["reason"].str.startswith("duplicate item_id")]["record"].iloc[0]
    assert "(old)" in superseded  # the older version is the one quarantined, raw record kept
    assert q[q["stage"] == "clean_catalog"]["source_file"].str.endswith("catalog.jsonl").all()


def test_clean_catalog_is_normalised(cleaned):
    rows = cleaned["ctx"].store.read("catalog_clean").toPandas().set_index("item_id")
    assert rows.loc["A1", "title"] == "Red Maxi Dress"
    assert rows.loc["A1", "category"] == "Women > Dresses > Maxi"
    assert rows.loc["A1", "price"] == pytest.approx(59.90)
    assert rows["content_hash"].str.len().eq(64).all()


def test_event_counts_add_up_and_reasons(cleaned):
    e = cleaned["events"]
    assert e["raw_rows"] == len(EVENTS)
    assert e["raw_rows"] == e["clean_rows"] + e["quarantined_rows"]
    # Clean: u1 view, u1 purchase (once), u2 rating (ms epoch), u2 search with query.
    assert e["clean_rows"] == 4
    q = cleaned["quarantine"]
    reasons = list(q[q["stage"] == "clean_events"]["reason"])
    assert len(reasons) == e["quarantined_rows"]
    for expected in ["duplicate event", "search event without query", "unknown event_type: 'teleport'",
                     "unparseable event_ts: 'yesterday-ish'", "unknown item_id", "event_ts after the run date",
                     "missing user_id", "value is not a number: 'lots'", "missing item_id", "malformed record"]:
        assert any(r.startswith(expected) for r in reasons), (expected, reasons)
    assert sum(r.startswith("bot filter: 12 events in one day") for r in reasons) == 12
    # E5 was quarantined from the catalog, so its events are unknown items too.
    assert sum(r.startswith("unknown item_id") for r in reasons) == 2


def test_clean_events_parse_all_timestamp_forms(cleaned):
    events = cleaned["ctx"].store.read("events_clean").toPandas()
    rating = events[events["event_type"] == "rating"].iloc[0]
    assert str(rating["event_ts"])[:19] == "2025-11-22 08:26:40"  # 1763800000000 ms
    assert rating["value"] == pytest.approx(4.5)
    search = events[events["event_type"] == "search"].iloc[0]
    assert search["query"] == "red dress" and search["item_id"] is None


def test_rerun_replaces_quarantine_for_the_stage(cleaned):
    ctx = cleaned["ctx"]
    run_stage("clean_catalog", cleaned["settings"], RUN_DATE, ctx=ctx)
    q = DeltaTable(str(cleaned["tmp"] / "warehouse" / "quarantine")).to_pandas()
    assert (q["stage"] == "clean_catalog").sum() == cleaned["catalog"]["quarantined_rows"]
    assert (q["stage"] == "clean_events").sum() == cleaned["events"]["quarantined_rows"]


def test_missing_input_names_the_path(spark, tmp_path):
    settings = make_settings(tmp_path, tmp_path / "nope" / "catalog.jsonl")
    with pytest.raises(InputError, match=r"catalog input .*nope/catalog.jsonl does not exist"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_missing_required_column_names_file_and_column(spark, tmp_path):
    path = write_jsonl(tmp_path / "catalog.jsonl", [{"sku": "1", "title": "x"}])
    settings = make_settings(tmp_path, path)
    with pytest.raises(InputError, match=r"catalog.jsonl has no column\(s\) \['item_id'\]"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_wrong_format_names_the_file(spark, tmp_path):
    path = write_jsonl(tmp_path / "catalog.parquet", [{"item_id": "1", "title": "x"}])
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "parquet"}})
    with pytest.raises(InputError, match=r"catalog input .*catalog.parquet could not be read as parquet"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_events_before_catalog_is_a_clear_error(spark, tmp_path):
    events = write_jsonl(tmp_path / "raw" / "events.jsonl", EVENTS[:2])
    settings = make_settings(tmp_path, tmp_path / "raw" / "catalog.jsonl", events)
    with pytest.raises(StageError, match="catalog_clean does not exist"):
        run_stage("clean_events", settings, RUN_DATE, spark=spark)
