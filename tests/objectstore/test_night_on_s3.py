"""The whole nightly pipeline with its inputs and storage.root on an object store
(moto's S3 server), local[2]: every table, the index artifact, the learned state, run
records and the report live in the bucket; the tables read back with `deltalake` and
the storage options from the environment; nothing is written to the local disk
outside Spark's scratch and the temp dir's own short-lived copies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusionrank.core import uri as uris
from fusionrank.core.jars import cached_jars
from fusionrank.storage import fs
from tests.conftest import ROOT, RUN_DATE
from tests.objectstore.conftest import clean_environment

TABLES = ["catalog_clean", "events_clean", "quarantine", "item_embeddings", "user_profiles",
          "recs_user_topk", "recs_item_similar", "metrics", "query_topk", "published"]
# What Spark and the JVM leave in a temp dir by themselves (not fusionrank's files).
SPARK_OWN = ("spark-", "blockmgr-", "pyspark-", "hsperfdata", "liblz4", "snappy", "libzstd", "jna", "jetty")

ENGINES = [
    pytest.param("delta-rs"),
    pytest.param("delta-spark", marks=pytest.mark.skipif(not cached_jars("delta", "s3a"),
                                                          reason="Delta/S3A jars not cached (make jars)")),
]


@pytest.fixture(scope="module")
def raw_in_bucket(object_store, movielens, tmp_path_factory):
    """Every tenth user's events on every fourth item (about 2.5k) and those items, in
    the bucket: small, as the point is where every byte goes, not the ranking."""
    out = tmp_path_factory.mktemp("ml_tenth")
    items: set[str] = set()
    with open(movielens / "events.jsonl") as src, open(out / "events.jsonl", "w") as dst:
        for line in src:
            event = json.loads(line)
            if int(event["user_id"]) % 10 == 0 and int(event["item_id"]) % 4 == 0:
                dst.write(line)
                items.add(event["item_id"])
    with open(movielens / "catalog.jsonl") as src, open(out / "catalog.jsonl", "w") as dst:
        for line in src:
            if json.loads(line)["item_id"] in items:
                dst.write(line)
    client = object_store.client()
    for name in ("catalog.jsonl", "events.jsonl"):
        client.upload_file(str(out / name), object_store.bucket, f"raw/{name}")
    return f"{object_store.bucket}/raw"


def _files_left(folder: Path) -> list[str]:
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not rel.parts[0].startswith(SPARK_OWN):
            out.append(str(rel))
    return sorted(out)


@pytest.mark.skipif(not cached_jars("s3a"), reason="S3A jars not cached (make jars)")
@pytest.mark.parametrize("engine", ENGINES)
def test_a_night_on_the_object_store(engine, object_env, raw_in_bucket, tmp_path):
    store = object_env
    root = f"s3a://{store.bucket}/{engine}/wh"
    conf_dir, cwd, tmp, scratch = (tmp_path / n for n in ("conf", "cwd", "tmp", "scratch"))
    for folder in (conf_dir, cwd, tmp, scratch):
        folder.mkdir()
    conf = conf_dir / "night.yaml"
    conf.write_text(json.dumps({
        "base": str(ROOT / "conf" / "base.yaml"),
        "spark": {"master": "local[2]", "ui_enabled": False,
                  "conf": {"spark.sql.shuffle.partitions": 2, "spark.local.dir": str(scratch)}},
        "storage": {"root": root, "engine": engine},
        "behaviour": {"rank": 32}, "index": {"self_check_queries": 200},
        "inputs": {"catalog": {"path": f"s3://{raw_in_bucket}/catalog.jsonl", "format": "json"},
                   "events": {"path": f"s3a://{raw_in_bucket}/events.jsonl", "format": "json"}},
    }))
    summary = tmp_path / "summary.json"
    env = clean_environment({**store.environment(), "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT / "lib")})
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from fusionrank.interfaces import cli; sys.exit(cli.main(sys.argv[1:]))",
         "run", "--conf", str(conf), "--date", RUN_DATE, "--json", str(summary)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]

    # Every table is a Delta table in the bucket, read with deltalake + the env's options.
    from deltalake import DeltaTable

    options = uris.delta_storage_options(root)
    counts = {r["stage"]: r["counts"] for r in json.loads(summary.read_text())}
    for name in TABLES:
        table = DeltaTable(f"s3://{store.bucket}/{engine}/wh/{name}", storage_options=options)
        rows = table.to_pyarrow_table().num_rows
        assert rows > 0 or name in ("quarantine", "query_topk"), name  # MovieLens has no searches
    recs = DeltaTable(f"s3://{store.bucket}/{engine}/wh/recs_user_topk", storage_options=options).to_pandas()
    assert len(recs) == counts["rank"]["recs_rows"] and recs["user_id"].nunique() == counts["rank"]["users_ranked"]
    assert set(recs["run_date"].astype(str)) == {RUN_DATE}

    # The index artifact, run records, report (and the published pointer) are objects.
    keys = store.keys(f"{engine}/wh/")
    index = f"{engine}/wh/index/run_date={RUN_DATE}/"
    assert {index + n for n in ("manifest.json", "index.faiss", "ids.parquet")} <= set(keys)
    assert any(k.startswith(index + "attributes/") and k.endswith(".parquet") for k in keys)
    assert f"{engine}/wh/_runs/run_date={RUN_DATE}/rank.json" in keys
    assert f"{engine}/wh/reports/run_date={RUN_DATE}/report.html" in keys
    left = [k for k in keys if "/.staging-" in k or "/.tmp-" in k or "_staging/" in k]
    assert left == [], f"scratch left behind: {left[:10]}"
    manifest = json.loads(fs.read_text(uris.join(root, "index", f"run_date={RUN_DATE}", "manifest.json")))
    assert manifest["count"] == counts["build_index"]["count"]

    # Nothing on the local disk: not in the working directory, not beside the config,
    # not as a mangled `<project>/s3a:` folder, nothing left in the temp dir.
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in conf_dir.iterdir()) == ["night.yaml"]
    assert not (ROOT / "s3a:").exists() and not (ROOT / "s3:").exists()
    assert _files_left(tmp) == []
