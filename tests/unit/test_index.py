"""FAISS index build: flat and IVF, manifest, id mapping, self-check, atomic save."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fusionrank.index import build as index
from fusionrank.core.config import IndexConfig


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def batches(ids, vectors, size=700):
    for start in range(0, len(ids), size):
        yield ids[start:start + size], vectors[start:start + size]


def test_flat_index_roundtrip(tmp_path):
    vectors = clustered(500)
    ids = [f"item{i}" for i in range(500)]
    built = index.build(batches(ids, vectors), np.zeros((0, 32)), 32, 500, IndexConfig(type="flat"),
                        tmp_path / "run_date=2026-11-22", "fr-test", "2026-11-22")
    manifest = json.loads((Path(built.path) / "manifest.json").read_text())
    assert manifest["type"] == "flat" and manifest["count"] == 500 and manifest["dim"] == 32
    assert manifest["model_version"] == "fr-test" and manifest["self_check"]["recall_at_10"] == 1.0
    loaded = index.load_index(built.path)
    scores, positions = loaded.index.search(vectors[:5], 1)
    assert [loaded.ids[p] for p in positions[:, 0]] == ids[:5]  # each vector finds itself
    got, known = loaded.vectors(["item3", "missing", "item7"])
    assert known == ["item3", "item7"]
    np.testing.assert_allclose(got, vectors[[3, 7]], atol=1e-6)


def test_ivf_index_trains_on_a_sample_and_passes_its_self_check(tmp_path):
    vectors = clustered(5000, seed=1)
    ids = [str(i) for i in range(5000)]
    cfg = IndexConfig(type="ivf", nlist=64, nprobe=16, self_check_queries=300)
    sample = vectors[np.random.default_rng(0).choice(5000, 2600, replace=False)]
    built = index.build(batches(ids, vectors), sample, 32, 5000, cfg, tmp_path / "ivf", "fr-test", "2026-11-22")
    m = built.manifest
    assert m["type"] == "ivf_flat" and m["nlist"] == 64 and m["nprobe"] == 16
    assert 0.9 <= m["self_check"]["recall_at_10"] <= 1.0
    assert m["self_check"]["queries"] == 300
    loaded = index.load_index(built.path)
    assert loaded.index.ntotal == 5000
    assert index.choose_nlist(1000, 4096) == 25  # ~39 training points per list


def test_self_check_failure_keeps_the_previous_artifact(tmp_path):
    target = tmp_path / "run_date=2026-11-22"
    good = clustered(2000, seed=2)
    ids = [str(i) for i in range(2000)]
    index.build(batches(ids, good), np.zeros((0, 32)), 32, 2000, IndexConfig(type="flat"), target, "v1", "2026-11-22")
    # One probe over many lists of noise: recall far below the floor.
    noise = np.random.default_rng(3).normal(size=(2000, 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cfg = IndexConfig(type="ivf", nlist=50, nprobe=1, max_nprobe=1, min_recall=0.99, self_check_queries=200)
    with pytest.raises(index.IndexError_, match="self-check failed: recall@10"):
        index.build(batches(ids, noise), noise, 32, 2000, cfg, target, "v2", "2026-11-22")
    assert json.loads((target / "manifest.json").read_text())["model_version"] == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_duplicate_ids_are_refused(tmp_path):
    vectors = clustered(10)
    with pytest.raises(index.IndexError_, match="not unique"):
        index.build(batches(["a"] * 10, vectors), np.zeros((0, 32)), 32, 10, IndexConfig(), tmp_path / "x", "v", "d")


# -- index type selection ------------------------------------------------------------------
def test_auto_type_follows_size_and_memory_budget():
    small = index.choose_spec(5000, 64, IndexConfig())
    assert small.type == "flat"
    mid = index.choose_spec(50_000, 64, IndexConfig())
    assert mid.type == "ivf_flat" and mid.nlist == 1024 and mid.nprobe == 8  # ~4 sqrt(n), a power of two
    big = index.choose_spec(2_000_000, 64, IndexConfig(memory_budget_mb=256))
    assert big.type == "ivf_pq" and big.estimated_mb <= 256 and 64 % big.pq_m == 0 and big.pq_m >= 8
    assert IndexConfig(type="ivf").type == "ivf_flat"  # the old name still works
    with pytest.raises(index.IndexError_, match="memory_budget_mb"):
        index.choose_spec(2_000_000, 64, IndexConfig(type="ivf_flat", memory_budget_mb=256))
    assert index.choose_spec(50, 64, IndexConfig(type="ivf_pq")).type == "flat"  # too few to train lists


def test_pq_is_chosen_and_built_under_a_small_memory_budget(tmp_path):
    vectors = clustered(20_000, seed=4)
    ids = [f"i{i:05d}" for i in range(20_000)]
    # opq off: the budget choice is what is tested here (tests/spark/test_index.py builds with OPQ)
    cfg = IndexConfig(flat_max_items=1000, memory_budget_mb=2, self_check_queries=300, min_recall=0.9, opq=False)
    sample = vectors[np.random.default_rng(0).choice(20_000, 12_000, replace=False)]
    built = index.build(batches(ids, vectors, 4000), sample, 32, 20_000, cfg, tmp_path / "pq", "v", "d")
    m = built.manifest
    assert m["type"] == "ivf_pq" and m["estimated_mb"] <= 2
    assert (Path(built.path) / "index.faiss").stat().st_size < 20_000 * 32 * 4  # smaller than the raw vectors
    assert m["self_check"]["recall_at_10"] >= 0.9
    loaded = index.load_index(built.path)
    _, positions = loaded.search(vectors[:20], 1)
    assert (loaded.ids[positions[:, 0]] == np.array(ids[:20])).mean() >= 0.9


def test_nprobe_is_raised_until_the_self_check_passes(tmp_path):
    # Noise has no clusters: one probe finds few true neighbours, more probes find them all.
    vectors = np.random.default_rng(5).normal(size=(6000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(i) for i in range(6000)]
    cfg = IndexConfig(type="ivf_flat", nlist=64, nprobe=1, max_nprobe=64, min_recall=0.97, self_check_queries=300)
    built = index.build(batches(ids, vectors), vectors, 32, 6000, cfg, tmp_path / "tuned", "v", "d")
    assert built.manifest["nprobe"] > 1 and built.manifest["self_check"]["recall_at_10"] >= 0.97
    assert index.load_index(built.path).index.nprobe == built.manifest["nprobe"]


def test_hnsw_build_passes_its_self_check(tmp_path):
    vectors = clustered(3000, seed=6)
    ids = [str(i) for i in range(3000)]
    cfg = IndexConfig(type="hnsw", hnsw_m=16, self_check_queries=200)
    built = index.build(batches(ids, vectors), vectors[:500], 32, 3000, cfg, tmp_path / "hnsw", "v", "d")
    assert built.manifest["type"] == "hnsw" and built.manifest["self_check"]["recall_at_10"] >= 0.95
    loaded = index.load_index(built.path)
    np.testing.assert_allclose(loaded.vectors(["7"])[0][0], vectors[7], atol=1e-6)




# -- OPQ ---------------------------------------------------------------------------------------
def test_opq_goes_with_ivf_pq_and_its_rotation_is_in_the_size():
    cfg = IndexConfig(type="ivf_pq", pq_m=16)
    on, off = index.choose_spec(1_000_000, 256, cfg), index.choose_spec(1_000_000, 256, cfg.model_copy(update={"opq": False}))
    assert cfg.opq == "auto" and on.opq and not off.opq
    assert on.estimated_mb - off.estimated_mb == pytest.approx(256 * 256 * 4 / 2**20)
    assert on.params()["opq"] is True and off.params()["opq"] is False
    assert not index.choose_spec(50_000, 64, IndexConfig(opq=True)).opq  # ivf_flat: no PQ codes to rotate for
    # auto: sub-quantisers of >= 4 dims only (2 dims: no measured gain, the dearest training)
    assert index.choose_spec(1_000_000, 256, cfg.model_copy(update={"pq_m": 64})).opq
    assert not index.choose_spec(1_000_000, 256, cfg.model_copy(update={"pq_m": 128})).opq
    assert index.choose_spec(1_000_000, 256, cfg.model_copy(update={"pq_m": 128, "opq": True})).opq
    # The rotation (4 MB at 1024 dims) counts against the budget.
    wide = IndexConfig(type="ivf_pq", pq_m=16, opq=False)
    budget = math.ceil(index.choose_spec(1_000_000, 1024, wide).estimated_mb)
    assert index.choose_spec(1_000_000, 1024, wide.model_copy(update={"memory_budget_mb": budget})).pq_m == 16
    with pytest.raises(index.IndexError_, match="memory_budget_mb"):
        index.choose_spec(1_000_000, 1024, wide.model_copy(update={"memory_budget_mb": budget, "opq": True}))


@pytest.mark.parametrize("value", ["maybe", 1, None])
def test_a_bad_opq_value_is_refused(value):
    with pytest.raises(ValueError, match=r"opq\n.*must be auto, true or false"):
        IndexConfig(opq=value)
    assert IndexConfig(opq="false").opq is False and IndexConfig(opq=True).opq is True
