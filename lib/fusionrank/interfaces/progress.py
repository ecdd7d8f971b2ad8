"""Progress you can watch: one line per stage, with a live bar of Spark tasks
while the stage runs (on a terminal), plain lines otherwise."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from pyspark.sql import SparkSession


def spark_task_progress(spark: SparkSession, group: str) -> tuple[int, int]:
    """(tasks completed, tasks known) over every job of a Spark job group so far."""
    tracker = spark.sparkContext.statusTracker()
    done = total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        if job is None:
            continue
        for stage_id in job.stageIds:
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                total += stage.numTasks
                done += stage.numCompletedTasks
    return done, total


def format_counts(counts: dict) -> str:
    shown = {k: v for k, v in counts.items() if k not in ("metrics", "quarantine_reasons") and not isinstance(v, dict)}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


class StageProgress:
    """Use `with progress.stage(name):` around each stage, then `done(result)`."""

    def __init__(self, spark: SparkSession, interactive: bool | None = None, stream=None):
        self.spark = spark
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._progress = None

    def __enter__(self) -> "StageProgress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("tasks"), TimeElapsedColumn(), console=Console(file=self.stream), transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str):
        if self._progress is None:
            yield
            return
        task = self._progress.add_task(name, total=None)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.5):
                try:
                    done, total = spark_task_progress(self.spark, f"fusionrank:{name}")
                except Exception:  # the tracker is best effort; never fail a stage for it
                    continue
                self._progress.update(task, completed=done, total=total or None)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
            self._progress.remove_task(task)

    def done(self, result) -> None:
        self.print(f"  {result.stage:<15} {result.seconds:7.1f}s  {format_counts(result.counts)}")
        reasons = result.counts.get("quarantine_reasons")
        if reasons:
            self.print("  " + " " * 25 + "quarantined: " + ", ".join(f"{k} ({v})" for k, v in reasons.items()))
