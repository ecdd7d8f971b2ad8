"""TableStore on an object store with both engines: Spark rows and executor-written
Parquet (through the fs layer) commit together to an s3a:// table, a rerun replaces the
date, `last_write` is set (rank reads it after committing), and nothing is left in the
bucket but the table (no staging)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from fusionrank.core import uri as uris
from fusionrank.core.jars import cached_jars
from tests.conftest import ROOT
from tests.objectstore.conftest import clean_environment


@pytest.mark.skipif(not cached_jars("delta", "s3a"), reason="Delta/S3A jars not cached (make jars)")
def test_both_engines_write_executor_batches_to_the_object_store(object_env, tmp_path):
    store = object_env
    roots = {engine: f"s3a://{store.bucket}/store/{engine}" for engine in ("delta-spark", "delta-rs")}  # the session: delta-spark's
    conf = tmp_path / "store.yaml"
    conf.write_text(json.dumps({
        "base": str(ROOT / "conf" / "base.yaml"),
        "spark": {"master": "local[2]", "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": 2}},
        "storage": {"engine": "delta-spark"},
        "inputs": {"catalog": {"path": "unused.jsonl"}, "events": {"path": "unused.jsonl"}},
    }))
    env = clean_environment({**store.environment(), "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT}"})
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "objectstore" / "jobs" / "store_writes.py"),
                           str(conf), json.dumps(roots)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for engine, root in roots.items():
        got = result[engine]
        assert got["engine"] == engine
        assert got["last_write"] == {"rows": 40, "distinct": 40}, engine
        assert (got["rows"], got["value_7b"], got["spark_row"], got["count_rows"]) == (41, 15, -1, 41), engine
        assert got["version"] == 1 and got["partitions"] == ["2024-05-01"], engine
        table = DeltaTable(uris.arrow_uri(uris.join(root, "recs_item_similar")),
                           storage_options=uris.delta_storage_options(root))
        assert table.to_pyarrow_table().num_rows == 41
        # (zero-byte `folder/` markers, which Hadoop's S3A writes, are not objects of ours)
        keys = [k for k in store.keys(f"store/{engine}/") if not k.endswith("/")]
        assert keys and all(k.startswith(f"store/{engine}/recs_item_similar/") for k in keys), \
            [k for k in keys if not k.startswith(f"store/{engine}/recs_item_similar/")][:10]
    assert list(p.name for p in tmp_path.iterdir()) == ["store.yaml"]
