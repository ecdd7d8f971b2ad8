"""The quarantine gate of the cleaning stages: every raw row is clean or quarantined
with a reason, and a feed that is mostly bad stops the night before anything
downstream sees it."""

from __future__ import annotations

from typing import Callable

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from fusionrank.clean import rules, volume
from fusionrank.core.context import RunContext
from fusionrank.core.errors import StageError


def write_quarantine(ctx: RunContext, rejected: DataFrame, stage: str) -> None:
    ctx.write("quarantine", rules.quarantine_rows(rejected, stage, ctx.run_date), stage,
              partition_values={"stage": stage})


def publish_cleaned(
    ctx: RunContext,
    stage: str,
    source,
    classified: DataFrame,
    output_columns: list[str],
    write_clean: Callable[[DataFrame], None],
    drift: dict | None = None,
) -> dict:
    """Write the clean rows and the quarantine of a cleaning stage; return the counts.

    Every raw row is either clean or quarantined with a reason, so the counts add up.
    When the quarantined share passes `cleaning.max_quarantine_share` the stage fails
    after writing the quarantine (for inspection) but not the clean table, which keeps
    its last version: a broken feed stops the night instead of publishing emptiness.
    """
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = classified.groupBy(rules.REASON).count().collect()
        raw_rows = sum(int(r["count"]) for r in by_reason)
        if raw_rows == 0:
            raise StageError(f"{stage}: input {source.path} has no rows")
        clean_rows = sum(int(r["count"]) for r in by_reason if r[rules.REASON] is None)
        # Reasons that quote the bad value are grouped by their fixed prefix.
        reasons: dict[str, int] = {}
        for row in by_reason:
            if row[rules.REASON] is not None:
                key = row[rules.REASON].split(":")[0]
                reasons[key] = reasons.get(key, 0) + int(row["count"])
        reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        clean, rejected = rules.split_clean(classified, output_columns)
        # Feed volume against the previous successful night, before anything is written.
        drift = {**(drift or {}), **volume.distinct_counts(clean, output_columns)}
        try:
            drift.update(volume.guard(stage, {"raw_rows": raw_rows, "clean_rows": clean_rows, **drift},
                                      ctx.layout.runs_root, ctx.run_date, ctx.settings.cleaning))
        except volume.VolumeError as exc:
            raise StageError(str(exc)) from None
        share, limit = (raw_rows - clean_rows) / raw_rows, ctx.settings.cleaning.max_quarantine_share
        if share > limit:
            write_quarantine(ctx, rejected, stage)
            top = ", ".join(f"{reason} ({n})" for reason, n in list(reasons.items())[:3])
            raise StageError(
                f"{stage}: {raw_rows - clean_rows} of {raw_rows} rows of {source.path} were quarantined "
                f"({share:.1%}), above cleaning.max_quarantine_share ({limit:.1%}); top reasons: {top}. "
                f"The quarantine for {ctx.run_date} was written for inspection; the clean table was not changed"
            )
        write_clean(clean)
        write_quarantine(ctx, rejected, stage)
    finally:
        classified.unpersist()
    return {"raw_rows": raw_rows, "clean_rows": clean_rows, "quarantined_rows": raw_rows - clean_rows,
            "quarantine_reasons": reasons, **(drift or {})}
