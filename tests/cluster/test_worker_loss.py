"""The delta-spark night on the cluster, with faults: a worker process (and its
executors) SIGKILLed in the middle of encode_items and again in the middle of rank.
Spark reschedules the lost tasks on the other worker (a replacement worker joins, as a
cluster manager would start one), the night completes, and its tables equal the clean
delta-rs night's row for row: one night shows both that the engines agree and that
losing a worker changes nothing."""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from fusionrank.pipeline.registry import ORDER
from tests.cluster.night import assert_no_local_writes, assert_same_tables, deployment, project_files, run_with_worker_loss
from tests.cluster.test_night import check_night

# A Python worker with these loaded is doing the stage's real work (libtorch: encoding;
# faiss: searching).
KILL_WHEN_LOADED = {"encode_items": "libtorch_cpu", "rank": "_swigfaiss"}


def test_a_delta_spark_night_losing_a_worker_in_encode_and_rank_equals_the_clean_delta_rs_night(
        rs_night, cluster, night_inputs, night_store):
    dep = deployment(cluster, night_inputs, "delta_spark", "delta-spark", night_store)
    project = project_files()
    kills, seconds = {}, {}
    for stage in ORDER:
        if stage in KILL_WHEN_LOADED:
            kills[stage] = run_with_worker_loss(dep, stage, KILL_WHEN_LOADED[stage])
            seconds[stage] = kills[stage].stage_s
        else:
            seconds.update(dep.run_night([stage]))
    print(f"\ndelta-spark night with two worker losses: {seconds} (total {sum(seconds.values()):.0f} s)")
    for stage, kill in kills.items():
        print(f"{stage}: worker {kill.worker} killed {kill.after_s} s in, stage took {kill.stage_s} s")
        # The driver saw its executor go and ran the stage to the end without it.
        assert "Lost executor" in kill.stderr or "ExecutorLostFailure" in kill.stderr, kill.stderr[-3000:]
    frames = dep.snapshot()
    check_night(dep, frames)
    assert_no_local_writes(dep, project)
    assert_same_tables(frames, rs_night["frames"], "delta-spark night with two worker losses vs the delta-rs night")
    # Written by delta-spark: its last commit says so (read from the log itself: moto's
    # server does not answer the start-after listing deltalake's history() sends).
    fs, root = dep.filesystem()
    log = f"{root}/recs_user_topk/_delta_log"
    commits = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(log)) if f.path.endswith(".json"))
    with fs.open_input_stream(commits[-1]) as commit:
        actions = [json.loads(line) for line in commit.read().decode().splitlines() if line.strip()]
    info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
    assert "Apache-Spark" in str(info.get("engineInfo", "")), info
