"""The one place that builds the SparkSession.

Local runs get `local[*]`, Arrow, UTC and micro-second Parquet timestamps (what
Delta readers expect). Under spark-submit (`spark.master: null`) the master and
resources come from the command line and only the settings below are added.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from pyspark.sql import SparkSession

from fusionrank.core import uri as uris
from fusionrank.core.config import Settings
from fusionrank.core.jars import cached_jars

# Settings every fusionrank session needs, whatever the environment.
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Delta stores partition values as strings; keep Spark from guessing types on read.
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    # Delta reads hand Spark an explicit file list (one file per partition and
    # write); listing those on the driver beats a Spark job per read.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "4096",
}

DELTA_SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # A write that replaces an empty partition with no rows still commits a version,
    # as delta-rs does (a rerun of a date always shows in the table's history).
    "spark.databricks.delta.skipRecordingEmptyCommits": "false",
}


def _prepare_local_environment() -> None:
    # Python workers must run the same interpreter (and venv) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def get_session(settings: Settings, stage: str | None = None) -> SparkSession:
    """Return the active session, or build one from `settings` with stage `stage`'s
    Spark conf (`spark.stages.<stage>.conf` over `spark.conf`; None: `spark.conf` alone).

    Under spark-submit, executor resources and driver memory must be known when the
    application is submitted: the DAG passes the same per-stage conf on the command
    line (the session here repeats it, for client mode and local runs)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    cfg = settings.spark
    builder = SparkSession.builder
    # Under spark-submit the submitter's --name (e.g. the DAG's fusionrank-<stage>-<date>)
    # is already in the conf and names the application in the cluster's UI: keep it.
    if cfg.master or not _submitted_name():
        builder = builder.appName(cfg.app_name)
    if cfg.master:
        _prepare_local_environment()
        builder = builder.master(cfg.master)
        if cfg.driver_memory:
            builder = builder.config("spark.driver.memory", cfg.driver_memory)
    for key, value in session_conf(settings, stage).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def session_conf(settings: Settings, stage: str | None = None) -> dict[str, str]:
    """Everything `get_session` sets: the stage's Spark conf (`spark.conf` +
    `spark.stages.<stage>.conf`), then the settings every session needs."""
    cfg = settings.spark
    conf = cfg.conf_for(stage)
    conf.update(REQUIRED_CONF)
    conf["spark.ui.enabled"] = str(cfg.ui_enabled).lower()
    if settings.storage.engine == "delta-spark":
        conf.update(DELTA_SPARK_CONF)
    conf.update(jar_conf(settings, conf))
    if uris.needs_s3a(*_paths(settings)):
        conf.update(uris.s3a_conf_from_env(conf))  # endpoint keys the conf leaves unset
    return conf


def _submitted_name() -> str | None:
    """The application name given to spark-submit (`--name`), if any: spark-submit
    without one names the application after the script, which says less than ours."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the submitter's JVM holds the conf
    name = SparkConf().get("spark.app.name", None)
    return None if name in (None, "", os.path.basename(sys.argv[0] or "")) else name


def jar_conf(settings: Settings, conf: dict[str, str]) -> dict[str, str]:
    """`spark.jars` with the cached jars (`make jars`, see fusionrank.core.jars) a session
    needs: Delta's when storage.engine is delta-spark, S3A's when storage.root or an
    input is on S3 (s3:// or s3a://).
    Nothing when they are not cached (spark-submit --packages or the cluster's image
    may provide them; TableStore says what is missing)."""
    groups = []
    if settings.storage.engine == "delta-spark":
        groups.append("delta")
    if uris.needs_s3a(*_paths(settings)):
        groups.append("s3a")
    jars = cached_jars(*groups) if groups else None
    if not jars:
        return {}
    listed = [j for j in conf.get("spark.jars", "").split(",") if j]
    return {"spark.jars": ",".join(listed + [j for j in jars if j not in listed])}


def _paths(settings: Settings) -> list[str]:
    return [str(settings.storage.root), str(settings.inputs.catalog.path), str(settings.inputs.events.path)]


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the delta-spark classes are on the JVM classpath."""
    try:
        jvm = spark.sparkContext._jvm
        # Jars from spark.jars live in the context class loader, not the system one.
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName("org.apache.spark.sql.delta.DeltaLog", False, loader)
        return True
    except Exception:  # py4j raises a generic Py4JJavaError
        return False


def utc_literal(moment: dt.datetime):
    """A timestamp literal for `moment`; a naive datetime is read as UTC.

    PySpark converts naive datetimes with the driver's local time zone, not the
    session's, so a job's day boundaries would move with the machine it runs on.
    """
    from pyspark.sql import functions as F

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return F.lit(moment)


def task_cpus(spark: SparkSession | None = None) -> int:
    """Cores one task may use (for torch/FAISS thread counts inside UDFs)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None:
        try:
            return max(1, int(ctx.cpus()))
        except Exception:
            return 1
    if spark is not None:
        return max(1, int(spark.conf.get("spark.task.cpus", "1")))
    return 1


def task_gpu() -> int | None:
    """The GPU Spark assigned to the running task (its first `gpu` address, from the
    discovery script), or None outside a task or without a GPU resource."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return None
    try:
        gpus = ctx.resources().get("gpu")
        return int(gpus.addresses[0]) if gpus is not None and gpus.addresses else None
    except Exception:  # an address that is not a device ordinal: let the caller pick
        return None


def gpu_task_profile(spark: SparkSession, settings: Settings, stage: str):
    """The stage-level task resource profile of `stage`'s GPU part
    (`spark.stages.<stage>.gpu_tasks`), or None: not configured, or a local master
    (Spark schedules task profiles on standalone, YARN and Kubernetes only)."""
    entry = settings.spark.stages.get(stage)
    if entry is None or entry.gpu_tasks is None:
        return None
    if spark.sparkContext.master.startswith("local"):
        return None
    return task_profile(entry.gpu_tasks.gpus, entry.gpu_tasks.cpus)


def task_profile(gpus: float, cpus: int):
    """A TaskResourceProfile: `gpus` GPUs and `cpus` cores per task, on the executors
    the application already has (dynamic allocation off)."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus).resource("gpu", gpus)).build
