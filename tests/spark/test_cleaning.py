"""Unit tests for fusionrank.data.cleaning and fusionrank.data.inputs.read_raw.

Raw frames are built in code with every column a string, as `inputs.read_raw`
returns them. Each row carries a unique tag in `_source_file`, which cleaning
passes through, so a test can find the row it is about. Each classifier runs once
per module and the results are collected, to keep the Spark work small.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from pyspark.sql import functions as F

from fusionrank.core.config import CleaningConfig, InputSource
from fusionrank.clean import rules as cleaning
from fusionrank.raw.readers import CORRUPT, SOURCE_FILE, InputError, read_raw
from fusionrank.raw.contract import CATALOG_FIELDS, CATALOG_REQUIRED, EVENT_FIELDS, EVENT_REQUIRED
from tests.conftest import write_jsonl

UTC = dt.timezone.utc
RAW_CATALOG_SCHEMA = ", ".join(f"`{c}` string" for c in CATALOG_FIELDS + [CORRUPT, SOURCE_FILE])
RAW_EVENTS_SCHEMA = ", ".join(f"`{c}` string" for c in EVENT_FIELDS + [CORRUPT, SOURCE_FILE])


def catalog_row(tag: str, corrupt: str | None = None, **fields) -> tuple:
    values = {
        "item_id": tag.upper(),
        "title": f"Title {tag}",
        "description": None,
        "category": None,
        "brand": None,
        "price": "10",
        "image_uri": None,
        "updated_at": "2024-01-01T00:00:00Z",
    }
    values.update(fields)
    return tuple(values[c] for c in CATALOG_FIELDS) + (corrupt, tag)


def event_row(tag: str, corrupt: str | None = None, **fields) -> tuple:
    values = {
        "user_id": "u",
        "event_type": "view",
        "event_ts": "2024-01-01T12:00:00Z",
        "item_id": "i1",
        "value": None,
        "query": None,
        "session_id": None,
    }
    values.update(fields)
    return tuple(values[c] for c in EVENT_FIELDS) + (corrupt, tag)


def by_tag(rows) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(row[SOURCE_FILE], []).append(row)
    return out


# ======================================================================================
# catalog
# ======================================================================================
CATALOG_ROWS = [
    catalog_row(
        "ok",
        item_id="  A1 ",
        title=" Red\tDress\u0001  with   pockets\u200b ",
        description="Line one\n\n  line\u0007two",
        category="Women>Dresses >  Maxi",
        brand="  Acme ",
        price=" 19.99 ",
        image_uri="s3://bucket/a1.jpg",
    ),
    catalog_row("no_price", price=None),
    catalog_row("blank_price", price="   "),
    catalog_row("malformed", corrupt='{"item_id": "M1", "title": ', item_id=None, title=None, price=None, updated_at=None),
    catalog_row("no_item_id", item_id="   "),
    catalog_row("null_item_id", item_id=None),
    catalog_row("no_title", title=None),
    catalog_row("blank_title", title="    "),
    catalog_row("ws_title", title="\t\n"),
    catalog_row("price_abc", price="abc"),
    catalog_row("price_nan", price="NaN"),
    catalog_row("price_inf", price="Infinity"),
    catalog_row("price_neg", price="-0.01"),
    catalog_row("price_high", price="1000000.5"),
    catalog_row("price_max", price="1000000"),
    catalog_row("bad_updated", updated_at="yesterday"),
    catalog_row("no_updated", updated_at=None),
    # two versions of DUP: the epoch one (2024-02-01) is newer than the ISO one
    catalog_row("dup_old", item_id="DUP", title="Old title", updated_at="2024-01-15T00:00:00Z"),
    catalog_row("dup_new", item_id="DUP", title="New title", updated_at="1706745600"),
    # a newer but invalid version must not supersede the valid one
    catalog_row("dup2_valid", item_id="DUP2", updated_at="2024-01-01T00:00:00Z"),
    catalog_row("dup2_invalid", item_id="DUP2", price="abc", updated_at="2024-03-01T00:00:00Z"),
    # content hashes: H1 and H2 hold the same content (H2 before normalisation),
    # H3 differs from H1 only in its title
    catalog_row("h1", item_id="H1", title="Blue Shirt", brand="Acme", category="Men > Shirts", price="5"),
    catalog_row("h2", item_id="H2", title="  Blue   Shirt ", brand="Acme\u0001", category="Men>Shirts", price="5.0"),
    catalog_row("h3", item_id="H3", title="Blue Shirts", brand="Acme", category="Men > Shirts", price="5"),
]


@pytest.fixture(scope="module")
def catalog_result(spark):
    raw = spark.createDataFrame(CATALOG_ROWS, RAW_CATALOG_SCHEMA)
    classified = cleaning.classify_catalog(raw, CleaningConfig()).cache()
    rows = classified.withColumn("_updated_epoch", F.col("updated_at").cast("long")).collect()
    clean, rejected = cleaning.split_clean(classified, cleaning.CATALOG_OUTPUT)
    clean_rows = clean.collect()
    rejected_rows = rejected.collect()
    counts = (len(rows), len(clean_rows), len(rejected_rows))
    classified.unpersist()
    return {"rows": by_tag(rows), "counts": counts, "clean": clean_rows, "rejected": rejected_rows}


def reason_of(result, tag: str) -> str | None:
    rows = result["rows"][tag]
    assert len(rows) == 1, f"{tag}: expected one row, got {len(rows)}"
    return rows[0][cleaning.REASON]


def row_of(result, tag: str):
    (row,) = result["rows"][tag]
    return row


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("malformed", "malformed record"),
        ("no_item_id", "missing item_id"),
        ("null_item_id", "missing item_id"),
        ("no_title", "missing title"),
        ("blank_title", "missing title"),
        ("price_abc", "price is not a number: 'abc'"),
        ("price_nan", "price is not finite"),
        ("price_inf", "price is not finite"),
        ("price_neg", "negative price"),
        ("bad_updated", "unparseable updated_at: 'yesterday'"),
        ("dup2_invalid", "price is not a number: 'abc'"),
    ],
)
def test_catalog_rejection_reasons(catalog_result, tag, expected):
    assert reason_of(catalog_result, tag) == expected


def test_catalog_price_above_max(catalog_result):
    reason = reason_of(catalog_result, "price_high")
    assert reason is not None and reason.startswith("price above cleaning.max_price")
    assert reason_of(catalog_result, "price_max") is None  # the limit itself is allowed


@pytest.mark.parametrize("tag", ["ok", "no_price", "blank_price", "no_updated", "dup_new", "dup2_valid", "h1", "h2", "h3"])
def test_catalog_clean_rows(catalog_result, tag):
    assert reason_of(catalog_result, tag) is None


def test_catalog_missing_price_and_updated_at_are_null(catalog_result):
    assert row_of(catalog_result, "no_price").price is None
    assert row_of(catalog_result, "blank_price").price is None
    assert row_of(catalog_result, "no_updated").updated_at is None


def test_catalog_text_normalisation(catalog_result):
    row = row_of(catalog_result, "ok")
    assert row.item_id == "A1"
    assert row.title == "Red Dress with pockets"
    assert row.description == "Line one line two"
    assert row.category == "Women > Dresses > Maxi"
    assert row.brand == "Acme"
    assert row.price == pytest.approx(19.99)
    assert row.image_uri == "s3://bucket/a1.jpg"
    assert row._updated_epoch == 1704067200  # 2024-01-01T00:00:00Z


def test_catalog_duplicate_keeps_latest_version(catalog_result):
    assert reason_of(catalog_result, "dup_old").startswith("duplicate item_id")
    new = row_of(catalog_result, "dup_new")
    assert new.title == "New title"
    assert new._updated_epoch == 1706745600
    clean_dup = [r for r in catalog_result["clean"] if r.item_id == "DUP"]
    assert [r.title for r in clean_dup] == ["New title"]
    # the valid DUP2 survives although a newer (invalid) version exists
    assert [r.item_id for r in catalog_result["clean"]].count("DUP2") == 1


def test_catalog_item_ids_unique_in_clean_output(catalog_result):
    ids = [r.item_id for r in catalog_result["clean"]]
    assert len(ids) == len(set(ids))


def test_catalog_content_hash(catalog_result):
    h1 = row_of(catalog_result, "h1").content_hash
    h2 = row_of(catalog_result, "h2").content_hash
    h3 = row_of(catalog_result, "h3").content_hash
    assert h1 and len(h1) == 64
    assert h1 == h2  # same content after normalisation
    assert h1 != h3  # only the title differs


def test_catalog_rows_add_up(catalog_result):
    n_raw, n_clean, n_rejected = catalog_result["counts"]
    assert n_raw == len(CATALOG_ROWS)  # classification neither drops nor multiplies rows
    assert n_clean + n_rejected == n_raw
    tags_rejected = sorted(r.source_file for r in catalog_result["rejected"])
    tags_flagged = sorted(t for t, rows in catalog_result["rows"].items() for r in rows if r[cleaning.REASON])
    assert tags_rejected == tags_flagged
    assert [c for c in catalog_result["clean"][0].asDict()] == cleaning.CATALOG_OUTPUT


def test_catalog_rejected_rows_keep_the_raw_record(catalog_result):
    records = {r.source_file: r.record for r in catalog_result["rejected"]}
    assert records["malformed"] == '{"item_id": "M1", "title": '
    assert '"price":"abc"' in records["price_abc"]
    assert all(r.reason for r in catalog_result["rejected"])


def test_catalog_whitespace_only_title_is_missing(catalog_result):
    assert reason_of(catalog_result, "ws_title") == "missing title"


# ======================================================================================
# events
# ======================================================================================
RUN_END = dt.datetime(2024, 1, 2, tzinfo=UTC)
DAY = "2024-01-01T{:02d}:00:00Z"

EVENT_ROWS = [
    # the same instant, 2024-01-01T00:00:00Z, four ways
    event_row("ts_seconds", user_id="ts1", event_ts="1704067200"),
    event_row("ts_millis", user_id="ts2", event_ts="1704067200000"),
    event_row("ts_iso", user_id="ts3", event_ts="2024-01-01T00:00:00Z"),
    event_row("ts_spark", user_id="ts4", event_ts="2024-01-01 00:00:00"),
    event_row("ts_offset", user_id="ts5", event_ts="2024-01-01T01:00:00+01:00"),
    event_row("upper_type", user_id="u2", event_type=" PURCHASE ", item_id=" i2 "),
    event_row("rating", user_id="u3", event_type="rating", value="4"),
    event_row("last_second", user_id="u4", event_ts="2024-01-01T23:59:59Z"),
    event_row("search_ok", user_id="u5", event_type="search", item_id=None, query="  red   dress "),
    event_row("malformed", corrupt="{oops", user_id=None, event_type=None, event_ts=None, item_id=None),
    event_row("unknown_type", event_type="like"),
    event_row("no_type", event_type="  "),
    event_row("no_user", user_id=" "),
    event_row("null_user", user_id=None),
    event_row("bad_ts", event_ts="yesterday"),
    event_row("no_ts", event_ts=None),
    event_row("at_run_end", event_ts="2024-01-02T00:00:00Z"),
    event_row("after_run_end", event_ts="1704240000"),  # 2024-01-03
    event_row("no_item", item_id=None),
    event_row("blank_item", event_type="click", item_id="  "),
    event_row("search_no_query", event_type="search", item_id=None, query=" "),
    event_row("unknown_item", item_id="zzz"),
    event_row("value_x", event_type="rating", value="x"),
    event_row("value_nan", event_type="rating", value="NaN"),
    event_row("value_inf", user_id="u6", event_type="rating", value="Infinity"),
    # exact duplicates
    event_row("dup_a", user_id="dup", event_ts=DAY.format(5)),
    event_row("dup_b", user_id="dup", event_ts=DAY.format(5)),
    # bot_max_events_per_day = 3: four valid events in a day make a bot ...
    *[event_row(f"bot_{h}", user_id="bot", event_ts=DAY.format(h)) for h in range(4)],
    # ... three do not, nor do rejected events or events on another day
    *[event_row(f"busy_{h}", user_id="busy", event_ts=DAY.format(h)) for h in range(3)],
    event_row("busy_unknown", user_id="busy", item_id="zzz", event_ts=DAY.format(4)),
    event_row("busy_dup", user_id="busy", event_ts="1704067200"),  # busy_0 again, as epoch seconds
    event_row("busy_other_day", user_id="busy", event_ts="2023-12-31T10:00:00Z"),
]


@pytest.fixture(scope="module")
def events_result(spark):
    raw = spark.createDataFrame(EVENT_ROWS, RAW_EVENTS_SCHEMA)
    known = spark.createDataFrame([("i1",), ("i2",), ("i3",), ("i1",)], "item_id string")
    rules = CleaningConfig(bot_max_events_per_day=3)
    classified = cleaning.classify_events(raw, known, rules, RUN_END).cache()
    rows = classified.withColumn("_epoch", F.col("event_ts").cast("long")).collect()
    clean, rejected = cleaning.split_clean(classified, cleaning.EVENTS_OUTPUT)
    clean_rows = clean.collect()
    rejected_rows = rejected.collect()
    counts = (len(rows), len(clean_rows), len(rejected_rows))
    classified.unpersist()
    return {"rows": by_tag(rows), "counts": counts, "clean": clean_rows, "rejected": rejected_rows}


def test_event_timestamps_seconds_millis_iso_agree(events_result):
    tags = ["ts_seconds", "ts_millis", "ts_iso", "ts_spark", "ts_offset"]
    for tag in tags:
        assert reason_of(events_result, tag) is None, tag
    epochs = {tag: row_of(events_result, tag)._epoch for tag in tags}
    assert set(epochs.values()) == {1704067200}, epochs
    dates = {row_of(events_result, tag).event_date for tag in tags}
    assert dates == {dt.date(2024, 1, 1)}


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("malformed", "malformed record"),
        ("unknown_type", "unknown event_type: 'like'"),
        ("no_type", "missing event_type"),
        ("no_user", "missing user_id"),
        ("null_user", "missing user_id"),
        ("bad_ts", "unparseable event_ts: 'yesterday'"),
        ("no_ts", "missing event_ts"),
        ("at_run_end", "event_ts after the run date"),
        ("after_run_end", "event_ts after the run date"),
        ("no_item", "missing item_id"),
        ("blank_item", "missing item_id"),
        ("search_no_query", "search event without query"),
        ("unknown_item", "unknown item_id (not in catalog_clean)"),
        ("busy_unknown", "unknown item_id (not in catalog_clean)"),
        ("value_x", "value is not a number: 'x'"),
        ("value_nan", "value is not finite"),
    ],
)
def test_event_rejection_reasons(events_result, tag, expected):
    assert reason_of(events_result, tag) == expected


def test_event_accepted_rows(events_result):
    assert reason_of(events_result, "last_second") is None
    upper = row_of(events_result, "upper_type")
    assert (upper[cleaning.REASON], upper.event_type, upper.item_id) == (None, "purchase", "i2")
    rating = row_of(events_result, "rating")
    assert rating[cleaning.REASON] is None and rating.value == 4.0
    search = row_of(events_result, "search_ok")
    assert search[cleaning.REASON] is None
    assert search.item_id is None
    assert search.query == "red dress"


def test_event_exact_duplicates_keep_one(events_result):
    reasons = {reason_of(events_result, "dup_a"), reason_of(events_result, "dup_b")}
    assert reasons == {"duplicate event", None}
    assert sum(1 for r in events_result["clean"] if r.user_id == "dup") == 1
    # the same event in another timestamp format is a duplicate too (keys are parsed values)
    pair = {reason_of(events_result, "busy_0"), reason_of(events_result, "busy_dup")}
    assert pair == {"duplicate event", None}


def test_event_bot_filter(events_result):
    for h in range(4):
        reason = reason_of(events_result, f"bot_{h}")
        assert reason == "bot filter: 4 events in one day (cleaning.bot_max_events_per_day = 3)"
    # exactly the limit is fine; rejected events and other days do not count
    for tag in ["busy_1", "busy_2", "busy_other_day"]:
        assert reason_of(events_result, tag) is None, tag
    busy = [r for r in events_result["clean"] if r.user_id == "busy"]
    assert len(busy) == 4  # three on 2024-01-01 (one of busy_0 / busy_dup) + one the day before
    assert not [r for r in events_result["clean"] if r.user_id == "bot"]


def test_event_rows_add_up(events_result):
    n_raw, n_clean, n_rejected = events_result["counts"]
    assert n_raw == len(EVENT_ROWS)  # the catalog join neither drops nor multiplies rows
    assert n_clean + n_rejected == n_raw
    tags_rejected = sorted(r.source_file for r in events_result["rejected"])
    tags_flagged = sorted(t for t, rows in events_result["rows"].items() for r in rows if r[cleaning.REASON])
    assert tags_rejected == tags_flagged
    assert len(set(tags_rejected)) == len(tags_rejected)  # no row rejected twice
    assert [c for c in events_result["clean"][0].asDict()] == cleaning.EVENTS_OUTPUT


def test_event_infinite_value_is_rejected(events_result):
    assert reason_of(events_result, "value_inf") == "value is not finite"


@pytest.fixture
def driver_timezone():
    """Switch the driver process's local time zone (Spark's session zone stays UTC)."""
    old = os.environ.get("TZ")

    def switch(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield switch
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_naive_run_end_is_utc_whatever_the_driver_timezone(spark, driver_timezone):
    driver_timezone("Europe/Berlin")  # UTC+1 in January
    raw = spark.createDataFrame([event_row("late", event_ts="2024-01-01T23:30:00Z")], RAW_EVENTS_SCHEMA)
    known = spark.createDataFrame([("i1",)], "item_id string")
    run_end = dt.datetime(2024, 1, 2)  # naive, meant as UTC
    (row,) = cleaning.classify_events(raw, known, CleaningConfig(), run_end).collect()
    assert row[cleaning.REASON] is None


# ======================================================================================
# column helpers
# ======================================================================================
def test_parse_timestamp_and_normalize_category(spark):
    frame = spark.createDataFrame(
        [("1704067200", "a>b"), ("1704067200000", " > a > "), ("NaN", ">"), ("", "  "), ("1e20", None)],
        "ts string, cat string",
    )
    rows = frame.select(
        cleaning.parse_timestamp(F.col("ts")).cast("long").alias("epoch"),
        cleaning.normalize_category(F.col("cat")).alias("cat"),
    ).collect()
    assert [r.epoch for r in rows] == [1704067200, 1704067200, None, None, None]
    assert [r.cat for r in rows] == ["a > b", "a", None, None, None]


# ======================================================================================
# inputs.read_raw
# ======================================================================================
def test_read_raw_json_with_a_malformed_line(spark, tmp_path):
    path = write_jsonl(
        tmp_path / "catalog.jsonl",
        [
            {"item_id": "a", "title": "A", "price": 9.5, "extra": "ignored"},
            '{"item_id": "b", "title": ',
            {"item_id": 3, "title": "C", "updated_at": 1704067200},
        ],
    )
    df = read_raw(spark, InputSource(path=path, format="json"), CATALOG_FIELDS, CATALOG_REQUIRED, "catalog")
    assert df.columns == CATALOG_FIELDS + [CORRUPT, SOURCE_FILE]
    assert all(t == "string" for _, t in df.dtypes)
    rows = sorted(df.collect(), key=lambda r: str(r.item_id))
    assert len(rows) == 3
    bad = [r for r in rows if r[CORRUPT] is not None]
    assert len(bad) == 1
    assert bad[0][CORRUPT] == '{"item_id": "b", "title": '
    assert bad[0].item_id is None
    good = {r.item_id: r for r in rows if r[CORRUPT] is None}
    assert set(good) == {"a", "3"}  # numbers arrive as strings
    assert good["a"].price == "9.5"
    assert good["3"].updated_at == "1704067200"
    assert good["a"].description is None
    assert all(r[SOURCE_FILE].endswith("catalog.jsonl") for r in rows)


def test_read_raw_missing_path(spark, tmp_path):
    missing = tmp_path / "nowhere" / "events.jsonl"
    with pytest.raises(InputError) as info:
        read_raw(spark, InputSource(path=missing, format="json"), EVENT_FIELDS, EVENT_REQUIRED, "events")
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_read_raw_json_missing_required_column(spark, tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [{"user_id": "u", "event_type": "view", "item_id": "i"}])
    with pytest.raises(InputError) as info:
        read_raw(spark, InputSource(path=path, format="json"), EVENT_FIELDS, EVENT_REQUIRED, "events")
    message = str(info.value)
    assert "event_ts" in message
    assert str(path) in message


def test_read_raw_csv_with_header(spark, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,event_type,event_ts,item_id,value\n"
        "u1,view,1704067200,i1,\n"
        "u2,rating,2024-01-01T00:00:00Z,i2,4.5\n"
    )
    df = read_raw(spark, InputSource(path=path, format="csv"), EVENT_FIELDS, EVENT_REQUIRED, "events")
    assert df.columns == EVENT_FIELDS + [CORRUPT, SOURCE_FILE]
    rows = {r.user_id: r for r in df.collect()}
    assert set(rows) == {"u1", "u2"}
    assert rows["u1"].event_ts == "1704067200"
    assert rows["u2"].value == "4.5"
    assert rows["u2"].query is None and rows["u2"][CORRUPT] is None
    assert rows["u1"][SOURCE_FILE].endswith("events.csv")


def test_read_raw_csv_missing_required_column(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,price\na,1\n")
    with pytest.raises(InputError, match="title"):
        read_raw(spark, InputSource(path=path, format="csv"), CATALOG_FIELDS, CATALOG_REQUIRED, "catalog")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_read_raw_empty_file(spark, tmp_path, fmt):
    path = tmp_path / f"catalog.{fmt}"
    path.write_text("")
    with pytest.raises(InputError) as info:
        read_raw(spark, InputSource(path=path, format=fmt), CATALOG_FIELDS, CATALOG_REQUIRED, "catalog")
    assert str(path) in str(info.value)


def test_read_raw_json_that_is_not_json_lines(spark, tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text("item_id,title\na,A\n")
    with pytest.raises(InputError, match="JSON"):
        read_raw(spark, InputSource(path=path, format="json"), CATALOG_FIELDS, CATALOG_REQUIRED, "catalog")
