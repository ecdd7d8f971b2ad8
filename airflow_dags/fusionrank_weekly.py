"""fusionrank_weekly: the weekly model-tuning stage, one spark-submit task.

    tune_text_encoder   (Sunday 03:00 UTC, for the date before)

Runs `jobs/tune_text_encoder.py --date {{ ds }} --conf <conf>` (fusionrank.tuning):
it tunes the text encoder on the shop's own query -> click and co-engagement pairs
and accepts it only if it beats the base on a validation slice; with
`models.text.use_tuned: true` the next nightly encode_items re-embeds with it.
The same Airflow Variables as fusionrank_nightly say where things are; the GPU pool
bounds it like encode_items.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusionrank_nightly import DEFAULT_RETRIES, _parse_time, _setting, fusionrank_setting, log_failure  # noqa: E402

DAG_ID = "fusionrank_weekly"
STAGES = ["tune_text_encoder"]
EXECUTION_TIMEOUT = {"tune_text_encoder": dt.timedelta(hours=3)}


def build_dag() -> DAG:
    retry_delay = dt.timedelta(seconds=float(_parse_time("retry_delay_seconds", "300")))
    dag = DAG(
        dag_id=DAG_ID,
        description="fusionrank weekly: tune the text encoder on the shop's own pairs",
        schedule=CronDataIntervalTimetable("0 3 * * 0", timezone="UTC"),
        start_date=dt.datetime.fromisoformat(_parse_time("start_date", "2024-01-01")).replace(tzinfo=dt.timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "fusionrank", "retries": DEFAULT_RETRIES, "retry_delay": retry_delay,
                      "on_failure_callback": log_failure},
        params={
            "conf": Param(None, type=["null", "string"], description="overrides Variable fusionrank_conf"),
            "project_dir": Param(None, type=["null", "string"], description="overrides fusionrank_project_dir"),
            "py_files": Param(None, type=["null", "string"], description="overrides fusionrank_py_files"),
        },
        user_defined_macros={"fusionrank_setting": fusionrank_setting},
        tags=["fusionrank"],
        doc_md=__doc__,
    )
    with dag:
        for stage in STAGES:
            SparkSubmitOperator(
                task_id=stage,
                conn_id=_parse_time("spark_conn_id", "spark_default"),
                application=_setting("project_dir") + f"/jobs/{stage}.py",
                application_args=["--date", "{{ ds }}", "--conf", _setting("conf")],
                py_files=_setting("py_files", ""),
                name=f"fusionrank-{stage}-{{{{ ds }}}}",
                execution_timeout=EXECUTION_TIMEOUT[stage],
                pool=_parse_time("gpu_pool", "fusionrank_gpu"), pool_slots=1,
            )
    return dag


dag = build_dag()
