"""The filesystem layer against a real S3 protocol server (moto's), no Spark: bytes,
listings, copies, the per-host local copy, the index artifact (build, save, load,
search) and run records, with `s3://` and `s3a://` naming the same objects."""

from __future__ import annotations

import datetime as dt
import os
import threading

import numpy as np
import pytest

from fusionrank.core import uri as uris
from fusionrank.core.config import IndexConfig
from fusionrank.index import build as index
from fusionrank.storage import fs


@pytest.fixture()
def bucket_root(object_env, request):
    return f"s3a://{object_env.bucket}/fs/{request.node.name.replace('[', '_').replace(']', '')}"


def test_bytes_listings_and_deletes(bucket_root, object_env):
    target = uris.join(bucket_root, "a", "b.json")
    fs.write_text(target, '{"x": 1}')
    assert fs.read_text(target.replace("s3a://", "s3://")) == '{"x": 1}'  # one object, either scheme
    assert fs.is_file(target) and fs.is_dir(uris.join(bucket_root, "a")) and not fs.exists(target + ".nope")
    fs.write_bytes(uris.join(bucket_root, "a", "c", "d.bin"), b"\x00" * 10)
    assert fs.listdir(uris.join(bucket_root, "a")) == ["b.json", "c"]
    assert [(e.path, e.size) for e in fs.list_files(uris.join(bucket_root, "a"))] == [("b.json", 8), ("c/d.bin", 10)]
    assert fs.relative(uris.join(bucket_root, "a", "c", "d.bin").replace("s3a://", "s3://"), bucket_root) == "a/c/d.bin"
    # no folder markers: an object store only holds the objects written
    assert sorted(object_env.keys(bucket_root.split("/", 3)[3])) == sorted(
        [f"{bucket_root.split('/', 3)[3]}/a/b.json", f"{bucket_root.split('/', 3)[3]}/a/c/d.bin"])
    fs.delete(uris.join(bucket_root, "a"))
    assert fs.listdir(bucket_root) == [] and not fs.exists(target)


def test_local_copy_is_made_once_per_key_even_when_workers_race(bucket_root, tmp_path):
    folder = uris.join(bucket_root, "model")
    for name in ("config.json", "weights.safetensors"):
        fs.write_bytes(uris.join(folder, name), name.encode() * 100)
    key = "model-" + fs.signature(folder)
    results, errors = [], []

    def copy():
        try:
            results.append(fs.local_copy(folder, key, scratch=str(tmp_path)))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=copy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1
    local = results[0]
    assert sorted(os.listdir(local)) == ["config.json", "weights.safetensors"]
    assert sorted(os.listdir(os.path.dirname(local))) == [os.path.basename(local)]  # no temp folders left
    # new content at the same URI: a new signature, so a new copy
    fs.write_bytes(uris.join(folder, "config.json"), b"{}")
    assert fs.signature(folder) != key[len("model-"):]


def test_an_index_artifact_lives_in_the_bucket(bucket_root, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{i}" for i in range(len(vectors))]
    cfg = IndexConfig(type="ivf_flat", nlist=16, nprobe=16, self_check_queries=100, min_recall=0.9)
    out = uris.join(bucket_root, "index", "run_date=2024-01-02")
    built = index.build([(ids[:1500], vectors[:1500]), (ids[1500:], vectors[1500:])], vectors[:2000], 16,
                        len(vectors), cfg, out, "mv-1", "2024-01-02")
    assert built.path == out and built.manifest["count"] == 3000
    names = fs.listdir(out)
    assert names == sorted([index.INDEX_FILE, index.IDS_FILE, index.MANIFEST])
    assert not [n for n in fs.listdir(uris.join(bucket_root, "index")) if n.startswith(".")]  # staging gone
    assert index.read_manifest(out)["model_version"] == "mv-1"
    loaded = index.load_index(out)
    local = index.build([(ids, vectors)], vectors[:2000], 16, len(vectors), cfg, str(tmp_path / "idx"), "mv-1",
                        "2024-01-02")
    reference = index.load_index(local.path)
    scores, positions = loaded.search(vectors[:20], 10)
    ref_scores, ref_positions = reference.search(vectors[:20], 10)
    assert [loaded.ids[p] for p in positions[:, 0]] == ids[:20]  # each vector finds itself
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # a rebuild replaces the artifact in place: the manifest is the new one
    again = index.build([(ids, vectors)], vectors[:2000], 16, len(vectors), cfg, out, "mv-2", "2024-01-02")
    assert index.read_manifest(out)["model_version"] == "mv-2" == again.manifest["model_version"]
    assert index.load_index(out).manifest["model_version"] == "mv-2"


def test_run_records_go_to_the_bucket(object_env, tmp_path):
    from fusionrank.pipeline.runlog import StageResult, read_stage_records, record_stage
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, storage={"root": f"s3://{object_env.bucket}/records/wh"})
    day = dt.date(2024, 1, 2)
    record_stage(settings, StageResult("clean_catalog", day, 1.5, {"clean_rows": 7}), "run-1")
    records = read_stage_records(settings, day)
    assert records["clean_catalog"]["counts"] == {"clean_rows": 7}
    assert f"records/wh/_runs/run_date={day}/clean_catalog.json" in object_env.keys("records/")
    assert not (tmp_path / "warehouse").exists()
