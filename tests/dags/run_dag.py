"""Run `fusionrank_nightly` once with `dag.test()`; called by test_nightly_dag.py.

Airflow reads its settings (AIRFLOW_HOME, the SQLite metadata DB, Variables, the
Spark connection) from the environment when it is first imported, so every run
gets a fresh process with the environment the test prepared.

    python tests/dags/run_dag.py --date 1998-04-22 --out result.json [--run-conf JSON] [--mark-success REGEX]

Writes {"state": <dag run state>, "tasks": {task_id: state}, "tries": {task_id: try_number}}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--date", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-conf", default="{}")
    parser.add_argument("--mark-success", default=None)
    parser.add_argument("--gpu-pool", default="fusionrank_gpu")
    args = parser.parse_args()

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool
    from airflow.utils import db

    db.upgradedb()  # creates the SQLite schema on first use
    # Deployment step: the GPU pool the encoding task waits in.
    Pool.create_or_update_pool(args.gpu_pool, slots=1, description="GPU slots for encode_items",
                               include_deferred=False)
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags["fusionrank_nightly"]
    logical_date = dt.datetime.fromisoformat(args.date).replace(tzinfo=dt.timezone.utc)
    run = dag.test(logical_date=logical_date, run_conf=json.loads(args.run_conf),
                   mark_success_pattern=args.mark_success)
    instances = run.get_task_instances()
    result = {
        "state": str(run.state),
        "tasks": {ti.task_id: str(ti.state) for ti in instances},
        "tries": {ti.task_id: ti.try_number for ti in instances},
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
