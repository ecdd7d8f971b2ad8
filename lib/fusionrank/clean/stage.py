"""The cleaning stages: raw catalog -> catalog_clean, raw events -> events_clean, both
with a quarantine (see clean.rules for what is rejected and why)."""

from __future__ import annotations

from pyspark.sql import DataFrame

from fusionrank.clean import rules
from fusionrank.clean.quarantine import publish_cleaned
from fusionrank.core.context import RunContext
from fusionrank.raw import readers
from fusionrank.raw.contract import CATALOG_FIELDS, CATALOG_REQUIRED, EVENT_FIELDS, EVENT_REQUIRED
from fusionrank.storage.store import read_delta_path

def _delta_reader(ctx: RunContext):
    return lambda path: read_delta_path(ctx.spark, path, ctx.store.engine)


def clean_catalog(ctx: RunContext) -> dict:
    cfg = ctx.settings
    drift: dict = {}
    raw = readers.read_raw(ctx.spark, cfg.inputs.catalog, CATALOG_FIELDS, CATALOG_REQUIRED, "catalog",
                           delta_reader=_delta_reader(ctx), drift=drift)

    def write(clean: DataFrame) -> None:
        ctx.write("catalog_clean", clean, "clean_catalog")

    classified = rules.classify_catalog(raw, cfg.cleaning, ctx.run_end)
    return publish_cleaned(ctx, "clean_catalog", cfg.inputs.catalog, classified, rules.CATALOG_OUTPUT, write, drift)


def clean_events(ctx: RunContext) -> dict:
    cfg = ctx.settings
    drift: dict = {}
    raw = readers.read_raw(ctx.spark, cfg.inputs.events, EVENT_FIELDS, EVENT_REQUIRED, "events",
                           delta_reader=_delta_reader(ctx), drift=drift)
    items = ctx.for_date("catalog_clean").select("item_id")

    def write(clean: DataFrame) -> None:
        # The input is the full history up to the run date, so the table is replaced
        # whole; one file per event date keeps the partitions compact.
        ctx.write("events_clean", clean.repartition("event_date"), "clean_events")

    classified = rules.classify_events(raw, items, cfg.cleaning, ctx.run_end)
    return publish_cleaned(ctx, "clean_events", cfg.inputs.events, classified, rules.EVENTS_OUTPUT, write, drift)
