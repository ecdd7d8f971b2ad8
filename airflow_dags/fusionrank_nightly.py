"""fusionrank_nightly: the nightly pipeline on Spark, one spark-submit task per stage.

    wait_for_catalog ─┐
                      ├─> clean_catalog -> clean_events -> encode_items -> build_index
    wait_for_events ──┘       -> build_profiles -> rank -> evaluate -> publish

Each stage task runs `jobs/<stage>.py --date {{ ds }} --conf <conf>` with
SparkSubmitOperator. `publish` is the quality gate: the night becomes the
consumers' current snapshot only if its metrics pass (see fusionrank.publish).

Nothing about the deployment is written here. Airflow Variables (or, per run, the
DAG params without the `fusionrank_` prefix) say where things are; see README,
"Operations":

  read when a task runs (templated):
    fusionrank_conf           environment config as the Spark driver sees it (required)
    fusionrank_project_dir    folder holding jobs/ (required)
    fusionrank_py_files       --py-files, e.g. <dir>/dist/fusionrank.zip (default: none)
    fusionrank_catalog_ready  path the catalog sensor waits for, may use {{ ds }}
    fusionrank_events_ready   path the events sensor waits for, e.g. .../event_date={{ ds }}/_SUCCESS
                              (default for both: the input path in the config)
  read when the DAG file is parsed:
    fusionrank_spark_conn_id  Spark connection (default spark_default)
    fusionrank_gpu_pool       pool that bounds concurrent runs of the GPU stages (default fusionrank_gpu)
    fusionrank_stage_conf     JSON {stage: {spark property: value}}: each stage task's spark-submit
                              --conf, as `fusionrank config stage-conf --conf <cluster config>` prints
                              it (spark.conf + spark.stages.<stage>.conf); executor resources and
                              driver memory must be known at submit time. A stage whose conf asks
                              for GPUs (spark.executor/task.resource.gpu.amount > 0) runs in the GPU
                              pool. Unset: no per-stage conf, and encode_items alone in the pool.
    fusionrank_start_date     first run date, YYYY-MM-DD (default 2024-01-01)
    fusionrank_catchup        "true": the scheduler fills in missed dates (default false)
    fusionrank_retry_delay_seconds  first retry delay, doubled on each retry (default 300)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Param, Variable
from airflow.timetables.interval import CronDataIntervalTimetable

log = logging.getLogger("fusionrank.airflow")

DAG_ID = "fusionrank_nightly"
VARIABLE_PREFIX = "fusionrank_"
# pipeline.ORDER, written out so the DAG file parses without the library installed.
STAGES = ["clean_catalog", "clean_events", "encode_items", "build_index", "build_profiles", "rank", "evaluate",
          "publish"]
# Per-try limits: a hung Spark job fails and is retried instead of blocking the night.
EXECUTION_TIMEOUT = {
    "clean_catalog": dt.timedelta(hours=1),
    "clean_events": dt.timedelta(hours=2),
    "encode_items": dt.timedelta(hours=4),
    "build_index": dt.timedelta(hours=2),
    "build_profiles": dt.timedelta(hours=2),
    "rank": dt.timedelta(hours=3),
    "evaluate": dt.timedelta(hours=1),
    "publish": dt.timedelta(minutes=30),
}
# The gate's verdict does not change on a retry; one retry covers a transient failure.
RETRIES = {"publish": 1}
DEFAULT_RETRIES = 2
SENSOR_TIMEOUT = dt.timedelta(hours=8)
SENSOR_POKE_INTERVAL = dt.timedelta(minutes=5)
_UNSET = object()
# Stages the stage-conf Variable may name (the export also lists the weekly stage).
CONF_STAGES = STAGES + ["tune_text_encoder"]
GPU_AMOUNT_KEYS = ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
                   "spark.driver.resource.gpu.amount")


def _parse_time(name: str, default: str) -> str:
    """A deployment Variable read when the DAG file is parsed (pools and connections
    cannot be templated); environment variables AIRFLOW_VAR_<NAME> work too."""
    return str(Variable.get(VARIABLE_PREFIX + name, default=default))


def stage_conf() -> dict[str, dict[str, str]] | None:
    """The parse-time Variable fusionrank_stage_conf: {stage: {property: value}}
    (None when it is not set)."""
    text = _parse_time("stage_conf", "")
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{DAG_ID}: Variable {VARIABLE_PREFIX}stage_conf is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(c, dict) for c in value.values()):
        raise ValueError(f"{DAG_ID}: Variable {VARIABLE_PREFIX}stage_conf must be a JSON object of "
                         "{stage: {spark property: value}} (fusionrank config stage-conf prints it)")
    unknown = sorted(set(value) - set(CONF_STAGES))
    if unknown:
        raise ValueError(f"{DAG_ID}: Variable {VARIABLE_PREFIX}stage_conf names unknown stage(s) {unknown}; "
                         f"stages: {CONF_STAGES}")
    return {stage: {str(k): str(v) for k, v in conf.items()} for stage, conf in value.items()}


def uses_gpu(conf: dict[str, str]) -> bool:
    """A stage conf that asks its driver, executors or tasks for a GPU."""
    return any(float(conf.get(key) or 0) > 0 for key in GPU_AMOUNT_KEYS)


def fusionrank_setting(params: dict, name: str, default: Any = _UNSET) -> Any:
    """Jinja macro: the run's param `name`, else Variable `fusionrank_<name>`, else `default`."""
    value = (params or {}).get(name)
    if value in (None, ""):
        value = Variable.get(VARIABLE_PREFIX + name, default=None)
    if value in (None, ""):
        if default is _UNSET:
            raise ValueError(
                f"{DAG_ID}: set the Airflow Variable {VARIABLE_PREFIX}{name} (or the DAG param {name!r} of the run)"
            )
        value = default
    return value


