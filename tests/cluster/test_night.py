"""The whole nightly pipeline on the standalone cluster (a master and two worker
processes), one spark-submit of `jobs/<stage>.py` per stage with the `--py-files`
zip and the conf shipped with `--files`, with the delta-rs engine. The rerun of the date is the
Airflow DAG's night (test_dag_night.py); the delta-spark night, which also loses a
worker twice, is test_worker_loss.py. Tables are read back with `deltalake`, as
consumers read them."""

from __future__ import annotations

from deltalake import DeltaTable

from fusionrank.pipeline.registry import ORDER
from tests.cluster.night import ITEMS, assert_no_local_writes
from tests.conftest import RUN_DATE


def check_night(dep, frames: dict) -> None:
    """The night's tables hold what the slice implies."""
    cat, quarantine = frames["catalog_clean"], frames["quarantine"]
    assert len(cat) + (quarantine["stage"] == "clean_catalog").sum() == ITEMS
    assert len(cat) == ITEMS and cat["item_id"].is_unique
    emb = frames["item_embeddings"]
    assert sorted(emb["item_id"]) == sorted(cat["item_id"]) and emb["rec_vec"].notna().all()
    profiles, recs = frames["user_profiles"], frames["recs_user_topk"]
    assert len(profiles) > 50 and profiles["user_id"].is_unique
    assert set(profiles["user_id"]) <= set(recs["user_id"])
    per_user = recs.groupby("user_id").size()
    assert per_user.max() == 10 and per_user.min() >= 1
    assert set(recs["item_id"]) <= set(cat["item_id"])
    assert {str(d) for d in recs["run_date"]} == {RUN_DATE}
    similar = frames["recs_item_similar"]
    assert similar.groupby("item_id").size().max() == 10 and set(similar["item_id"]) <= set(cat["item_id"])
    metrics = frames["metrics"]
    assert (metrics["metric"] == "users_evaluated").any(), metrics
    published = DeltaTable(dep.table_uri("published"), storage_options=dep.storage_options()).to_pandas()
    # One decision per night of the date (the DAG night reruns it over this warehouse).
    assert set(published["status"]) == {"published"} and {str(d) for d in published["run_date"]} == {RUN_DATE}


def test_a_delta_rs_night_on_the_cluster(rs_night, cluster):
    check_night(rs_night["dep"], rs_night["frames"])
    assert_no_local_writes(rs_night["dep"], rs_night["project_before"])
    apps = [a for a in cluster.state()["completedapps"] if a["name"].startswith("fusionrank")]
    assert len(apps) >= len(ORDER) and all(a["state"] == "FINISHED" for a in apps)
