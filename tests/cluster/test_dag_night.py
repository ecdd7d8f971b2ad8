"""The Airflow DAG's night against the standalone cluster: `dag.test()` (in a
subprocess, tests/dags/run_dag.py) runs every stage task, each SparkSubmitOperator
submits `jobs/<stage>.py` with the --py-files zip to the cluster's master through
the Spark connection (the cluster's Spark settings in SPARK_CONF_DIR's
spark-defaults.conf). It reruns the date of the spark-submit night (rs_night) over
its warehouse: every table gets a new version and the same rows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fusionrank.pipeline.registry import ORDER
from tests.cluster.conftest import cluster_env
from tests.cluster.night import TABLES, assert_same_tables
from tests.conftest import ROOT, RUN_DATE
from tests.dags.test_nightly_dag import run_dag


def test_the_dag_night_runs_on_the_cluster(cluster, night_inputs, rs_night):
    dep = rs_night["dep"]  # the same conf and warehouse: a rerun of the date
    tmp = night_inputs["tmp"] / "dag_night"
    (tmp / "airflow").mkdir(parents=True)
    spark_conn = {"conn_type": "spark", "host": cluster.master_url,
                  "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}
    env = {
        **cluster_env(**dep.env),
        # The cluster's Spark settings (driver host, executor memory, jars, object store)
        # as a deployment keeps them: spark-defaults.conf.
        "SPARK_CONF_DIR": str(dep.spark_defaults(tmp / "spark-conf")),
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        "AIRFLOW_CONN_FUSIONRANK_CLUSTER": json.dumps(spark_conn),
        "AIRFLOW_VAR_FUSIONRANK_SPARK_CONN_ID": "fusionrank_cluster",
        "AIRFLOW_VAR_FUSIONRANK_CONF": str(dep.conf),
        "AIRFLOW_VAR_FUSIONRANK_PROJECT_DIR": str(ROOT),
        "AIRFLOW_VAR_FUSIONRANK_PY_FILES": str(dep.zip_path),
        "AIRFLOW_VAR_FUSIONRANK_RETRY_DELAY_SECONDS": "1",
        "AIRFLOW_VAR_FUSIONRANK_START_DATE": "1998-01-01",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        # The Airflow worker's own fusionrank (its sensors read the conf and the inputs);
        # the stages run the --py-files zip.
        "PYTHONPATH": str(ROOT / "lib"),
    }
    apps_before = {a["id"] for a in cluster.state()["completedapps"]}
    result = run_dag({"tmp": tmp, "env": env}, "cluster")
    assert result["state"] == "success", result["log"][-6000:]
    assert {t: s for t, s in result["tasks"].items() if t in ORDER} == {t: "success" for t in ORDER}
    assert all(result["tries"][t] == 1 for t in ORDER), result["tries"]  # no retry hid a failure
    # Every stage was an application of the cluster's master.
    apps = [a for a in cluster.state()["completedapps"] if a["id"] not in apps_before]
    assert len(apps) == len(ORDER) and all(a["state"] == "FINISHED" for a in apps), apps
    # Named as the DAG submitted them (spark-submit --name), not overridden by the job.
    assert sorted(a["name"] for a in apps) == sorted(f"fusionrank-{stage}-{RUN_DATE}" for stage in ORDER), apps
    assert_same_tables(dep.snapshot(), rs_night["frames"], "DAG rerun vs the spark-submit night")
    after = dep.versions()
    assert all(after[name] > rs_night["versions"][name] for name in TABLES), (rs_night["versions"], after)
