"""Inputs that used to corrupt a night silently: RFC 4180 CSV (quoted newlines, commas,
doubled quotes, BOM, CRLF), unbalanced quotes, and feed volumes that collapse between
nights; plus the config digest every stage's run record keeps."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.raw.readers import InputError
from fusionrank.clean.volume import ALLOW_ENV
from fusionrank.core.context import make_context
from fusionrank.core.errors import StageError
from fusionrank.pipeline import read_stage_records, run_stage
from tests.conftest import make_settings, write_jsonl

pytestmark = pytest.mark.integration

NIGHT1 = dt.date(2026, 11, 21)
NIGHT2 = dt.date(2026, 11, 22)

DESCRIPTIONS = [
    "Warm.\nMachine washable.\n\nMade in Portugal",
    'The "classic" cut, 100% cotton, sizes S, M, L',
    "one line",
    'Ends with a quote "',
    "Windows line\r\nends inside a field",
    "",
]


def catalog_rows(n: int) -> list[dict]:
    return [{"item_id": f"I{i}", "title": f"Item {i}, the \"best\"" if i % 2 else f"Item {i}",
             "description": DESCRIPTIONS[i % len(DESCRIPTIONS)], "price": f"{i + 0.5}"} for i in range(n)]


def _clean_catalog(settings, spark, date=NIGHT2):
    ctx = make_context(settings, date, spark)
    counts = run_stage("clean_catalog", settings, date, ctx=ctx).counts
    return ctx, counts


@pytest.mark.parametrize("writer", ["csv_module", "pandas", "excel_bom_crlf"])
def test_rfc4180_csv_with_multiline_fields_reads_exactly(spark, tmp_path, writer):
    rows = catalog_rows(12)
    path = tmp_path / "catalog.csv"
    if writer == "csv_module":
        with open(path, "w", newline="", encoding="utf-8") as handle:
            out = csv.DictWriter(handle, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)
    elif writer == "pandas":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:  # Excel's "CSV UTF-8": a BOM, CRLF line ends, every field quoted
        with open(path, "w", newline="", encoding="utf-8-sig") as handle:
            out = csv.DictWriter(handle, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL, lineterminator="\r\n")
            out.writeheader()
            out.writerows(rows)
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}})
    ctx, counts = _clean_catalog(settings, spark)
    assert counts["raw_rows"] == 12 and counts["clean_rows"] == 12 and counts["quarantined_rows"] == 0
    got = ctx.store.read("catalog_clean").toPandas().set_index("item_id")
    for row in rows:
        have = got.loc[row["item_id"]]
        assert have["title"] == row["title"]
        assert have["price"] == pytest.approx(float(row["price"]))
    # Multi-line text survives as text (cleaning turns control characters into spaces).
    assert "Machine washable" in got.loc["I0", "description"] and "Portugal" in got.loc["I0", "description"]
    assert got.loc["I1", "description"] == 'The "classic" cut, 100% cotton, sizes S, M, L'
    assert got.loc["I3", "description"] == 'Ends with a quote "'


def test_semicolon_delimiter_and_single_quote_options(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("item_id;title;description\nA;'Lamp; tall';'two\nlines'\nB;Desk;'it''s'\n")
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv", "delimiter": ";", "quote": "'"}})
    ctx, counts = _clean_catalog(settings, spark)
    assert counts["clean_rows"] == 2
    got = ctx.store.read("catalog_clean").toPandas().set_index("item_id")
    assert got.loc["A", "title"] == "Lamp; tall"
    assert got.loc["B", "description"] == "it's"


def test_unbalanced_quote_names_file_and_line(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text('item_id,title,description\nA,Lamp,fine\nB,Desk,"broken\nC,Chair,plain\nD,Sofa,plain\n')
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}})
    with pytest.raises(InputError) as info:
        _clean_catalog(settings, spark)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "never closed" in message
    assert not DeltaTable.is_deltatable(str(tmp_path / "warehouse" / "catalog_clean"))


def test_text_after_closing_quote_names_the_lines(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    # B's description opens a quote that never closes; the next quote (on line 5) then
    # "closes" it and is followed by text: a shifted table unless stopped.
    path.write_text('item_id,title,description\nA,Lamp,fine\nB,Desk,"broken\nC,Chair,plain\nD,Sofa,"x" y\n')
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}})
    with pytest.raises(InputError, match=r"catalog.csv: line 5: text 'x\" y' follows the closing quote of a field "
                                         r"opened on line 3"):
        _clean_catalog(settings, spark)


def test_row_with_wrong_field_count_is_quarantined_not_shifted(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text("item_id,title,price\nA,Lamp,10\nB,Desk,with,extra,5\nC,Chair,7\n")
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}})
    ctx, counts = _clean_catalog(settings, spark)
    assert counts["raw_rows"] == 3 and counts["clean_rows"] == 2
    assert counts["quarantine_reasons"] == {"malformed record": 1}
    q = DeltaTable(str(tmp_path / "warehouse" / "quarantine")).to_pandas()
    assert list(q["record"]) == ["B,Desk,with,extra,5"]


# -- feed volume -----------------------------------------------------------------------
def test_truncated_feed_fails_before_writing(spark, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    path = write_jsonl(tmp_path / "catalog.jsonl", catalog_rows(40))
    settings = make_settings(tmp_path, path, cleaning={"volume_max_drop_share": 0.3})
    _, first = _clean_catalog(settings, spark, NIGHT1)
    assert first["volume_check"].startswith("first night")
    assert first["distinct_items"] == 40

    write_jsonl(path, catalog_rows(12))  # every remaining row is valid
    with pytest.raises(StageError) as info:
        _clean_catalog(settings, spark, NIGHT2)
    message = str(info.value)
    assert "raw_rows fell from 40 to 12" in message and "clean_rows fell from 40 to 12" in message
    assert "distinct_items fell from 40 to 12" in message and str(NIGHT1) in message
    assert ALLOW_ENV in message
    ctx = make_context(settings, NIGHT2, spark)
    assert ctx.store.partition_values("catalog_clean", "run_date") == [str(NIGHT1)]
    assert str(NIGHT2) not in set(ctx.store.partition_values("quarantine", "run_date"))
    assert "clean_catalog" not in read_stage_records(settings, NIGHT2)

    # A planned change: allowed for this run.
    monkeypatch.setenv(ALLOW_ENV, "clean_catalog")
    _, counts = _clean_catalog(settings, spark, NIGHT2)
    assert counts["clean_rows"] == 12 and counts["volume_check"].startswith("skipped")


def test_growth_beyond_the_share_fails_and_null_switches_off(spark, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    path = write_jsonl(tmp_path / "catalog.jsonl", catalog_rows(10))
    settings = make_settings(tmp_path, path, cleaning={"volume_max_growth_share": 1.0})
    _clean_catalog(settings, spark, NIGHT1)
    write_jsonl(path, catalog_rows(25))
    with pytest.raises(StageError, match=r"raw_rows grew from 10 to 25 \(\+150.0%"):
        _clean_catalog(settings, spark, NIGHT2)
    off = make_settings(tmp_path, path, cleaning={"volume_max_growth_share": None})
    _, counts = _clean_catalog(off, spark, NIGHT2)
    assert counts["volume_check"] == "ok" and counts["volume_previous_run_date"] == str(NIGHT1)


def test_stage_record_keeps_the_config_digest(spark, tmp_path):
    path = write_jsonl(tmp_path / "catalog.jsonl", catalog_rows(3))
    settings = make_settings(tmp_path, path)
    _clean_catalog(settings, spark, NIGHT1)
    record = read_stage_records(settings, NIGHT1)["clean_catalog"]
    assert record["config_digest"] == settings.digest() and len(record["config_digest"]) == 12
    other = make_settings(tmp_path, path, rank={"k": 7})
    assert other.digest() != record["config_digest"]
    stored = json.loads((Path(settings.storage.root) / "_runs" / f"run_date={NIGHT1}" / "clean_catalog.json").read_text())
    assert stored["config_digest"] == settings.digest()


def test_pandas_csv_with_a_lone_carriage_return_keeps_the_row(spark, tmp_path):
    path = tmp_path / "catalog.csv"
    pd.DataFrame({"item_id": ["A", "B"], "title": ["old\rmac text", "Desk"]}).to_csv(path, index=False)
    assert b"old\rmac" in path.read_bytes()  # pandas leaves the CR unquoted
    settings = make_settings(tmp_path, path, inputs={"catalog": {"format": "csv"}})
    ctx, counts = _clean_catalog(settings, spark)
    assert counts["raw_rows"] == 2 and counts["clean_rows"] == 2
    assert set(ctx.store.read("catalog_clean").toPandas()["item_id"]) == {"A", "B"}
