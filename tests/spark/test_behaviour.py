"""behaviour.lae_item_vectors (distributed randomized eigensolver) against numpy's exact
low-rank EASE, its rerun determinism, and the ranking-space vectors."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrank.core.config import BehaviourConfig


def _history(spark, users: int = 80, items: int = 30, seed: int = 3):
    rng = np.random.default_rng(seed)
    # Two taste groups so the spectrum has structure; weights like rating weights.
    rows = []
    for u in range(users):
        group = u % 2
        for i in range(items):
            p = 0.45 if (i % 2 == group) else 0.1
            if rng.random() < p:
                rows.append((f"u{u:03d}", f"i{i:03d}", float(rng.choice([0.6, 1.0, 1.4]))))
    frame = spark.createDataFrame(rows, "user_id string, item_id string, weight double")
    x = np.zeros((users, items))
    for u, i, w in rows:
        x[int(u[1:]), int(i[1:])] = w
    return frame, x


def _collect(frame) -> dict[str, np.ndarray]:
    return {r["item_id"]: np.asarray(r["behaviour_vec"], dtype=np.float64) for r in frame.collect()}


def test_lae_matches_exact_low_rank_ease(spark):
    from fusionrank.vectors.behaviour import lae_item_vectors

    history, x = _history(spark)
    # width (rank + oversample) = the 30 items: the search space is the whole item
    # space, so the result is exact up to rounding without power steps.
    cfg = BehaviourConfig(rank=6, oversample=24, power_iterations=0, l2=20.0)
    got = _collect(lae_item_vectors(history, cfg))
    items = sorted(got)
    e = np.stack([got[i] for i in items])
    assert e.shape == (x.shape[1], 6)
    values, vectors = np.linalg.eigh(x.T @ x)
    top = np.argsort(-values)[:6]
    exact = vectors[:, top] @ np.diag(values[top] / (values[top] + 20.0)) @ vectors[:, top].T
    # The model (item x item weights) is what must agree; the factors are only
    # defined up to a rotation inside equal eigenvalues.
    np.testing.assert_allclose(e @ e.T, exact, atol=2e-3 * np.abs(exact).max())
    # user scores = x @ B: the ranking the index will reproduce
    np.testing.assert_allclose((x @ e) @ e.T, x @ exact, atol=5e-3 * np.abs(x @ exact).max())


def test_lae_reruns_give_the_same_bits(spark):
    from fusionrank.vectors.behaviour import lae_item_vectors

    history, _ = _history(spark, seed=5)
    cfg = BehaviourConfig(rank=4, oversample=4, power_iterations=1, l2=10.0)
    first = _collect(lae_item_vectors(history, cfg))
    second = _collect(lae_item_vectors(history.repartition(3), cfg))
    assert first.keys() == second.keys()
    for item in first:
        assert first[item].tobytes() == second[item].tobytes(), item


def test_rec_vectors_pad_missing_behaviour_and_weight_content(spark):
    from fusionrank.vectors.space import rec_vectors
    from fusionrank.core.catalog import VECTOR
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("behaviour_vec", VECTOR),
                           T.StructField("fused_vec", VECTOR)])
    frame = spark.createDataFrame([("a", [1.0, 2.0], [0.6, 0.8]), ("b", None, [1.0, 0.0]), ("c", [1.0, 1.0], None)],
                                  schema)
    out = {r["item_id"]: r["rec_vec"] for r in rec_vectors(frame, 2, 0.5).collect()}
    assert out["a"] == pytest.approx([1.0, 2.0, 0.3, 0.4])
    assert out["b"] == pytest.approx([0.0, 0.0, 0.5, 0.0])  # cold item: content only
    assert out["c"] is None  # no fused vector, nothing to index
