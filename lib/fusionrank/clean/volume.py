"""Feed-volume checks: a cleaning stage's row counts against its previous successful night.

A truncated upstream export is valid row by row, so the quarantine share does not
catch it; comparing volumes does. `check_volume` is pure: the night's counts, the
previous night's and the thresholds in, None (fine) or the message to fail with out.
`previous_counts` finds the previous successful night: the latest run date before
this one whose run record for the stage exists (records are only written on success).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from fusionrank.core import uri as uris
from fusionrank.storage import fs

# The counts compared (those a stage has; the others are skipped).
VOLUME_KEYS = ("raw_rows", "clean_rows", "distinct_items", "distinct_users")
# Comma-separated stage names, or `all`: skip the check for a planned change.
ALLOW_ENV = "FUSIONRANK_ALLOW_VOLUME_CHANGE"


def allowed_by_env(stage: str) -> bool:
    names = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    return "all" in names or stage in names


def previous_counts(runs_dir: str | Path, stage: str, run_date: dt.date | str) -> tuple[str, dict] | None:
    """(date, counts) of the stage's latest run record strictly before `run_date`."""
    runs_dir = str(runs_dir)
    dates = []
    for entry in fs.listdir(runs_dir):
        if not entry.startswith("run_date="):
            continue
        text = entry.split("=", 1)[1]
        if text < str(run_date) and fs.is_file(uris.join(runs_dir, entry, f"{stage}.json")):
            dates.append(text)
    for text in sorted(dates, reverse=True):
        try:
            record = json.loads(fs.read_text(uris.join(runs_dir, f"run_date={text}", f"{stage}.json")))
        except (OSError, ValueError):
            continue  # an unreadable record is no evidence; look further back
        return text, dict(record.get("counts") or {})
    return None


def check_volume(stage: str, current: dict, previous: dict | None, previous_date: str | None,
                 max_drop: float | None, max_growth: float | None) -> str | None:
    """None when every compared count is within the thresholds, else a message that
    names each count out of bounds with both nights' figures."""
    if previous is None or (max_drop is None and max_growth is None):
        return None
    problems = []
    for key in VOLUME_KEYS:
        if key not in current or previous.get(key) is None:
            continue
        now, before = int(current[key]), int(previous[key])
        if before <= 0:
            continue
        change = (now - before) / before
        if max_drop is not None and -change > max_drop:
            problems.append(f"{key} fell from {before} to {now} ({change:+.1%}; "
                            f"cleaning.volume_max_drop_share is {max_drop:.1%})")
        elif max_growth is not None and change > max_growth:
            problems.append(f"{key} grew from {before} to {now} ({change:+.1%}; "
                            f"cleaning.volume_max_growth_share is {max_growth:.1%})")
    if not problems:
        return None
    return (f"{stage}: feed volume changed against the previous successful night {previous_date}: "
            + "; ".join(problems)
            + f". Nothing was written for this night. Is the upstream export truncated or duplicated? "
              f"For a planned change rerun with {ALLOW_ENV}={stage} (or raise the cleaning.volume_* thresholds)")


def distinct_counts(clean, columns: list[str]) -> dict:
    """distinct_items / distinct_users of the clean rows (those of the columns present)."""
    from pyspark.sql import functions as F

    names = {"item_id": "distinct_items", "user_id": "distinct_users"}
    present = [c for c in ("item_id", "user_id") if c in columns]
    if not present:
        return {}
    row = clean.agg(*[F.countDistinct(c).alias(names[c]) for c in present]).first()
    return {names[c]: int(row[names[c]]) for c in present}


def guard(stage: str, counts: dict, runs_dir: Path, run_date, cleaning) -> dict:
    """Raise `check_volume`'s message (as the caller's error type, via ValueError) or
    return what to add to the stage counts: the night compared with, or why not."""
    previous = previous_counts(runs_dir, stage, run_date)
    if previous is None:
        return {"volume_check": "first night (nothing to compare with)"}
    if allowed_by_env(stage):
        return {"volume_check": f"skipped ({ALLOW_ENV})", "volume_previous_run_date": previous[0]}
    problem = check_volume(stage, counts, previous[1], previous[0],
                           cleaning.volume_max_drop_share, cleaning.volume_max_growth_share)
    if problem:
        raise VolumeError(problem)
    return {"volume_check": "ok", "volume_previous_run_date": previous[0]}


class VolumeError(RuntimeError):
    """The feed volume moved beyond the configured share against the previous night."""
