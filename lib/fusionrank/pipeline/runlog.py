"""Run records: each stage's counts for a run date, kept as JSON under
`storage.root/_runs/run_date=D/<stage>.json` (read by reports and `show`)."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fusionrank.core.catalog import layout
from fusionrank.core.config import Settings


@dataclass
class StageResult:
    stage: str
    run_date: dt.date
    seconds: float
    counts: dict


def run_log_dir(settings: Settings, run_date: dt.date | str) -> Path:
    """Where each stage's result for a date is kept."""
    return layout(settings).run_records(run_date)


def record_stage(settings: Settings, result: StageResult, run_id: str) -> None:
    """Keep the stage's counts as JSON; a rerun of the date replaces them."""
    folder = run_log_dir(settings, result.run_date)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "stage": result.stage, "run_date": str(result.run_date), "run_id": run_id,
        "seconds": round(result.seconds, 3), "counts": result.counts, "config_digest": settings.digest(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = folder / f".{result.stage}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, folder / f"{result.stage}.json")


def read_stage_records(settings: Settings, run_date: dt.date | str) -> dict[str, dict]:
    folder = run_log_dir(settings, run_date)
    if not folder.exists():
        return {}
    records = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        records[record["stage"]] = record
    return records
