"""Faults on the cluster: a worker process (and its executors) SIGKILLed in the middle
of encode_items and again in the middle of rank. Spark reschedules the lost tasks on
the other worker (a replacement worker joins, as a cluster manager would start one),
the night completes, and its tables equal a clean night's row for row."""

from __future__ import annotations

import pytest

from tests.cluster.night import assert_same_tables, copy_tables, deployment, run_with_worker_loss


@pytest.mark.cluster_full
def test_a_night_survives_losing_a_worker_in_encode_items_and_in_rank(cluster, night_inputs, rs_night, night_store):
    dep = deployment(cluster, night_inputs, "worker_loss", "delta-rs", night_store)
    # The clean night's cleaned inputs (the cleaning stages are not under test here).
    copy_tables(rs_night["dep"], dep, ["catalog_clean", "events_clean", "quarantine"])
    # A Python worker with libtorch loaded is encoding; one with faiss loaded is ranking.
    encode = run_with_worker_loss(dep, "encode_items", "libtorch_cpu")
    dep.run_night(["build_index", "build_profiles"])
    rank = run_with_worker_loss(dep, "rank", "_swigfaiss")
    dep.run_night(["evaluate", "publish"])
    for stage, kill in (("encode_items", encode), ("rank", rank)):
        print(f"\n{stage}: worker {kill.worker} killed {kill.after_s} s in, stage took {kill.stage_s} s")
        # The driver saw its executor go and ran the stage to the end without it.
        assert "Lost executor" in kill.stderr or "ExecutorLostFailure" in kill.stderr, kill.stderr[-3000:]
    assert_same_tables(dep.snapshot(), rs_night["frames"], "night with two worker losses")
