"""rank's search mechanics: the vectorised batch search equals the per-user reference
(`top_unseen` + `pick_reasons`), and the Spark stage gives the same rows on any partitioning."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrank.index import build as index
from fusionrank.ranks import users as ranking
from fusionrank.core.config import IndexConfig, RankConfig
from tests.unit.test_index import batches, clustered


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    vectors = clustered(600, seed=21)
    ids = [f"m{i:03d}" for i in range(600)]
    built = index.build(batches(ids, vectors), np.zeros((0, 32)), 32, 600, IndexConfig(type="flat"),
                        tmp_path_factory.mktemp("rank") / "idx", "v", "d")
    return index.load_index(built.path)


def users_batch(loaded, n=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = list(loaded.ids)
    rows = {"user_id": [], "profile_vec": [], "history_item_ids": [], "history_weights": [], "seen": []}
    for u in range(n):
        history = list(rng.choice(ids, size=int(rng.integers(0, 8)), replace=False))
        if u % 7 == 3:
            history.append("not-in-index")
        seen = None if u % 5 == 0 else history + list(rng.choice(ids, size=int(rng.integers(0, 30)), replace=False))
        rows["user_id"].append(f"u{u:03d}")
        rows["profile_vec"].append(rng.normal(size=32).astype(np.float32).tolist())
        rows["history_item_ids"].append(history)
        rows["history_weights"].append(rng.uniform(0.1, 3, size=len(history)).astype(np.float32).tolist())
        rows["seen"].append(seen)
    schema = pa.schema([("user_id", pa.string()), ("profile_vec", pa.list_(pa.float32())),
                        ("history_item_ids", pa.list_(pa.string())), ("history_weights", pa.list_(pa.float32())),
                        ("seen", pa.list_(pa.string()))])
    return pa.RecordBatch.from_pydict(rows, schema=schema)


def reference(loaded, batch, k, reason_history):
    """The per-user loop the batched search replaces."""
    out = []
    for row in batch.to_pylist():
        seen = set(row["seen"] or [])
        fetch = min(loaded.index.ntotal, 1000, k + max(len(r or []) for r in batch.column("seen").to_pylist()))
        scores, positions = loaded.index.search(np.asarray([row["profile_vec"]], dtype=np.float32), fetch)
        picked = ranking.top_unseen(loaded.ids[positions[0]], scores[0], seen, k)
        hist = row["history_item_ids"][:reason_history]
        weights = np.asarray(row["history_weights"][:reason_history], dtype=np.float32)
        hist_vecs, known = loaded.vectors(hist)
        weights = weights[[hist.index(i) for i in known]] if known else weights[:0]
        cand_vecs, _ = loaded.vectors([item for item, _ in picked])
        reasons = ranking.pick_reasons(cand_vecs, hist_vecs, known, weights)
        out += [(row["user_id"], r, item, score, reason)
                for r, ((item, score), reason) in enumerate(zip(picked, reasons), start=1)]
    return out


def loaded_path(loaded):
    return next(path for (path, _), value in index._LOADED.items() if value is loaded)


def test_spark_rank_is_the_same_on_any_partitioning(spark, loaded):
    batch = users_batch(loaded, n=60, seed=1)
    frame = spark.createDataFrame(pa.Table.from_batches([batch]).to_pandas())
    cfg = RankConfig(k=5, search_batch=16)
    path = str(loaded_path(loaded))
    one = ranking.rank_users(frame, path, cfg, partitions=1).toPandas()
    three = ranking.rank_users(frame.repartition(2), path, cfg, partitions=3).toPandas()
    key = ["user_id", "rank"]
    one, three = one.sort_values(key).reset_index(drop=True), three.sort_values(key).reset_index(drop=True)
    assert len(one) == 60 * 5  # 600 items: every user has 5 unseen
    assert one[["user_id", "rank", "item_id", "reason_item_id"]].equals(three[["user_id", "rank", "item_id", "reason_item_id"]])
    np.testing.assert_allclose(one["score"], three["score"], rtol=1e-5)


