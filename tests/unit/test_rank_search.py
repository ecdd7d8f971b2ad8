"""rank's search mechanics: the vectorised batch search equals the per-user reference
(`top_unseen` + `pick_reasons`), and the Spark stage gives the same rows on any partitioning."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusionrank.index import build as index
from fusionrank.ranks import users as ranking
from fusionrank.core.config import IndexConfig
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


def test_batched_search_equals_the_per_user_reference(loaded):
    batch = users_batch(loaded)
    got = ranking.rank_chunk(loaded, batch, k=10, max_candidates=1000, reason_history=5)
    rows = list(zip(*[got.column(c).to_pylist() for c in ["user_id", "rank", "item_id", "score", "reason_item_id"]]))
    want = reference(loaded, batch, 10, 5)
    # This artifact has no attributes (titles): a reason names its item's id.
    assert got.column("reason").to_pylist() == [
        "close to your profile" if item is None else f"similar to {item}" for item in got.column("reason_item_id").to_pylist()]
    assert set(got.column("model_version").to_pylist()) == {"v"}
    assert [r[:3] + r[4:] for r in rows] == [w[:3] + w[4:] for w in want]
    np.testing.assert_allclose([r[3] for r in rows], [w[3] for w in want], rtol=1e-5)
    seen = {u: set(s or []) for u, s in zip(batch.column("user_id").to_pylist(), batch.column("seen").to_pylist())}
    assert not any(item in seen[user] for user, _, item, _, _ in rows)
    assert any(r[4] is None for r in rows) and any(r[4] is not None for r in rows)  # users with/without history


def test_similar_items_skip_the_item_itself(loaded):
    vectors = index.reconstruct(loaded.index, np.arange(50))
    batch = pa.RecordBatch.from_pydict(
        {"item_id": list(loaded.ids[:50]), "rec_vec": [v.tolist() for v in vectors]},
        schema=pa.schema([("item_id", pa.string()), ("rec_vec", pa.list_(pa.float32()))]))
    out = pa.Table.from_batches(list(ranking.similar_partition(iter([batch]), str(loaded_path(loaded)), k=5)))
    assert out.num_rows == 250
    assert not any(a == b for a, b in zip(out.column("item_id").to_pylist(), out.column("similar_item_id").to_pylist()))
    assert out.column("rank").to_pylist()[:5] == [1, 2, 3, 4, 5]


def loaded_path(loaded):
    return next(path for (path, _), value in index._LOADED.items() if value is loaded)


def test_attributes_name_the_reasons_and_cap_each_category(tmp_path):
    """Titles and top-level categories shipped in the artifact: reasons read 'similar to
    <title>', and `max_per_category` equals a greedy cap over the uncapped ranking."""
    n = 300
    ids = [f"c{i:03d}" for i in range(n)]
    built = index.build(batches(ids, clustered(n, seed=5)), np.zeros((0, 32)), 32, n, IndexConfig(type="flat"),
                        tmp_path / "idx", "v7", "d")
    categories = [None if i % 10 == 0 else f"cat{i % 3}" for i in range(n)]
    (Path(built.path) / index.ATTRIBUTES_DIR).mkdir()
    pq.write_table(pa.table({"item_id": ids, "title": [f"title {i}" for i in range(n)], "category": categories}),
                   Path(built.path) / index.ATTRIBUTES_DIR / "part-0.parquet")
    loaded = index.load_index(built.path)
    batch = users_batch(loaded, n=30, seed=3)

    plain = ranking.rank_chunk(loaded, batch, k=12, max_candidates=1000, reason_history=5).to_pandas()
    assert (plain["reason"] == [("close to your profile" if r is None else f"similar to title {int(r[1:])}")
                                for r in plain["reason_item_id"]]).all()
    assert plain["reason_item_id"].notna().any()

    k, cap = 12, 2
    capped = ranking.rank_chunk(loaded, batch, k=k, max_candidates=1000, reason_history=5,
                                max_per_category=cap).to_pandas()
    # The capped search fetches 3k + the longest seen list deep: every unseen hit of that depth.
    depth = 3 * k + max(len(s or []) for s in batch.column("seen").to_pylist())
    deep = ranking.rank_chunk(loaded, batch, k=depth, max_candidates=depth, reason_history=5).to_pandas()
    category_of = dict(zip(ids, categories))
    for user, group in deep.groupby("user_id"):
        counts, want = Counter(), []
        for item in group.sort_values("rank")["item_id"]:
            category = category_of[item]
            if category is None or counts[category] < cap:
                counts[category] += 1
                want.append(item)
        got = capped[capped["user_id"] == user].sort_values("rank")
        assert list(got["item_id"]) == want[:k]
        assert list(got["rank"]) == list(range(1, len(got) + 1))
    assert len(capped) < len(plain)  # the cap did bite


