"""publish: the night's metrics -> a decision in `published`. The night becomes the
consumers' current snapshot (its tables pinned at their Delta versions) only if the
gate passes; otherwise the stage fails and the previous snapshot stays current."""

from __future__ import annotations

import datetime as dt
import json
import logging

from fusionrank.core.catalog import PUBLISHED as PUBLISHED_SCHEMA
from fusionrank.core.catalog import SNAPSHOT_TABLES
from fusionrank.core.context import RunContext
from fusionrank.core.errors import StageError
from fusionrank.publish.gate import PUBLISHED, REJECTED, TABLE, Snapshot, current, gate_failures, metric_key

# Snapshot tables a night may leave without rows for its date: rank writes query_topk
# together with recs_user_topk (which must have rows), and a night with no searches
# (MovieLens) has no queries to rank.
MAY_BE_EMPTY = frozenset({"query_topk", "query_memory"})

log = logging.getLogger("fusionrank.publish")


def night_metrics(ctx: RunContext) -> dict[str, float]:
    """`{metric@k: value}` of the run date (a handful of rows)."""
    rows = ctx.for_date("metrics").select("metric", "k", "value").collect()
    return {metric_key(r["metric"], r["k"]): float(r["value"]) for r in rows}


def _record(ctx: RunContext, snapshot: Snapshot) -> None:
    """Add one decision row to the run date's partition, keeping the earlier ones."""
    store = ctx.store
    earlier = store.read(TABLE, where={"run_date": ctx.run_date}).collect() if store.exists(TABLE) else []
    row = (snapshot.run_date, snapshot.run_id, snapshot.decided_at, snapshot.status,
           json.dumps(snapshot.metrics, sort_keys=True), snapshot.previous_run_date,
           json.dumps(snapshot.table_versions, sort_keys=True), snapshot.index_path, json.dumps(snapshot.reasons))
    frame = ctx.spark.createDataFrame([tuple(r) for r in earlier] + [row], PUBLISHED_SCHEMA)
    ctx.write(TABLE, frame, "publish", commit_extra={"fusionrank.publish.status": snapshot.status})


def publish(ctx: RunContext) -> dict:
    """Gate the night's metrics; publish the night's tables or fail loudly."""
    cfg = ctx.settings.publish
    metrics = night_metrics(ctx)
    # Pin every snapshot table now: later writes (reruns, backfills) make new versions.
    versions = {}
    for table in SNAPSHOT_TABLES:
        if not (table in MAY_BE_EMPTY and ctx.store.exists(table)):
            ctx.for_date(table)  # fails naming the stage to run when the date is missing
        versions[table] = ctx.store.info(table).version
    previous = current(ctx.settings, ctx.spark, before=ctx.run_date)
    failures = gate_failures(metrics, cfg, previous.metrics if previous else None,
                             previous.run_date if previous else None)
    snapshot = Snapshot(
        run_date=ctx.run_date, run_id=ctx.run_id, decided_at=dt.datetime.now(dt.timezone.utc),
        status=REJECTED if failures else PUBLISHED, metrics=metrics,
        previous_run_date=previous.run_date if previous else None, table_versions=versions,
        index_path=ctx.index_path(), reasons=failures,
    )
    _record(ctx, snapshot)
    if failures:
        now = current(ctx.settings, ctx.spark)
        raise StageError(
            f"publish gate failed for {ctx.run_date}; the current snapshot stays "
            f"{now.run_date if now else '(none: nothing published yet)'}:\n  " + "\n  ".join(failures)
        )
    log.info("published %s (previous %s)", ctx.run_date, snapshot.previous_run_date)
    return {"status": PUBLISHED, "metrics": metrics,
            "previous_run_date": str(snapshot.previous_run_date) if snapshot.previous_run_date else None,
            "table_versions": versions}
