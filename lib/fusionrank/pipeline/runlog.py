"""Run records: each stage's counts for a run date, kept as JSON under
`storage.root/_runs/run_date=D/<stage>.json` (read by reports and `show`)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from fusionrank.core import uri as uris
from fusionrank.core.catalog import layout
from fusionrank.core.config import Settings
from fusionrank.storage import fs


@dataclass
class StageResult:
    stage: str
    run_date: dt.date
    seconds: float
    counts: dict


def run_log_dir(settings: Settings, run_date: dt.date | str) -> str:
    """Where each stage's result for a date is kept."""
    return layout(settings).run_records(run_date)


def record_stage(settings: Settings, result: StageResult, run_id: str) -> None:
    """Keep the stage's counts as JSON; a rerun of the date replaces them."""
    folder = run_log_dir(settings, result.run_date)
    payload = {
        "stage": result.stage, "run_date": str(result.run_date), "run_id": run_id,
        "seconds": round(result.seconds, 3), "counts": result.counts, "config_digest": settings.digest(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    fs.write_text(uris.join(folder, f"{result.stage}.json"), json.dumps(payload, indent=2, default=str))


def read_stage_records(settings: Settings, run_date: dt.date | str) -> dict[str, dict]:
    folder = run_log_dir(settings, run_date)
    records = {}
    for entry in fs.listdir(folder):
        if entry.endswith(".json") and not entry.startswith("."):
            record = json.loads(fs.read_text(uris.join(folder, entry)))
            records[record["stage"]] = record
    return records