def full_history_batch(loaded, n=30, length=6, seed=4):
    """Every user with `length` known history items (the reasons' no-regather path)."""
    batch = users_batch(loaded, n=n, seed=seed)
    rng = np.random.default_rng(seed)
    ids = list(loaded.ids)
    history = [list(rng.choice(ids, size=length, replace=False)) for _ in range(n)]
    weights = [rng.uniform(0.1, 3, size=length).astype(np.float32).tolist() for _ in range(n)]
    return batch.set_column(2, "history_item_ids", pa.array(history, pa.list_(pa.string()))) \
        .set_column(3, "history_weights", pa.array(weights, pa.list_(pa.float32())))


@pytest.mark.parametrize("reason_history", [4, 6, 50])  # 4 cuts every history, 6/50 keep them whole
def test_batched_reasons_equal_the_reference_when_every_user_has_a_history(loaded, reason_history):
    batch = full_history_batch(loaded)
    for k in (10, 600):  # 600: the whole index, so some users have fewer than k rows
        got = ranking.rank_chunk(loaded, batch, k=k, max_candidates=1000, reason_history=reason_history)
        want = reference(loaded, batch, k, reason_history)
        assert list(zip(got.column("user_id").to_pylist(), got.column("rank").to_pylist(),
                        got.column("item_id").to_pylist(), got.column("reason_item_id").to_pylist())) \
            == [w[:3] + w[4:] for w in want]
        assert got.column("reason_item_id").null_count == 0


@pytest.mark.parametrize("values", [[], [-1], [5, -1, 3, 5, 0, -1, 9], list(range(-1, 10)), [9, 9, 9]])
def test_bounded_unique_equals_np_unique(values):
    values = np.asarray(values, dtype=np.int64)
    distinct, inverse = ranking._bounded_unique(values, 10)
    want_distinct, want_inverse = np.unique(values, return_inverse=True)
    assert distinct.dtype == want_distinct.dtype and inverse.dtype == want_inverse.dtype
    np.testing.assert_array_equal(distinct, want_distinct)
    np.testing.assert_array_equal(inverse, want_inverse)


def test_bounded_unique_refuses_values_outside_its_bound():
    with pytest.raises(ValueError, match="outside"):
        ranking._bounded_unique(np.array([0, 10]), 10)
    with pytest.raises(ValueError, match="outside"):
        ranking._bounded_unique(np.array([-2, 3]), 10)


def test_take_ids_with_and_without_nulls(loaded):
    every = ranking._take_ids(loaded, np.array([3, 0, 3, 599]))
    assert every.type == pa.string() and every.to_pylist() == [loaded.ids[3], loaded.ids[0], loaded.ids[3], loaded.ids[599]]
    some = ranking._take_ids(loaded, np.array([-1, 7, -1, 2]))
    assert some.type == pa.string() and some.to_pylist() == [None, loaded.ids[7], None, loaded.ids[2]]
    assert ranking._take_ids(loaded, np.zeros(0, np.int64)).to_pylist() == []


def test_positions_look_up_each_distinct_id_once_and_keep_order(loaded):
    ids = pa.array([loaded.ids[5], "not-in-index", None, loaded.ids[5], loaded.ids[0], None], pa.string())
    got = ranking._positions(loaded, ids)
    assert got.dtype == np.int64 and got.tolist() == [5, -1, -1, 5, 0, -1]
    np.testing.assert_array_equal(got[[0, 1, 3, 4]], loaded.position_of(np.array(ids.to_pylist(), object)[[0, 1, 3, 4]]))
    assert ranking._positions(loaded, pa.array([], pa.string())).tolist() == []


def test_ranked_files_keep_statistics_for_user_and_rank_only(tmp_path):
    from functools import partial

    from pyspark.sql.pandas.types import to_arrow_schema

    from fusionrank.storage import store

    ids = [f"m{i:03d}" for i in range(200)]
    built = index.build(batches(ids, clustered(200, seed=8)), np.zeros((0, 32)), 32, 200, IndexConfig(type="flat"),
                        tmp_path / "idx", "v", "d")
    produce = partial(ranking.rank_partition, index_path=built.path, k=10, max_candidates=1000,
                      reason_history=5, search_batch=16)
    reports = list(store.write_batches_partition(
        iter([users_batch(index.load_index(built.path))]), produce, str(tmp_path / "out"), to_arrow_schema(ranking.RANKED_SCHEMA),
        distinct="user_id", dictionary_columns=("user_id", "reason", "reason_item_id", "model_version"),
        statistics_columns=("user_id", "rank")))
    path = reports[0].column("path")[0].as_py()
    group = pq.read_metadata(path).row_group(0)
    with_stats = {group.column(i).path_in_schema for i in range(group.num_columns) if group.column(i).is_stats_set}
    assert with_stats == {"user_id", "rank"}
    table = pq.read_table(path)
    assert table.num_rows == reports[0].column("rows")[0].as_py() > 0
    assert table.column("user_id").to_pylist() == sorted(table.column("user_id").to_pylist())