def inputs_ready(source: str, path: str, conf: str) -> bool:
    """Sensor poke: is the raw `source` (catalog or events) there?

    `path` is the templated `<source>_ready` setting; when it is empty the input
    path from the fusionrank config is checked instead.
    """
    if not path:
        from fusionrank.core.config import load_config

        path = str(getattr(load_config(conf).inputs, source).path)
    if "://" in path and not path.startswith("file://"):
        # The pipeline's own filesystem layer (pyarrow; credentials and endpoint from the
        # environment, as the stages take them): no Airflow provider per store needed.
        from fusionrank.core.uri import name as uri_name
        from fusionrank.storage import fs

        ready = fs.is_dir(path) or (fs.is_file(path) and (fs.size(path) > 0 or uri_name(path) == "_SUCCESS"))
    else:
        local = path.removeprefix("file://")
        # An empty file is a write in progress, except for an empty `_SUCCESS` marker.
        ready = os.path.isdir(local) or (
            os.path.isfile(local) and (os.path.getsize(local) > 0 or os.path.basename(local) == "_SUCCESS"))
    log.info("%s input %s: %s", source, path, "ready" if ready else "not there yet")
    return ready


def log_failure(context: dict) -> None:
    """on_failure_callback: one line an on-call engineer can grep for."""
    ti = context["ti"]
    log.error(
        "%s: stage %s failed for run date %s (try %s, run %s): %s",
        DAG_ID, ti.task_id, context.get("ds"), ti.try_number, context.get("run_id"), context.get("exception"),
    )


def _setting(name: str, default: str | None = None) -> str:
    args = f"params, '{name}'" + ("" if default is None else f", {default!r}")
    return "{{ fusionrank_setting(" + args + ") }}"


def build_dag() -> DAG:
    retry_delay = dt.timedelta(seconds=float(_parse_time("retry_delay_seconds", "300")))
    default_args = {
        "owner": "fusionrank",
        "retries": DEFAULT_RETRIES,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": max(retry_delay, dt.timedelta(hours=1)),
        "on_failure_callback": log_failure,
    }
    dag = DAG(
        dag_id=DAG_ID,
        description="fusionrank nightly: clean, encode, index, profile, rank, evaluate, publish",
        # Data interval [D, D+1) UTC: the run for date D ({{ ds }}) starts once D is over.
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=dt.datetime.fromisoformat(_parse_time("start_date", "2024-01-01")).replace(tzinfo=dt.timezone.utc),
        catchup=_parse_time("catchup", "false").lower() == "true",
        max_active_runs=1,  # stages of two dates must not interleave on the same tables
        default_args=default_args,
        params={
            "conf": Param(None, type=["null", "string"], description="overrides Variable fusionrank_conf"),
            "project_dir": Param(None, type=["null", "string"], description="overrides fusionrank_project_dir"),
            "py_files": Param(None, type=["null", "string"], description="overrides fusionrank_py_files"),
            "catalog_ready": Param(None, type=["null", "string"], description="overrides fusionrank_catalog_ready"),
            "events_ready": Param(None, type=["null", "string"], description="overrides fusionrank_events_ready"),
        },
        user_defined_macros={"fusionrank_setting": fusionrank_setting},
        tags=["fusionrank"],
        doc_md=__doc__,
    )
    conn_id = _parse_time("spark_conn_id", "spark_default")
    gpu_pool = _parse_time("gpu_pool", "fusionrank_gpu")
    confs = stage_conf()
    # Without the Variable the DAG cannot know the resources (they may come from
    # spark-defaults.conf): encode_items, the stage that always wants a GPU, keeps the pool.
    gpu_stages = {"encode_items"} if confs is None else {s for s, c in confs.items() if uses_gpu(c)}
    confs = confs or {}
    conf = _setting("conf")
    with dag:
        sensors = [
            PythonSensor(
                task_id=f"wait_for_{source}",
                python_callable=inputs_ready,
                op_kwargs={"source": source, "path": _setting(f"{source}_ready", ""), "conf": conf},
                mode="reschedule",  # frees the worker slot between pokes
                poke_interval=SENSOR_POKE_INTERVAL,
                timeout=SENSOR_TIMEOUT,
                execution_timeout=dt.timedelta(minutes=10),
            )
            for source in ("catalog", "events")
        ]
        previous = sensors
        for stage in STAGES:
            task = SparkSubmitOperator(
                task_id=stage,
                conn_id=conn_id,
                application=_setting("project_dir") + f"/jobs/{stage}.py",
                application_args=["--date", "{{ ds }}", "--conf", conf],
                py_files=_setting("py_files", ""),
                name=f"fusionrank-{stage}-{{{{ ds }}}}",
                conf=confs.get(stage) or None,
                execution_timeout=EXECUTION_TIMEOUT[stage],
                retries=RETRIES.get(stage, DEFAULT_RETRIES),
                # GPU executors are scarce: the pool bounds how many GPU stages run at once.
                **({"pool": gpu_pool, "pool_slots": 1} if stage in gpu_stages else {}),
            )
            previous >> task
            previous = task
    return dag


dag = build_dag()
