"""`fusionrank doctor` in one process (local Spark: the executors are the driver's
threads): a sound settings passes, a storage.root that cannot be written and a
missing model folder fail, each check naming itself. The cluster tier runs it on
separate executors (tests/cluster/test_doctor.py)."""

from __future__ import annotations

from fusionrank.interfaces import doctor
from tests.conftest import make_settings


def by_name(checks):
    return {c.name: c for c in checks}


def test_a_sound_deployment_passes(spark, movielens, tmp_path):  # movielens: the inputs doctor checks
    settings = make_settings(tmp_path, storage={"engine": "delta-rs"})
    checks = doctor.run_checks(settings, spark, timeout=120)
    assert [c.name for c in checks if not c.ok] == [], doctor.render(checks)
    names = by_name(checks)
    assert {"storage.root from the driver", "storage.root from the executors", "executor writes visible to the driver",
            "faiss on the executors", "text model on the executors", "Delta engine (delta-rs)"} <= set(names)
    assert not (tmp_path / "warehouse" / doctor.PROBE_DIR).exists()  # the probes clean up
    assert "checks passed" in doctor.render(checks) and "missing" not in doctor.render(checks)


def test_what_is_missing_is_named(spark, movielens, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = make_settings(tmp_path, storage={"engine": "delta-rs", "root": str(blocker / "warehouse")},
                             models={"text": {"path": str(tmp_path / "no-model")}})
    checks = by_name(doctor.run_checks(settings, spark, timeout=120))
    failed = {name for name, c in checks.items() if not c.ok}
    assert failed == {"storage.root from the driver", "storage.root from the executors", "text model on the driver",
                      "text model on the executors"}, doctor.render(list(checks.values()))
    assert str(blocker / "warehouse") in checks["storage.root from the driver"].detail
    assert "no-model is not a folder" in checks["text model on the executors"].detail
    assert "--archives" in checks["text model on the executors"].fix
    assert "missing: storage.root from the driver" in doctor.render(list(checks.values()))
