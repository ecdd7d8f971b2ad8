"""The shared night (tests/pipeline/conftest.py): the whole pipeline on a MovieLens slice,
run through the CLI, and its rerun.

Every output table is read back with the `deltalake` package, as a downstream
consumer would, and checked against the contract in DESIGN.md.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.interfaces import cli
from fusionrank.core.config import load_config
from fusionrank.core.catalog import CONTRACT_COLUMNS
from tests.conftest import ROOT, RUN_DATE
from tests.pipeline.conftest import TABLES

pytestmark = pytest.mark.integration

def test_every_table_is_delta_with_the_contract_columns(night):
    for name, columns in CONTRACT_COLUMNS.items():
        table = DeltaTable(str(night["root"] / name))
        fields = [f.name for f in table.schema().fields]
        assert set(columns) <= set(fields), f"{name} lacks {set(columns) - set(fields)}"
        if name == "query_topk":  # MovieLens has no search events: the night's partition is empty
            assert len(table.to_pandas()) == 0
            continue
        assert len(night["first"][name]) > 0, f"{name} is empty"
    assert DeltaTable(str(night["root"] / "recs_user_topk")).metadata().partition_columns == ["run_date"]


def test_counts_add_up_and_nothing_is_lost(night):
    stats = night["first_stats"]
    for stage in ("clean_catalog", "clean_events"):
        s = stats[stage]
        assert s["raw_rows"] == s["clean_rows"] + s["quarantined_rows"]
    assert len(night["first"]["catalog_clean"]) == stats["clean_catalog"]["clean_rows"]
    assert len(night["first"]["events_clean"]) == stats["clean_events"]["clean_rows"]


def test_embeddings_are_unit_vectors_of_one_model(night):
    emb = night["first"]["item_embeddings"]
    text = np.array([np.asarray(v) for v in emb["text_vec"]])
    assert text.shape == (len(night["first"]["catalog_clean"]), 384)  # all-MiniLM-L6-v2
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    fused = np.array([np.asarray(v) for v in emb["fused_vec"]])
    rank = load_config(ROOT / "conf" / "local.yaml").behaviour.rank
    assert fused.shape == (len(emb), 384 + rank)  # text ⊕ behaviour
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-4)
    # Items someone interacted with in training carry a behaviour vector; the rest
    # are text only (zero behaviour block) and still get a vector.
    has_behaviour = emb["behaviour_vec"].notna()
    assert has_behaviour.mean() > 0.9
    assert np.allclose(fused[~has_behaviour.to_numpy(), 384:], 0.0)
    assert emb["model_version"].nunique() == 1
    assert emb["image_vec"].isna().all()  # no image model in the foundation
    manifest = json.loads((night["root"] / "index" / f"run_date={RUN_DATE}" / "manifest.json").read_text())
    # the index holds the ranking space: behaviour ⊕ weighted fused vector
    assert manifest["count"] == len(emb) and manifest["dim"] == rank + 384 + rank
    ranking_space = np.array([np.asarray(v) for v in emb["rec_vec"]])
    np.testing.assert_allclose(ranking_space[:, rank:] / np.linalg.norm(ranking_space[:, rank:], axis=1)[:, None],
                               fused, atol=1e-5)
    assert manifest["model_version"] == emb["model_version"].iloc[0]
    assert manifest["self_check"]["recall_at_10"] >= 0.9


def test_recommendations_are_unseen_ranked_and_explained(night):
    recs = night["first"]["recs_user_topk"]
    events = night["first"]["events_clean"]
    holdout_start = pd.Timestamp(RUN_DATE, tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta(days=14)
    train = events[pd.to_datetime(events["event_ts"], utc=True) < holdout_start]
    seen = set(zip(train["user_id"], train["item_id"]))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"]))
    assert not recs.duplicated(["user_id", "rank"]).any()
    assert not recs.duplicated(["user_id", "item_id"]).any()
    for _, group in recs.groupby("user_id"):
        group = group.sort_values("rank")
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert len(group) <= 10
        assert (np.diff(group["score"].to_numpy()) <= 1e-6).all()
    profiles = night["first"]["user_profiles"].set_index("user_id")
    history = {u: set(h) for u, h in profiles["history_item_ids"].items()}
    explained = recs[recs["reason_item_id"].notna()]
    assert len(explained) == len(recs)
    assert all(r in history[u] for u, r in zip(explained["user_id"], explained["reason_item_id"]))
    assert recs["reason"].str.startswith("similar to ").all()
    similar = night["first"]["recs_item_similar"]
    assert not (similar["item_id"] == similar["similar_item_id"]).any()


def test_metrics_table_has_fusionrank_beside_popularity(night):
    metrics = night["first"]["metrics"]
    for name in ("precision", "recall", "ndcg", "map", "coverage"):
        row = metrics[(metrics["metric"] == name) & (metrics["k"] == 10)]
        assert len(row) == 1, name
        assert 0.0 <= row["value"].iloc[0] <= 1.0 and 0.0 <= row["baseline"].iloc[0] <= 1.0
    users = metrics[metrics["metric"] == "users_evaluated"]["value"].iloc[0]
    assert users > 0
    assert (metrics["split"] == "time_holdout_14d").all()


def test_rerun_of_a_date_replaces_it_exactly(night, rerun):
    # Every output table of the contract is compared, and the index artifact too.
    assert set(CONTRACT_COLUMNS) <= set(TABLES)
    manifest = json.loads((night["root"] / "index" / f"run_date={RUN_DATE}" / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "created_at"} == \
        {k: v for k, v in night["manifest"].items() if k != "created_at"}
    for name in TABLES:
        pd.testing.assert_frame_equal(night["first"][name], rerun["second"][name], check_exact=True, obj=name)
    # The rerun committed new versions (it really ran) yet duplicated nothing.
    for name, version in night["versions"].items():
        assert DeltaTable(str(night["root"] / name)).version() > version, name
    assert rerun["second_stats"]["encode_items"]["encoded"] == 0
    assert rerun["second_stats"]["encode_items"]["carried_over"] == night["first_stats"]["encode_items"]["items"]


def test_run_ends_with_the_night_report_and_stage_records(night):
    report = night["root"] / "reports" / f"run_date={RUN_DATE}" / "report.html"
    assert report.exists()
    html = report.read_text()
    assert "build_index" in html and "data:image/png;base64," in html
    records = sorted(p.stem for p in (night["root"] / "_runs" / f"run_date={RUN_DATE}").glob("*.json"))
    from fusionrank.pipeline import ORDER

    assert records == sorted(ORDER)  # every stage of the run, publish included


def test_older_versions_stay_readable(night, rerun):
    recs = DeltaTable(str(night["root"] / "recs_user_topk"), version=night["versions"]["recs_user_topk"]).to_pandas()
    assert len(recs) == len(night["first"]["recs_user_topk"])


def test_show_commands_answer_from_the_run(night, capsys):
    recs = night["first"]["recs_user_topk"]
    user = sorted(recs["user_id"].unique())[0]
    assert cli.main(["show", "user", user, "--conf", night["conf"], "--date", RUN_DATE, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    mine = recs[recs["user_id"] == user].sort_values("rank")
    assert [r["item_id"] for r in shown["recommendations"]] == list(mine["item_id"])
    assert cli.main(["show", "item", mine["item_id"].iloc[0], "--conf", night["conf"]]) == 0  # latest date
    assert "Similar items" in capsys.readouterr().out
    assert cli.main(["show", "tables", "--conf", night["conf"]]) == 0
    assert "recs_user_topk" in capsys.readouterr().out
    assert cli.main(["show", "user", "no-such-user", "--conf", night["conf"], "--date", RUN_DATE]) == 1
    assert "no-such-user" in capsys.readouterr().err


def test_pseudonymised_user_ids_join_through_evaluation(night, spark, tmp_path, monkeypatch):
    """privacy.pseudonymise_user_ids: user_profiles and recs_user_topk carry
    HMAC-SHA256 ids, and evaluation (which hashes the held-out users the same way)
    gives exactly the metrics of the plain run."""
    import datetime as dt

    from fusionrank.pipeline import run_all
    from fusionrank.core.privacy import pseudonymise_id
    from tests.conftest import make_settings

    root = tmp_path / "warehouse"
    shutil.copytree(night["root"], root)  # this test changes the tables: a private copy
    salt = "a-test-salt-of-enough-length"
    monkeypatch.setenv("FUSIONRANK_TEST_USER_SALT", salt)
    settings = make_settings(tmp_path, privacy={"pseudonymise_user_ids": True, "salt_env": "FUSIONRANK_TEST_USER_SALT"})
    assert settings.storage.root == str(root)
    run_all(settings, dt.date.fromisoformat(RUN_DATE), spark, stages=["build_profiles", "rank", "evaluate"])
    hashed = {name: DeltaTable(str(root / name)).to_pandas() for name in ("user_profiles", "recs_user_topk", "metrics")}
    plain = night["first"]
    mapping = {u: pseudonymise_id(u, salt.encode()) for u in plain["user_profiles"]["user_id"]}
    assert sorted(hashed["user_profiles"]["user_id"]) == sorted(mapping.values())
    assert hashed["recs_user_topk"]["user_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    recs = plain["recs_user_topk"].assign(user_id=plain["recs_user_topk"]["user_id"].map(mapping))
    cols = ["user_id", "rank", "item_id"]
    pd.testing.assert_frame_equal(hashed["recs_user_topk"][cols].sort_values(cols).reset_index(drop=True),
                                  recs[cols].sort_values(cols).reset_index(drop=True))
    metrics = hashed["metrics"].sort_values(["metric", "k"]).reset_index(drop=True)
    expected = plain["metrics"].sort_values(["metric", "k"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(metrics[["metric", "k", "value", "baseline"]],
                                  expected[["metric", "k", "value", "baseline"]], check_exact=False, rtol=1e-9)
    assert metrics.loc[metrics["metric"] == "users_evaluated", "value"].iloc[0] > 0
    # The salt is nowhere in the outputs or the settings.
    assert salt not in json.dumps(settings.model_dump(mode="json"))
