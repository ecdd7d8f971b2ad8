"""Dirty raw input: every rejected row lands in quarantine with a reason, the counts
add up, and whole-input problems fail with an error that names the file."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from fusionrank.raw.readers import InputError
from fusionrank.vectors.encoders import ModelError
from fusionrank.core.context import make_context
from fusionrank.core.errors import StageError
from fusionrank.pipeline import run_all, run_stage
from fusionrank.core.privacy import PrivacyError
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
        # Most of this fixture is deliberately bad: switch the quarantine-share check off.
        cleaning={"bot_max_events_per_day": 10, "max_quarantine_share": 1.0},
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


@pytest.mark.parametrize("declared, expected", [
    ("json", r"catalog input .*catalog.bin: none of the first \d+ lines is a JSON object"),
    ("csv", r"catalog input .*catalog.bin has no column\(s\) \['item_id', 'title'\]"),
])
def test_parquet_declared_as_text_format_names_the_file(spark, tmp_path, declared, expected):
    path = tmp_path / "catalog.bin"
    pq.write_table(pa.table({"item_id": ["1"], "title": ["x"]}), path)
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": declared}})
    with pytest.raises(InputError, match=expected):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_empty_input_names_the_file(spark, tmp_path):
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), path)
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "parquet"}})
    with pytest.raises(StageError, match=r"clean_catalog: input .*catalog.parquet has no rows"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)
    assert not DeltaTable.is_deltatable(str(tmp_path / "warehouse" / "catalog_clean"))


def test_typed_columns_are_read_as_values_and_bad_values_quarantined(spark, tmp_path):
    # Parquet from another team: integer ids, a string price column, a real timestamp.
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({
        "item_id": pa.array([1, 2, 3], pa.int64()),
        "title": ["Lamp", "Chair", "Desk"],
        "price": ["12.5", "abc", "-1"],
        "updated_at": pa.array([dt.datetime(2026, 11, 1, 8, 30)] * 3, pa.timestamp("us", tz="UTC")),
    }), path)
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "parquet"}},
                             cleaning={"max_quarantine_share": 1.0})
    ctx = make_context(settings, RUN_DATE, spark)
    counts = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    assert (counts["raw_rows"], counts["clean_rows"], counts["quarantined_rows"]) == (3, 1, 2)
    clean = ctx.store.read("catalog_clean").toPandas()
    assert list(clean["item_id"]) == ["1"] and clean["price"].iloc[0] == pytest.approx(12.5)
    assert str(clean["updated_at"].iloc[0])[:16] == "2026-11-01 08:30"
    reasons = sorted(DeltaTable(str(tmp_path / "warehouse" / "quarantine")).to_pandas()["reason"])
    assert reasons == ["negative price", "price is not a number: 'abc'"]


def test_nested_column_type_names_file_and_column(spark, tmp_path):
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": ["1"], "title": pa.array([["a", "b"]], pa.list_(pa.string()))}), path)
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "parquet"}})
    with pytest.raises(InputError, match=r"catalog input .*catalog.parquet: column 'title' has type array<string>"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_schema_drift_new_and_renamed_columns(spark, tmp_path):
    # `price` was renamed `cost` upstream and a `colour` column appeared: the run goes
    # on (prices read as null) and the counts name the columns it ignored.
    rows = [{"item_id": str(i), "title": f"Item {i}", "cost": 9.5, "colour": "red"} for i in range(4)]
    settings = make_settings(tmp_path, write_jsonl(tmp_path / "catalog.jsonl", rows))
    ctx = make_context(settings, RUN_DATE, spark)
    counts = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    assert counts["ignored_columns"] == ["colour", "cost"]
    assert counts["clean_rows"] == 4
    assert ctx.store.read("catalog_clean").where("price IS NOT NULL").count() == 0
    # A renamed required column is an error that lists what the file does have.
    renamed = [{"item_id": "1", "name": "Lamp"}]
    settings = make_settings(tmp_path, write_jsonl(tmp_path / "renamed.jsonl", renamed))
    with pytest.raises(InputError, match=r"renamed.jsonl has no column\(s\) \['title'\].*found: \['item_id', 'name'\]"):
        run_stage("clean_catalog", settings, RUN_DATE, spark=spark)


def test_future_catalog_version_is_quarantined_and_the_previous_one_wins(spark, tmp_path):
    rows = [
        {"item_id": "A", "title": "Lamp v1", "updated_at": "2026-11-01T00:00:00Z"},
        {"item_id": "A", "title": "Lamp v2", "updated_at": "2026-12-01T00:00:00Z"},  # after RUN_DATE
        {"item_id": "B", "title": "Desk", "updated_at": "2026-11-22T23:59:59Z"},
    ]
    settings = make_settings(tmp_path, write_jsonl(tmp_path / "catalog.jsonl", rows))
    ctx = make_context(settings, RUN_DATE, spark)
    counts = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    assert counts["quarantine_reasons"] == {"updated_at after the run date": 1}
    clean = ctx.store.read("catalog_clean").toPandas().set_index("item_id")
    assert clean.loc["A", "title"] == "Lamp v1" and "B" in clean.index


def test_huge_text_and_bytes_that_are_not_utf8(spark, tmp_path):
    path = tmp_path / "catalog.jsonl"
    huge = "word " * 250_000  # 1.25 MB of description
    with open(path, "wb") as handle:
        handle.write(b'{"item_id": "1", "title": "Caf\xe9 \xff\xfe Noir", "description": "' + huge.encode() + b'"}\n')
        handle.write(b'{"item_id": "2\xff", "title": "Bad id"}\n')
        handle.write(b'{"item_id": "3", "title": "Plain"}\n')
    settings = make_settings(tmp_path, path, cleaning={"max_quarantine_share": 1.0})
    ctx = make_context(settings, RUN_DATE, spark)
    counts = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    # Spark's JSON parser rejects a line with bytes that are not UTF-8 as a whole.
    assert (counts["raw_rows"], counts["clean_rows"], counts["quarantined_rows"]) == (3, 1, 2)
    assert counts["quarantine_reasons"] == {"malformed record": 2}
    # The quarantine stays readable by any Delta reader: the raw lines are kept with
    # the bad bytes as U+FFFD (a raw invalid byte would break pyarrow and pandas).
    q = DeltaTable(str(tmp_path / "warehouse" / "quarantine")).to_pandas()
    assert sorted(q["reason"]) == ["malformed record: not valid UTF-8"] * 2
    records = sorted(q["record"], key=len)
    assert records[0] == '{"item_id": "2\ufffd", "title": "Bad id"}'
    assert records[1].startswith('{"item_id": "1", "title": "Caf\ufffd \ufffd\ufffd Noir"') and len(records[1]) > 1_000_000
    # A huge field on a well-formed line is cut to cleaning.max_text_chars.
    clean = ctx.store.read("catalog_clean").toPandas().set_index("item_id")
    assert list(clean.index) == ["3"]
    write_jsonl(path, [{"item_id": "4", "title": "Long", "description": huge}])
    run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx)
    description = ctx.store.read("catalog_clean").first()["description"]
    assert len(description) == settings.cleaning.max_text_chars and description.startswith("word word")


def test_replacement_characters_in_ids_are_quarantined(spark, tmp_path):
    # CSV decoding turns bad bytes into U+FFFD; in an id that cannot be trusted.
    path = tmp_path / "catalog.csv"
    path.write_bytes(b"item_id,title\nA\xff1,Lamp \xfe shade\nB2,Desk\n")
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}},
                             cleaning={"max_quarantine_share": 1.0})
    ctx = make_context(settings, RUN_DATE, spark)
    counts = run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx).counts
    assert counts["quarantine_reasons"] == {"item_id is not valid UTF-8": 1}
    assert [r["item_id"] for r in ctx.store.read("catalog_clean").collect()] == ["B2"]


def test_bot_user_with_a_million_events(spark, tmp_path):
    catalog = write_jsonl(tmp_path / "catalog.jsonl", [{"item_id": "A", "title": "Lamp"}])
    events = str(tmp_path / "events_parquet")
    start_ms = 1763700000000  # 2025-11-21, milliseconds
    bot = spark.range(1_000_000).selectExpr(
        "'bot' AS user_id", "'view' AS event_type", f"{start_ms} + id AS event_ts", "'A' AS item_id")
    people = spark.range(50).selectExpr(
        "concat('u', id) AS user_id", "'view' AS event_type", f"{start_ms} + id AS event_ts", "'A' AS item_id")
    bot.unionByName(people).repartition(4).write.parquet(events)
    settings = make_settings(tmp_path, catalog, tmp_path / "events_parquet",
                             inputs={"events": {"format": "parquet"}},
                             cleaning={"bot_max_events_per_day": 10_000, "max_quarantine_share": 1.0})
    ctx = make_context(settings, RUN_DATE, spark)
    run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx)
    counts = run_stage("clean_events", settings, RUN_DATE, ctx=ctx).counts
    assert counts["raw_rows"] == 1_000_050
    assert counts["clean_rows"] == 50
    assert counts["raw_rows"] == counts["clean_rows"] + counts["quarantined_rows"]
    assert counts["quarantine_reasons"] == {"bot filter": 1_000_000}
    assert ctx.store.count_rows("quarantine", where={"run_date": RUN_DATE}) == 1_000_000
    q = ctx.store.read("quarantine", where={"run_date": RUN_DATE}).limit(1).first()
    assert q["reason"] == "bot filter: 1000000 events in one day (cleaning.bot_max_events_per_day = 10000)"


def test_quarantine_share_above_threshold_fails_and_keeps_the_clean_table(spark, tmp_path):
    good = [{"item_id": str(i), "title": f"Item {i}", "price": 10} for i in range(4)]
    path = write_jsonl(tmp_path / "catalog.jsonl", good)
    settings = make_settings(tmp_path, path)
    ctx = make_context(settings, RUN_DATE, spark)
    run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx)
    version = ctx.store._version("catalog_clean")
    # The feed breaks: 6 of 8 rows lose their title or get a negative price.
    broken = good[:2] + [{"item_id": f"x{i}", "title": ""} for i in range(4)] + \
        [{"item_id": f"n{i}", "title": "T", "price": -1} for i in range(2)]
    write_jsonl(path, broken)
    with pytest.raises(StageError) as info:
        run_stage("clean_catalog", settings, RUN_DATE, ctx=ctx)
    message = str(info.value)
    for part in ("clean_catalog: 6 of 8 rows of", "catalog.jsonl", "(75.0%)", "cleaning.max_quarantine_share (50.0%)",
                 "top reasons: missing title (4), negative price (2)", "the clean table was not changed"):
        assert part in message, (part, message)
    # The clean table still holds the previous night's input; the quarantine holds
    # today's rejects for inspection, with the counts adding up.
    assert ctx.store._version("catalog_clean") == version
    assert sorted(r["item_id"] for r in ctx.store.read("catalog_clean").collect()) == ["0", "1", "2", "3"]
    q = ctx.store.read("quarantine", where={"run_date": RUN_DATE}).toPandas()
    assert len(q) == 6 and set(q["stage"]) == {"clean_catalog"}
    # At the threshold the stage passes.
    settings = make_settings(tmp_path, path, cleaning={"max_quarantine_share": 0.75})
    counts = run_stage("clean_catalog", settings, RUN_DATE, spark=spark).counts
    assert (counts["clean_rows"], counts["quarantined_rows"]) == (2, 6)


def test_missing_model_folder_fails_before_any_stage_runs(spark, tmp_path):
    settings = make_settings(tmp_path, models={"text": {"path": str(tmp_path / "no-model")}})
    with pytest.raises(ModelError, match=r"models.text.path: .*no-model is not a folder"):
        run_all(settings, RUN_DATE, spark)
    assert not (tmp_path / "warehouse" / "catalog_clean").exists()


def test_pseudonymisation_without_salt_fails_before_any_stage_runs(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("FUSIONRANK_TEST_SALT", raising=False)
    settings = make_settings(tmp_path, privacy={"pseudonymise_user_ids": True, "salt_env": "FUSIONRANK_TEST_SALT"})
    with pytest.raises(PrivacyError, match=r"environment variable FUSIONRANK_TEST_SALT \(privacy.salt_env\) is not set"):
        run_all(settings, RUN_DATE, spark)
    assert not (tmp_path / "warehouse" / "catalog_clean").exists()


def test_events_before_catalog_is_a_clear_error(spark, tmp_path):
    events = write_jsonl(tmp_path / "raw" / "events.jsonl", EVENTS[:2])
    settings = make_settings(tmp_path, tmp_path / "raw" / "catalog.jsonl", events)
    with pytest.raises(StageError, match="catalog_clean does not exist"):
        run_stage("clean_events", settings, RUN_DATE, spark=spark)
