"""The object store goes down in the middle of a commit: the stage fails (with a
message, not a hang), the table's last version is still there and readable, and once
the store is back the rerun completes with the same rows. Only with the night on the
object store."""

from __future__ import annotations

import threading
import time

import pytest
from deltalake import DeltaTable

from tests.cluster.night import deployment

OUTAGE_CAP_S = 240


def test_a_commit_during_an_outage_fails_cleanly_and_the_rerun_completes(cluster, night_inputs, night_store,
                                                                        store_server):
    if night_store is None:
        pytest.skip("the cluster nights are on a local folder (night_store): no object store to take down")
    dep = deployment(cluster, night_inputs, "outage", "delta-rs", night_store)
    dep.run_night(["clean_catalog"])
    table = DeltaTable(dep.table_uri("catalog_clean"), storage_options=dep.storage_options())
    before = (table.version(), table.to_pyarrow_table().sort_by("item_id"))

    # The rerun's commit to catalog_clean's log (its data files are written by then).
    marker = f"/{night_store.bucket}/outage/warehouse/catalog_clean/_delta_log/"
    store_server.trip_on = lambda method, path: method in ("PUT", "POST") and path.startswith(marker)
    result = {}
    thread = threading.Thread(target=lambda: result.update(proc=dep.run_stage("clean_catalog", check=False)))
    started = time.perf_counter()
    thread.start()
    try:
        thread.join(OUTAGE_CAP_S)
    finally:
        store_server.trip_on = None
        store_server.restart()  # the store is back
    back_at = time.time()
    assert store_server.tripped.is_set(), "the stage never committed to catalog_clean's log"
    assert not thread.is_alive(), f"clean_catalog still running {OUTAGE_CAP_S} s into the outage"
    proc = result["proc"]
    assert proc.returncode != 0, proc.stdout[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    print(f"\nclean_catalog ran {time.perf_counter() - started:.0f} s; the store was down "
          f"{back_at - store_server.tripped_at:.0f} s from its commit on; the stage said: "
          f"{(errors or ['?'])[-1][:300]}")

    table = DeltaTable(dep.table_uri("catalog_clean"), storage_options=dep.storage_options())
    assert table.version() == before[0]  # the failed commit left no version
    assert table.to_pyarrow_table().sort_by("item_id").equals(before[1])

    dep.run_night(["clean_catalog"])  # the rerun, with the store back
    table = DeltaTable(dep.table_uri("catalog_clean"), storage_options=dep.storage_options())
    assert table.version() == before[0] + 1
    assert table.to_pyarrow_table().sort_by("item_id").equals(before[1])
