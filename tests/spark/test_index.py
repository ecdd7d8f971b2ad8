"""FAISS index build: flat and IVF, manifest, id mapping, self-check, atomic save."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fusionrank.index import build as index
from fusionrank.core.config import IndexConfig
from tests.unit.test_index import batches, clustered


def top10_ids(loaded, queries):
    scores, positions = loaded.search(queries, 10)
    return loaded.ids[positions], scores


# -- sharded builds on Spark ---------------------------------------------------------------
def vector_frame(spark, ids, vectors, partitions):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("rec_vec", T.ArrayType(T.FloatType()))])
    rows = [(i, v.tolist()) for i, v in zip(ids, vectors)]
    return spark.createDataFrame(rows, schema).repartition(partitions)


def test_sharded_flat_build_equals_the_single_process_build(spark, tmp_path):
    vectors = clustered(3000, seed=7)
    ids = [f"item{i:04d}" for i in range(3000)]
    cfg = IndexConfig(type="flat")
    frame = vector_frame(spark, ids, vectors, 3)
    assert frame.rdd.getNumPartitions() == 3
    sharded = index.build_from_spark(frame, 32, 3000, cfg, tmp_path / "sharded", "v", "d", partitions=4)
    single = index.build(batches(ids, vectors), np.zeros((0, 32)), 32, 3000, cfg, tmp_path / "single", "v", "d")
    assert sharded.manifest["shards"] == 4 and single.manifest["shards"] == 1
    assert sharded.manifest["count"] == 3000
    assert not list(tmp_path.glob(".staging-*"))  # shards cleaned up after the merge
    a, b = index.load_index(sharded.path), index.load_index(single.path)
    got_ids, got_scores = top10_ids(a, vectors[:100])
    want_ids, want_scores = top10_ids(b, vectors[:100])
    assert (got_ids == want_ids).all()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    np.testing.assert_allclose(a.vectors(["item0042"])[0][0], vectors[42], atol=1e-6)
    # Reruns give the same positions (hash-partitioned, sorted shards).
    again = index.build_from_spark(frame, 32, 3000, cfg, tmp_path / "sharded", "v", "d", partitions=4)
    assert (index.load_index(again.path).ids == a.ids).all()


def test_sharded_ivf_build_has_the_recall_of_the_single_process_build(spark, tmp_path):
    vectors = clustered(8000, seed=8, clusters=100)
    ids = [f"item{i:04d}" for i in range(8000)]
    cfg = IndexConfig(type="ivf_flat", nlist=64, nprobe=4, self_check_queries=400)
    sharded = index.build_from_spark(vector_frame(spark, ids, vectors, 3), 32, 8000, cfg, tmp_path / "s", "v", "d",
                                     partitions=3)
    sample = vectors[np.random.default_rng(0).choice(8000, 4000, replace=False)]
    single = index.build(batches(ids, vectors), sample, 32, 8000, cfg, tmp_path / "one", "v", "d")
    m = sharded.manifest
    assert m["type"] == "ivf_flat" and m["shards"] == 3 and m["count"] == 8000 and m["train_sample"] > 0
    assert m["self_check"]["recall_at_10"] >= 0.95 and single.manifest["self_check"]["recall_at_10"] >= 0.95
    # Recall of both against exact search on fresh queries.
    exact = index.load_index(single.path)
    rng = np.random.default_rng(9)
    queries = (vectors[rng.choice(8000, 300, replace=False)] + 0.05 * rng.normal(size=(300, 32))).astype(np.float32)
    flat = __import__("faiss").IndexFlatIP(32)
    flat.add(vectors)
    _, truth = flat.search(queries, 10)
    truth_ids = np.array(ids)[truth]
    recalls = []
    for loaded in (index.load_index(sharded.path), exact):
        got, _ = top10_ids(loaded, queries)
        recalls.append(sum(len(set(t) & set(g)) for t, g in zip(truth_ids.tolist(), got.tolist())) / truth_ids.size)
    assert recalls[0] >= 0.9 and recalls[0] >= recalls[1] - 0.03
    assert sorted(index.load_index(sharded.path).ids) == ids


def test_failed_self_check_of_a_spark_build_keeps_the_previous_index(spark, tmp_path):
    target = tmp_path / "run_date=2026-11-22"
    good = clustered(2000, seed=10)
    ids = [str(i) for i in range(2000)]
    index.build_from_spark(vector_frame(spark, ids, good, 2), 32, 2000, IndexConfig(type="flat"), target, "v1", "d")
    noise = np.random.default_rng(11).normal(size=(2000, 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cfg = IndexConfig(type="ivf_flat", nlist=50, nprobe=1, max_nprobe=1, min_recall=0.99, self_check_queries=200)
    with pytest.raises(index.IndexError_, match="self-check failed"):
        index.build_from_spark(vector_frame(spark, ids, noise, 2), 32, 2000, cfg, target, "v2", "d")
    assert json.loads((target / "manifest.json").read_text())["model_version"] == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_date=2026-11-22"]  # no staging or tmp left




def test_sharded_opq_build_finds_the_exact_neighbours_and_hands_back_the_vectors(spark, tmp_path):
    # An easy set: 200 groups of 10 near-duplicates, so each group is its members' exact top-10.
    rng = np.random.default_rng(12)
    centres = rng.normal(size=(200, 32))
    vectors = np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(2000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"item{i:04d}" for i in range(2000)]
    cfg = IndexConfig(type="ivf_pq", nlist=16, nprobe=4, pq_m=8, opq=True, self_check_queries=200, min_recall=0.9)
    built = index.build_from_spark(vector_frame(spark, ids, vectors, 3), 32, 2000, cfg, tmp_path / "opq", "v", "d",
                                   partitions=3)
    m = built.manifest
    assert m["type"] == "ivf_pq" and m["opq"] is True and m["shards"] == 3 and m["count"] == 2000
    assert m["self_check"]["recall_at_10"] >= 0.9
    loaded = index.load_index(built.path)
    assert type(loaded.index).__name__ == "IndexPreTransform" and index.ivf_of(loaded.index).nprobe == m["nprobe"]
    flat = __import__("faiss").IndexFlatIP(32)
    flat.add(vectors)
    queries = vectors[rng.choice(2000, 100, replace=False)]
    _, truth = flat.search(queries, 10)
    got, _ = top10_ids(loaded, queries)
    assert np.mean([len(set(t) & set(g)) / 10 for t, g in zip(np.array(ids)[truth].tolist(), got.tolist())]) >= 0.95
    # Vectors come back un-rotated, both from the dense copy and from the codes.
    positions = loaded.position_of(ids[:50])
    back = index.reconstruct(loaded.index, positions)
    np.testing.assert_allclose(loaded.reconstruct(positions), back, atol=1e-5)  # the dense copy agrees

    def cosine(a):
        return (a * vectors[:50]).sum(axis=1) / np.linalg.norm(a, axis=1)

    assert cosine(back).mean() >= 0.9
    rotated = index.ivf_of(loaded.index).reconstruct_batch(positions)  # the codes' own (rotated) space
    assert abs(cosine(rotated).mean()) < 0.5
