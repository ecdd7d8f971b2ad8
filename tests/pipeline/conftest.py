"""One shared night: the whole pipeline on a MovieLens slice, run once through the CLI
for the session (and rerun once, for the rerun checks). Tests read it and never
change it; a test that must change something takes a copy of the warehouse."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from fusionrank.core.config import load_config
from fusionrank.interfaces import cli
from tests.conftest import ROOT, RUN_DATE

TABLES = ["catalog_clean", "events_clean", "quarantine", "item_embeddings", "user_profiles",
          "recs_user_topk", "recs_item_similar", "metrics", "query_topk"]
VOLATILE = {"quarantined_at"}  # wall-clock columns that legitimately differ between runs


def write_conf(folder, root, data) -> str:
    """A deployment-style overlay (its own folder) on the project's conf/base.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "conf" / "base.yaml", folder / "base.yaml")
    (folder / "test.yaml").write_text(json.dumps({
        "spark": {"master": "local[2]", "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": 2}},
        "storage": {"root": str(root)},
        "inputs": {"catalog": {"path": str(data / "catalog.jsonl")}, "events": {"path": str(data / "events.jsonl")}},
    }))
    return str(folder / "test.yaml")


def snapshot(root) -> dict[str, pd.DataFrame]:
    frames = {}
    for name in TABLES:
        df = DeltaTable(str(root / name)).to_pandas()
        df = df.drop(columns=[c for c in VOLATILE if c in df.columns])
        for column in df.columns:  # arrays -> tuples so frames compare and sort
            if df[column].map(lambda v: isinstance(v, (list, np.ndarray))).any():
                df[column] = df[column].map(lambda v: None if v is None else tuple(np.asarray(v).tolist()))
        frames[name] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return frames


@pytest.fixture(scope="session")
def night(spark, movielens_slice, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("night")
    root = tmp / "warehouse"
    conf = write_conf(tmp / "conf", root, movielens_slice)
    summary = tmp / "first.json"
    assert cli.main(["run", "--conf", conf, "--date", RUN_DATE, "--json", str(summary)]) == 0
    return {
        "root": root, "conf": conf, "settings": load_config(conf), "first": snapshot(root),
        "versions": {name: DeltaTable(str(root / name)).version() for name in TABLES},
        "manifest": json.loads((root / "index" / f"run_date={RUN_DATE}" / "manifest.json").read_text()),
        "first_stats": {r["stage"]: r["counts"] for r in json.loads(summary.read_text())},
    }


@pytest.fixture(scope="session")
def rerun(night):
    """The same date run again over the night's warehouse (identical tables, new versions)."""
    out = night["root"].parent / "second.json"
    assert cli.main(["run", "--conf", night["conf"], "--date", RUN_DATE, "--json", str(out), "--no-report"]) == 0
    return {"second": snapshot(night["root"]),
            "second_stats": {r["stage"]: r["counts"] for r in json.loads(out.read_text())}}


@pytest.fixture()
def night_copy(night, tmp_path):
    """A private copy of the night's warehouse, for tests that change it."""
    root = tmp_path / "warehouse"
    shutil.copytree(night["root"], root)
    return root
