"""`fusionrank doctor` on the cluster, spark-submitted as the stages are (the same zip,
conf and jars): a sound deployment passes every check from the driver and from both
executors; a broken one fails and names what is missing."""

from __future__ import annotations

import json

from tests.cluster.conftest import submit
from tests.cluster.night import deployment
from tests.conftest import ROOT


def doctor(dep, *extra: str):
    kwargs = dep.submit_kwargs()
    return submit(dep.cluster, ROOT / "jobs" / "doctor.py", ["--conf", str(dep.conf), *extra], check=False,
                  timeout=300, **kwargs)


def test_doctor_passes_on_the_cluster(cluster, night_inputs, night_store):
    dep = deployment(cluster, night_inputs, "doctor_ok", "delta-spark", night_store)
    proc = doctor(dep)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    for name in ("storage.root from the driver", "Delta engine (delta-spark)", "storage.root from the executors",
                 "text model on the executors", "faiss on the executors", "executor writes visible to the driver",
                 "fusionrank on the executors"):
        assert f"ok    {name}:" in out, out
    # The probe ran on both workers' executors, with fusionrank from the --py-files zip.
    assert "2 executor folder(s)" in out, out
    assert "fusionrank.zip" in out, out
    assert "checks passed" in out and "missing" not in out


def test_doctor_names_what_is_missing(cluster, night_inputs, night_store):
    dep = deployment(cluster, night_inputs, "doctor_broken", "delta-spark", night_store)
    dep.jars = []  # delta-spark without its jars
    overlay = json.loads(dep.conf.read_text())
    overlay["models"]["text"]["path"] = str(night_inputs["tmp"] / "no-such-model")
    dep.conf.write_text(json.dumps(overlay))
    proc = doctor(dep, "--json")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    checks = {c["name"]: c for c in json.loads(proc.stdout[proc.stdout.index("["):])}
    failed = {name for name, c in checks.items() if not c["ok"]}
    assert failed == {"Delta engine (delta-spark)", "text model on the driver", "text model on the executors"}, checks
    assert "org.apache.spark.sql.delta.DeltaLog" in checks["Delta engine (delta-spark)"]["detail"]
    assert "--packages io.delta:delta-spark_2.13" in checks["Delta engine (delta-spark)"]["fix"]
    assert "no-such-model is not a folder" in checks["text model on the executors"]["detail"]
    assert checks["storage.root from the executors"]["ok"] and checks["faiss on the executors"]["ok"]
