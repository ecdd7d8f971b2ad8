"""The publish gate and the consumer-visible "current" snapshot.

After `evaluate`, the `publish` stage reads the night's metrics and checks them
against `publish.floors` and against the previous published run
(`publish.max_relative_regression`). Every decision becomes one row of the
`published` Delta table:

    run_date, run_id, decided_at, status ("published" | "rejected"), metrics (JSON),
    previous_run_date, table_versions (JSON: table -> Delta version), index_path,
    reasons (JSON list: why a run was rejected)

The current snapshot is the newest `run_date` with a `published` row (its latest
such row). A consumer reads a table of that snapshot at the recorded Delta version
(`read_current`), so neither a rerun in progress nor a rejected rerun of the same
date changes what consumers see: only a passing gate moves "current".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fusionrank.core.config import PublishConfig, Settings
from fusionrank.core.spark import get_session
from fusionrank.storage.store import TableStore

log = logging.getLogger("fusionrank.publish")

TABLE = "published"
PUBLISHED = "published"
REJECTED = "rejected"
# Float noise (0.2 * 0.9 = 0.18000000000000002) must not decide a gate.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Snapshot:
    """One publish decision (a row of the `published` table)."""

    run_date: dt.date
    run_id: str
    decided_at: dt.datetime
    status: str
    metrics: dict[str, float]
    previous_run_date: dt.date | None
    table_versions: dict[str, int]
    index_path: str | None
    reasons: list[str]

    @classmethod
    def from_row(cls, row) -> "Snapshot":
        return cls(row["run_date"], row["run_id"], row["decided_at"], row["status"], json.loads(row["metrics"]),
                   row["previous_run_date"], json.loads(row["table_versions"]), row["index_path"],
                   json.loads(row["reasons"]))

    def as_dict(self) -> dict:
        return {"run_date": str(self.run_date), "run_id": self.run_id, "decided_at": self.decided_at.isoformat(),
                "status": self.status, "metrics": self.metrics,
                "previous_run_date": str(self.previous_run_date) if self.previous_run_date else None,
                "table_versions": self.table_versions, "index_path": self.index_path, "reasons": self.reasons}


# -- the gate (pure) -----------------------------------------------------------------
def metric_key(metric: str, k: int | None) -> str:
    """`ndcg@10`, or `users_evaluated` for metrics without a cut-off."""
    return metric if k is None else f"{metric}@{k}"


def gate_failures(
    metrics: Mapping[str, float],
    cfg: PublishConfig,
    previous: Mapping[str, float] | None = None,
    previous_run_date: dt.date | None = None,
) -> list[str]:
    """Why `metrics` may not be published (empty: the gate passes).

    Each reason names the metric, the night's value and the floor or the previous
    run's value it failed against.
    """
    failures = []
    for key, floor in cfg.floors.items():
        value = metrics.get(key)
        if value is None or math.isnan(value):
            failures.append(f"{key} is missing from the night's metrics (publish.floors.{key} = {floor})")
        elif value < floor - TOLERANCE:
            failures.append(f"{key} = {value:.4f} is below its floor {floor:.4f} (publish.floors.{key})")
    margin = cfg.max_relative_regression
    if previous and margin is not None:
        for key in cfg.regression_metrics:
            before, value = previous.get(key), metrics.get(key)
            if before is None or math.isnan(before):
                continue  # the previous run did not measure it: nothing to compare
            if value is None or math.isnan(value):
                failures.append(f"{key} is missing from the night's metrics (publish.regression_metrics)")
                continue
            limit = before * (1 - margin)
            if value < limit - TOLERANCE:
                failures.append(
                    f"{key} = {value:.4f} is more than {margin:.0%} below the previous published run "
                    f"({previous_run_date}: {before:.4f}; limit {limit:.4f}, publish.max_relative_regression)"
                )
    return failures


# -- reading decisions -----------------------------------------------------------------
def _store(settings: Settings, spark: SparkSession | None):
    return TableStore(spark or get_session(settings), settings)


def _latest(df: DataFrame) -> Snapshot | None:
    row = df.orderBy(F.col("run_date").desc(), F.col("decided_at").desc()).limit(1).collect()
    return Snapshot.from_row(row[0]) if row else None


def current(settings: Settings, spark: SparkSession | None = None, before: dt.date | None = None) -> Snapshot | None:
    """The current published snapshot (None before the first publish).

    `before`: the latest snapshot with a run date strictly before it instead.
    """
    store = _store(settings, spark)
    if not store.exists(TABLE):
        return None
    df = store.read(TABLE).where(F.col("status") == PUBLISHED)
    if before is not None:
        df = df.where(F.col("run_date") < F.lit(before))
    return _latest(df)


def current_run_date(settings: Settings, spark: SparkSession | None = None) -> dt.date | None:
    """The run date consumers should read (None before the first publish)."""
    snapshot = current(settings, spark)
    return snapshot.run_date if snapshot else None


def read_current(settings: Settings, table: str, spark: SparkSession | None = None) -> DataFrame:
    """`table`'s rows of the current snapshot, at the Delta version the gate approved."""
    store = _store(settings, spark)
    snapshot = current(settings, store.spark)
    if snapshot is None:
        raise LookupError(f"nothing is published yet: the {TABLE} table at {store.path(TABLE)} has no published run")
    if table not in snapshot.table_versions:
        raise LookupError(f"table {table} is not part of a published snapshot; "
                          f"snapshot tables: {', '.join(sorted(snapshot.table_versions))}")
    return store.read(table, where={"run_date": snapshot.run_date}, version=snapshot.table_versions[table])


def decisions(settings: Settings, spark: SparkSession | None = None, limit: int = 10) -> list[Snapshot]:
    """The latest `limit` publish decisions, newest first."""
    store = _store(settings, spark)
    if not store.exists(TABLE):
        return []
    rows = store.read(TABLE).orderBy(F.col("decided_at").desc()).limit(limit).collect()
    return [Snapshot.from_row(r) for r in rows]


