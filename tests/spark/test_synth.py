"""The synthetic e-commerce shop: determinism, contract, tastes, dirty rows, and
(with Spark) that the cleaning stages quarantine exactly the injected rows."""

from __future__ import annotations

import json

import pytest

from fusionrank.raw.synth import (
    DIRTY_FILE,
    MANIFEST_FILE,
    generate,
)
from tests.unit.test_synth import END


@pytest.mark.integration
def test_cleaning_quarantines_exactly_the_injected_rows(spark, tmp_path):
    """The cleaning stages accept the shop and quarantine every injected row, and
    nothing else, with the expected reasons."""
    from fusionrank.core.context import make_context
    from fusionrank.pipeline import run_stage
    from tests.conftest import make_settings

    out = tmp_path / "dirty"
    generate(out, items=150, users=40, days=20, seed=5, end_date=END, images="none", dirty=True)
    expected = json.loads((out / DIRTY_FILE).read_text())
    settings = make_settings(tmp_path, out / "catalog.jsonl", out / "events.jsonl",
                             # the injected bot is half of this small feed: allow it past the share check
                             cleaning={"bot_max_events_per_day": 300, "max_quarantine_share": 0.9})
    ctx = make_context(settings, END, spark)
    catalog = run_stage("clean_catalog", settings, END, ctx=ctx).counts
    events = run_stage("clean_events", settings, END, ctx=ctx).counts
    for got, want in ((catalog, expected["catalog"]), (events, expected["events"])):
        assert got["raw_rows"] == want["raw_rows"]
        assert got["clean_rows"] == want["clean_rows"]
        assert got["quarantined_rows"] == want["quarantined_rows"]
        assert got["quarantine_reasons"] == want["quarantine_reasons"]
    # The clean events keep every search with its query.
    clean = ctx.store.read("events_clean")
    searches = clean.where("event_type = 'search'").count()
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert searches == manifest["events_by_type"]["search"]
