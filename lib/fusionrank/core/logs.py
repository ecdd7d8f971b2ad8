"""Logging: readable text by default, one JSON object per line when configured.

Every record carries the run date, stage and run id of the work in progress
(`log_context`), so a log line found at 3 a.m. says which night and stage it
belongs to.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys

_CONTEXT: contextvars.ContextVar[dict] = contextvars.ContextVar("fusionrank_log_context", default={})
CONTEXT_FIELDS = ("run_date", "stage", "run_id")


@contextlib.contextmanager
def log_context(**fields):
    """Attach fields (run_date, stage, run_id) to every record logged inside."""
    merged = {**_CONTEXT.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _CONTEXT.get()
        for field in CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, context.get(field, "-"))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, "-")
            if value != "-":
                payload[field] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(run_date)s %(stage)s %(run_id)s] %(name)s: %(message)s"


def configure_logging(fmt: str = "text", level: str | int = "WARNING", stream=None) -> logging.Handler:
    """Install one handler on the `fusionrank` logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logger = logging.getLogger("fusionrank")
    for old in list(logger.handlers):
        if getattr(old, "_fusionrank", False):
            logger.removeHandler(old)
    handler._fusionrank = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
    logger.propagate = False
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return handler
