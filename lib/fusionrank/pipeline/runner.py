"""Running stages: one (`run_stage`), all in order (`run_all`), or one under
spark-submit (`job_main`, what `jobs/<stage>.py` calls). Every run is keyed on its
run date, logged with (run_date, stage, run_id) and recorded (pipeline.runlog)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

from pyspark.sql import SparkSession

from fusionrank.core import privacy
from fusionrank.core.config import Settings, load_config
from fusionrank.core.context import RunContext, make_context
from fusionrank.core.errors import StageError
from fusionrank.core.logs import configure_logging, log_context
from fusionrank.core.spark import get_session
from fusionrank.interfaces.progress import format_counts
from fusionrank.pipeline.registry import ORDER, STAGES
from fusionrank.pipeline.runlog import StageResult, record_stage
from fusionrank.vectors.encoders import text_model_path

log = logging.getLogger("fusionrank.pipeline")


def run_stage(name: str, settings: Settings, run_date: dt.date, spark: SparkSession | None = None,
              ctx: RunContext | None = None) -> StageResult:
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    ctx = ctx or make_context(settings, run_date, spark, stage=name)
    with log_context(run_date=run_date, stage=name, run_id=ctx.run_id):
        ctx.describe(name)
        log.info("stage %s starting (config digest %s)", name, settings.digest())
        started = time.perf_counter()
        try:
            counts = STAGES[name].run(ctx)
        except Exception as exc:
            log.error("stage %s failed after %.1fs: %s", name, time.perf_counter() - started, exc)
            raise
        elapsed = time.perf_counter() - started
        log.info("stage %s done in %.1fs: %s", name, elapsed, counts)
    result = StageResult(name, run_date, elapsed, counts)
    record_stage(settings, result, ctx.run_id)
    return result


def preflight(settings: Settings, stages: list[str]) -> None:
    """Fail before the first stage on what a later one would fail on: the text model
    folder and the pseudonymisation salt."""
    if "encode_items" in stages:
        text_model_path(settings)
    if {"build_profiles", "rank", "evaluate"} & set(stages):
        privacy.user_salt(settings)


def run_all(settings: Settings, run_date: dt.date, spark: SparkSession | None = None,
            stages: list[str] | None = None, on_stage: Callable[[StageResult], None] | None = None,
            stage_scope: Callable[[str], ContextManager] | None = None) -> list[StageResult]:
    """Run `stages` (default: all, in order) for one date; `stage_scope(name)` wraps
    each stage (progress display), `on_stage(result)` sees each result."""
    preflight(settings, stages or ORDER)
    stages = stages or ORDER
    if spark is None:
        spark = session_for(settings, stages)
    ctx = make_context(settings, run_date, spark)
    log.info("run %s for %s: config digest %s from %s", ctx.run_id, run_date, settings.digest(),
             " + ".join(settings.source_files))
    results = []
    for name in stages:
        with (stage_scope(name) if stage_scope else nullcontext()):
            result = run_stage(name, settings, run_date, ctx=ctx)
        results.append(result)
        if on_stage:
            on_stage(result)
    return results


def session_for(settings: Settings, stages: list[str]) -> SparkSession:
    """The session for running `stages` in one process: a single stage gets its own
    Spark conf (`spark.stages`); several share `spark.conf`, and a stage conf they
    cannot get is named (run them one by one, or per task as the DAG does)."""
    if len(stages) == 1:
        return get_session(settings, stages[0])
    skipped = [s for s in stages if settings.spark.conf_for(s) != settings.spark.conf_for(None)]
    if skipped and SparkSession.getActiveSession() is None:
        log.warning("one session runs %s: the spark.stages conf of %s is not applied (run a stage alone with "
                    "`fusionrank stage`, or one spark-submit per stage as the Airflow DAG does)",
                    ", ".join(stages), ", ".join(skipped))
    return get_session(settings)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {text!r}") from None


def job_main(stage: Callable[[RunContext], dict], argv: list[str] | None = None) -> int:
    """Entry point of `jobs/<stage>.py` under spark-submit: `stage` is the stage
    function itself (one hop from the job file to its logic)."""
    name = stage.__name__
    if STAGES.get(name) is None or STAGES[name].run is not stage:
        raise StageError(f"{name} is not a registered stage; stages: {', '.join(ORDER)}")
    parser = argparse.ArgumentParser(prog=f"jobs/{name}.py", description=f"fusionrank stage {name}")
    parser.add_argument("--conf", required=True)
    parser.add_argument("--base", help="base layer (default: the project's conf/base.yaml)")
    parser.add_argument("--date", required=True, type=_date)
    args = parser.parse_args(argv)
    settings = load_config(args.conf, base=args.base)
    configure_logging(settings.logging.format, settings.logging.level)
    result = run_stage(name, settings, args.date)
    print(f"{result.stage} {result.run_date} {result.seconds:.1f}s {format_counts(result.counts)}", flush=True)
    return 0
