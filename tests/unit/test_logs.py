"""Structured logs carry run date, stage and run id."""

from __future__ import annotations

import io
import json
import logging

from fusionrank.core.logs import configure_logging, log_context
from fusionrank.interfaces.progress import StageProgress, format_counts


def test_json_lines_carry_the_run_context():
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    log = logging.getLogger("fusionrank.test")
    with log_context(run_date="2026-11-22", run_id="abc123"):
        with log_context(stage="rank"):
            log.info("ranked %d users", 5)
        log.warning("between stages")
    log.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "ranked 5 users"
    assert (lines[0]["run_date"], lines[0]["stage"], lines[0]["run_id"]) == ("2026-11-22", "rank", "abc123")
    assert lines[1]["level"] == "WARNING" and "stage" not in lines[1] and lines[1]["run_id"] == "abc123"
    assert "run_date" not in lines[2]


def test_text_lines_are_readable_and_tagged():
    stream = io.StringIO()
    configure_logging("text", "INFO", stream=stream)
    with log_context(run_date="2026-11-22", stage="encode_items", run_id="r1"):
        logging.getLogger("fusionrank.pipeline").info("stage encode_items starting")
    line = stream.getvalue().strip()
    assert "[2026-11-22 encode_items r1] fusionrank.pipeline: stage encode_items starting" in line
    configure_logging("text", "WARNING")  # restore the quiet default for later tests


def test_plain_progress_lines_when_not_a_terminal():
    class Result:
        stage, seconds = "clean_events", 12.345
        counts = {"raw_rows": 10, "clean_rows": 8, "quarantined_rows": 2, "quarantine_reasons": {"duplicate event": 2}}

    stream = io.StringIO()
    with StageProgress(spark=None, interactive=False, stream=stream) as progress:
        with progress.stage("clean_events"):
            pass
        progress.done(Result())
    out = stream.getvalue().splitlines()
    assert out[0].split() == ["clean_events", "12.3s", "raw_rows=10,", "clean_rows=8,", "quarantined_rows=2"]
    assert "quarantined: duplicate event (2)" in out[1]
    assert format_counts({"a": 1, "metrics": {"x": 1}}) == "a=1"
