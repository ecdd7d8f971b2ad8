"""rank: per-user top-K and similar items, searched on the executors.

Each Python worker loads the run's FAISS index once (`index.load_index`) and
searches its users in batches: candidates are fetched with room for the user's
seen items, which are removed, at most `rank.max_per_category` items of one
top-level category are kept, and every recommendation is explained by the history
item that contributed most to its score (weight x similarity), named by its title
(the index artifact carries titles and categories). Batches travel as Arrow
(mapInArrow) and everything after the FAISS search is vectorised over the batch:
no per-user or per-row Python. The stage has the workers write the output
Parquet themselves (`storage.ExecutorBatches`): turning millions of result rows
into Spark rows only to write them again was most of the stage's time.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from fusionrank.core.arrays import unique_in_range
from fusionrank.core.spark import task_cpus
from fusionrank.index.build import arrow_vectors, load_index
from fusionrank.core.catalog import INDEX_VECTOR, RECS_ITEM_SIMILAR, RECS_USER_TOPK
from fusionrank.ranks.rerank import apply as rerank
from fusionrank.storage.store import ExecutorBatches


def _columns(schema: T.StructType, names: list[str]) -> T.StructType:
    return T.StructType([schema[name] for name in names])


# What the executors emit: the tables' columns but run_date (the partition folder).
RANKED_SCHEMA = _columns(RECS_USER_TOPK, ["user_id", "rank", "item_id", "score", "reason", "reason_item_id",
                                          "model_version"])
SIMILAR_SCHEMA = _columns(RECS_ITEM_SIMILAR, ["item_id", "rank", "similar_item_id", "score"])


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, float) and np.isnan(value):
        return []
    return list(value)


def top_unseen(ids: np.ndarray, scores: np.ndarray, seen: set[str], k: int) -> list[tuple[str, float]]:
    """The first k (item, score) of one search result that the user has not seen."""
    out: list[tuple[str, float]] = []
    for item, score in zip(ids, scores):
        if item is None or item in seen:
            continue
        out.append((item, float(score)))
        if len(out) == k:
            break
    return out


def pick_reasons(
    candidate_vecs: np.ndarray,
    history_vecs: np.ndarray,
    history_ids: list[str],
    history_weights: np.ndarray,
) -> list[str | None]:
    """For each candidate, the history item with the largest weight x similarity."""
    if len(history_ids) == 0 or len(candidate_vecs) == 0:
        return [None] * len(candidate_vecs)
    contribution = (candidate_vecs @ history_vecs.T) * history_weights[None, :]
    return [history_ids[j] for j in contribution.argmax(axis=1)]


def _list_rows(column: pa.Array, limit: int | None = None) -> tuple[np.ndarray, pa.Array]:
    """(row of every element, the elements) of a list column; null lists are empty and
    only the first `limit` elements of each list are kept."""
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    if limit is not None and len(rows) and int(lengths.max()) > limit:  # else nothing to cut
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = (np.arange(len(rows)) - starts) < limit
        rows, values = rows[keep], values.filter(pa.array(keep))
    return rows, values


def _drop_and_cut(positions: np.ndarray, excluded_rows: np.ndarray, excluded_positions: np.ndarray, k: int,
                  categories: np.ndarray | None = None, max_per_category: int = 0):
    """Per query row, the first k result columns that are real hits (position >= 0), not
    excluded for that row (seen items, the item itself) and, with `max_per_category`,
    not beyond that many of one category (`categories`: code per index position, -1
    none; items without a category are never capped). Returns (row, column, rank)
    arrays in row-major order, i.e. by row, then by descending score."""
    n, width = positions.shape
    stride = np.int64(max(int(positions.max(initial=0)), int(excluded_positions.max(initial=0))) + 1)
    keep = positions >= 0
    if len(excluded_positions):
        excluded = np.unique(excluded_rows.astype(np.int64) * stride + excluded_positions)
        keep &= ~np.isin(np.arange(n, dtype=np.int64)[:, None] * stride + positions, excluded)
    if max_per_category > 0 and categories is not None and len(categories):
        _cap_per_category(keep, np.where(positions >= 0, categories[np.maximum(positions, 0)], -1), max_per_category)
    ranks = np.cumsum(keep, axis=1)
    keep &= ranks <= k
    rows, cols = np.nonzero(keep)
    return rows, cols, ranks[rows, cols].astype(np.int32)


def _cap_per_category(keep: np.ndarray, codes: np.ndarray, max_per_category: int) -> None:
    """Clear `keep` (in place) past the first `max_per_category` kept entries of each
    (row, category code >= 0), counting along the row (descending score)."""
    rows, cols = np.nonzero(keep & (codes >= 0))
    if len(rows) == 0:
        return
    key = rows.astype(np.int64) * (int(codes.max()) + 1) + codes[rows, cols]
    order = np.argsort(key, kind="stable")  # stable: within a group, still by column
    grouped = key[order]
    starts = np.r_[True, grouped[1:] != grouped[:-1]]
    group_first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    nth = np.empty(len(order), dtype=np.int64)
    nth[order] = np.arange(len(order)) - group_first
    over = nth >= max_per_category
    keep[rows[over], cols[over]] = False


def _positions(loaded, ids: pa.Array) -> np.ndarray:
    """`loaded.position_of` of an Arrow string array, looked up once per distinct id: a
    batch's users share many history and seen items, and each lookup turns an Arrow
    string into a Python one before hashing it."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(ids)
    distinct = loaded.position_of(encoded.dictionary.to_numpy(zero_copy_only=False))
    codes = encoded.indices
    if codes.null_count:  # a null id is unknown
        distinct = np.append(distinct, np.int64(-1))
        codes = pc.fill_null(codes, len(distinct) - 1)
    return np.take(distinct, codes.to_numpy(zero_copy_only=False))


def _reasons_batched(loaded, rows: np.ndarray, ranks: np.ndarray, item_positions: np.ndarray, n_users: int,
                     k: int, chunk: pa.RecordBatch, reason_history: int) -> np.ndarray:
    """Index position of each recommendation's reason item (-1: none), as `pick_reasons`
    per user (largest weight x similarity over the first `reason_history` history items)."""
    reason = np.full(len(rows), -1, dtype=np.int64)
    hist_rows, hist_ids = _list_rows(chunk.column("history_item_ids"), reason_history)
    w_rows, hist_w = _list_rows(chunk.column("history_weights"), reason_history)
    if len(hist_rows) == 0 or len(rows) == 0:
        return reason
    if len(w_rows) != len(hist_rows) or (w_rows != hist_rows).any():
        raise ValueError("user_profiles: history_item_ids and history_weights differ in length")
    hist_pos = _positions(loaded, hist_ids)
    hist_w = hist_w.to_numpy(zero_copy_only=False).astype(np.float32)
    known = hist_pos >= 0
    if not known.all():
        hist_rows, hist_pos, hist_w = hist_rows[known], hist_pos[known], hist_w[known]
    if len(hist_rows) == 0:
        return reason
    counts = np.bincount(hist_rows, minlength=n_users)
    width, dim = int(counts.max()), loaded.index.d
    everyone = bool((counts > 0).all())
    if (counts == width).all():  # every user has `width` history items: already (user, slot) ordered
        hist_vecs = loaded.reconstruct(hist_pos).reshape(n_users, width, dim)
        weights = hist_w.reshape(n_users, width)
        hist_at = hist_pos.reshape(n_users, width)
    else:
        slot = np.arange(len(hist_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        # (user, slot) -> history entry, as one gather: a user's unused slots repeat their
        # slot 0 (an equal value never wins argmax over the earlier real slot, so no -inf
        # masking pass is needed); users without history get a zero row (masked below).
        source = np.full(n_users * width, len(hist_rows), dtype=np.int64)
        source[hist_rows.astype(np.int64) * width + slot] = np.arange(len(hist_rows))
        first = np.repeat(np.cumsum(counts) - counts, width)
        unused = (source == len(hist_rows)) & np.repeat(counts > 0, width)
        source[unused] = first[unused]
        vecs = loaded.reconstruct(hist_pos)
        if everyone:  # every slot names a history entry: no zero row needed
            hist_vecs = np.take(vecs, source, axis=0)
        else:
            hist_vecs = np.take(np.concatenate([vecs, np.zeros((1, dim), np.float32)]), source, axis=0)
        hist_vecs = hist_vecs.reshape(n_users, width, dim)
        weights = np.take(np.append(hist_w, np.float32(0)), source).reshape(n_users, width)
        hist_at = np.take(np.append(hist_pos, -1), source).reshape(n_users, width)
    full = len(rows) == n_users * k  # every user has k results: rows and ranks are already in place
    if full:
        cand_vecs = loaded.reconstruct(item_positions).reshape(n_users, k, dim)
    else:
        cand_vecs = np.zeros((n_users * k, dim), dtype=np.float32)
        cand_vecs[rows.astype(np.int64) * k + (ranks - 1)] = loaded.reconstruct(item_positions)
        cand_vecs = cand_vecs.reshape(n_users, k, dim)
    contribution = np.matmul(cand_vecs, hist_vecs.transpose(0, 2, 1))
    contribution *= weights[:, None, :]
    best = contribution.argmax(axis=2)  # (users, k): slot of the best history item
    if full and everyone:
        return np.take_along_axis(hist_at, best, axis=1).ravel()
    at = rows.astype(np.int64)
    slot_of = np.take(best.ravel(), at * k + (ranks - 1))
    if everyone:
        return np.take(hist_at.ravel(), at * width + slot_of)
    has_history = np.take(counts, rows) > 0
    reason[has_history] = np.take(hist_at.ravel(), (at * width + slot_of)[has_history])
    return reason


def _take_ids(loaded, positions: np.ndarray) -> pa.Array:
    """Item ids at index `positions` (-1: null) as an Arrow string array."""
    valid = positions >= 0
    if valid.all():  # no null to place
        return loaded.ids_arrow.take(pa.array(positions)).cast(pa.string())
    taken = loaded.ids_arrow.take(pa.array(np.where(valid, positions, 0)))
    return pc.if_else(pa.array(valid), taken, pa.scalar(None, taken.type)).cast(pa.string())


def reason_text(loaded, reasons: np.ndarray, reason_ids: pa.Array | None = None) -> pa.Array:
    """'similar to <title of the reason item>' (its id where the title is unknown), or
    'close to your profile' where there is no reason item. `reason_ids`: the reason
    items' ids if already taken."""
    ids = _take_ids(loaded, reasons) if reason_ids is None else reason_ids
    titles = loaded.titles.take(pa.array(np.maximum(reasons, 0))) if loaded.titles is not None and len(reasons) \
        else pa.nulls(len(reasons), pa.string())
    named = pc.coalesce(pc.if_else(pa.array(reasons >= 0), titles, pa.scalar(None, pa.string())), ids)
    return pc.fill_null(pc.binary_join_element_wise("similar to ", named, ""), "close to your profile")


def _dictionary(indices: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), values)


def _bounded_unique(values: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(values, return_inverse=True)` for integers in [-1, bound) (index
    positions, -1: none), with a presence table of bound + 1 flags instead of a sort."""
    values = np.asarray(values)
    if len(values) == 0:
        return np.unique(values, return_inverse=True)
    shifted = values.astype(np.int64) + 1
    if shifted.min() < 0 or shifted.max() > bound:
        raise ValueError(f"_bounded_unique: values outside [-1, {bound})")
    distinct, inverse = unique_in_range(shifted, bound + 1)
    return (distinct - 1).astype(values.dtype), inverse


def reason_columns(loaded, reasons: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(reason, reason_item_id) as dictionary arrays over the batch's distinct reason
    items: the texts are built once per distinct item, not once per row (a batch of
    512 users x k=100 rows names a few thousand history items), and the Parquet writer
    stores the dictionaries as they are instead of hashing every row's string."""
    distinct, inverse = _bounded_unique(reasons, int(loaded.index.ntotal))
    ids = _take_ids(loaded, distinct)
    texts = reason_text(loaded, distinct, ids)  # -1 (no reason item): "close to your profile"
    if len(distinct) and distinct[0] < 0:  # the id column is null there, its dictionary has no null
        ids_dict = ids.slice(1)
        id_array = pa.DictionaryArray.from_arrays(pa.array(inverse - 1, pa.int32(), mask=inverse == 0), ids_dict)
    else:
        id_array = _dictionary(inverse, ids)
    return _dictionary(inverse, texts), id_array


def rank_chunk(loaded, chunk: pa.RecordBatch, k: int, max_candidates: int, reason_history: int,
               max_per_category: int = 0, reranker=None, version: str | None = None,
               dictionaries: bool = False) -> pa.RecordBatch | None:
    """Top-k unseen items (with reasons) of one batch of users: one FAISS search, the rest
    vectorised. A re-ranker plugs in between the search and `_drop_and_cut`: rescore
    `scores` (same shape as `positions`) and re-sort each row. `dictionaries`: the
    repeating string columns as dictionary arrays (the stage's Parquet writers), else
    plain strings."""

    chunk = chunk.filter(pc.is_valid(chunk.column("profile_vec")))  # no profile, nothing to search with
    n, total = chunk.num_rows, int(loaded.index.ntotal)
    if n == 0 or total == 0:
        return None
    seen_rows, seen_ids = _list_rows(chunk.column("seen"))
    longest_seen = int(np.bincount(seen_rows, minlength=n).max()) if len(seen_rows) else 0
    diverse = max_per_category > 0 and loaded.category_codes is not None
    # With a per-category cap, fetch deeper so that k remain after capping.
    fetch = min(total, max_candidates, (3 * k if diverse else k) + longest_seen)
    if reranker is not None:  # the second stage: its candidates, re-ordered by the model
        fetch = min(total, reranker.candidates + longest_seen)
    scores, positions = loaded.search(arrow_vectors(chunk, "profile_vec", loaded.index.d), fetch)
    sources = None
    if reranker is not None:
        scores, positions, sources = rerank.rerank_chunk(loaded, reranker, chunk, positions)
    seen_pos = _positions(loaded, seen_ids)
    rows, cols, ranks = _drop_and_cut(positions, seen_rows[seen_pos >= 0], seen_pos[seen_pos >= 0], k,
                                      loaded.category_codes, max_per_category if diverse else 0)
    if len(rows) == 0:
        return None
    item_positions = positions[rows, cols]
    reasons = _reasons_batched(loaded, rows, ranks, item_positions, n, k, chunk, reason_history)
    if sources is None:
        reason, reason_ids = reason_columns(loaded, reasons)
    else:  # re-ranked: candidates from co-occurrence or trending say so
        reason_ids = _take_ids(loaded, reasons)
        reason, reason_ids = rerank.source_reasons(loaded, reason_text(loaded, reasons, reason_ids), reason_ids,
                                                   sources[0][rows, cols], sources[1][rows, cols])
    # user_id, reason, reason_item_id and model_version repeat within a batch: dictionary
    # arrays (the files store them dictionary-encoded; Spark readers see plain strings).
    model_version = version or loaded.manifest.get("model_version")
    columns = [_dictionary(rows, chunk.column("user_id").cast(pa.string())), pa.array(ranks, pa.int32()),
               _take_ids(loaded, item_positions), pa.array(scores[rows, cols], pa.float32()), reason, reason_ids,
               _dictionary(np.zeros(len(rows), np.int32), pa.array([model_version], pa.string()))]
    if not dictionaries:
        columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in columns]
    return pa.RecordBatch.from_arrays(columns, names=RANKED_SCHEMA.fieldNames())


class PopularLists:
    """policies.popular_lists ({key: [(item_id, score, reason)]}) as flat Arrow arrays,
    built once per worker, so expanding a batch of cold users is a vectorised take."""

    def __init__(self, popular: dict):
        keys = sorted(popular)
        entries = [entry for key in keys for entry in popular[key]]
        self.index = {key: i for i, key in enumerate(keys)}
        self.lengths = np.array([len(popular[key]) for key in keys] + [0], dtype=np.int64)  # last: unknown key
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.items = pa.array([e[0] for e in entries], pa.string())
        self.scores = pa.array([e[1] for e in entries], pa.float32())
        self.reasons = pa.array([e[2] for e in entries], pa.string())


def popular_rows(chunk: pa.RecordBatch, popular: PopularLists | None, version: str | None) -> pa.RecordBatch | None:
    """The rows of the users in `chunk` without a profile whose `popular_list` names one
    of the `popular` lists."""
    if popular is None or "popular_list" not in chunk.schema.names:
        return None
    cold = chunk.filter(pc.and_(pc.is_null(chunk.column("profile_vec")), pc.is_valid(chunk.column("popular_list"))))
    if cold.num_rows == 0:
        return None
    unknown = len(popular.lengths) - 1
    lists = np.array([popular.index.get(key, unknown) for key in cold.column("popular_list").to_pylist()])
    lengths = popular.lengths[lists]
    if lengths.sum() == 0:
        return None
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    entry = pa.array(np.repeat(popular.starts[lists], lengths) + within)
    n = len(entry)
    return pa.RecordBatch.from_arrays(
        [cold.column("user_id").take(pa.array(np.repeat(np.arange(cold.num_rows), lengths))).cast(pa.string()),
         pa.array(within + 1, pa.int32()), popular.items.take(entry), popular.scores.take(entry),
         popular.reasons.take(entry), pa.nulls(n, pa.string()), pa.repeat(pa.scalar(version, pa.string()), n)],
        names=RANKED_SCHEMA.fieldNames(),
    )


def rank_partition(
    batches: Iterator[pa.RecordBatch],
    index_path: str,
    k: int,
    max_candidates: int,
    reason_history: int,
    search_batch: int,
    use_gpu: bool = False,
    max_per_category: int = 0,
    popular: dict | None = None,
    rerank_dir: str | None = None,
    version: str | None = None,
    rerank_compiled: bool = True,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: top-k unseen items per user, with reasons, `search_batch` users per
    search; users without a profile get their popular list (cold start), if any."""
    import faiss


    faiss.omp_set_num_threads(task_cpus())
    loaded = load_index(index_path, use_gpu=use_gpu)  # once per Python worker
    lists = PopularLists(popular) if popular else None
    reranker = rerank.load_reranker(rerank_dir, rerank_compiled) if rerank_dir else None
    for batch in batches:
        for start in range(0, batch.num_rows, search_batch):
            chunk = batch.slice(start, search_batch)
            for out in (rank_chunk(loaded, chunk, k, max_candidates, reason_history, max_per_category, reranker,
                                   version, dictionaries=True),
                        popular_rows(chunk, lists, loaded.manifest.get("model_version"))):
                if out is not None:
                    yield out


def similar_partition(batches: Iterator[pa.RecordBatch], index_path: str, k: int, search_batch: int = 1024,
                      use_gpu: bool = False) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the k nearest other items of every item."""
    import faiss


    faiss.omp_set_num_threads(task_cpus())
    loaded = load_index(index_path, use_gpu=use_gpu)
    fetch = min(int(loaded.index.ntotal), k + 1)
    for batch in batches:
        for start in range(0, batch.num_rows, search_batch):
            chunk = batch.slice(start, search_batch)
            chunk = chunk.filter(pc.is_valid(chunk.column(INDEX_VECTOR)))
            if chunk.num_rows == 0 or fetch <= 0:
                continue
            scores, positions = loaded.search(arrow_vectors(chunk, INDEX_VECTOR, loaded.index.d), fetch)
            own = loaded.position_of(chunk.column("item_id").to_numpy(zero_copy_only=False))
            rows, cols, ranks = _drop_and_cut(positions, np.nonzero(own >= 0)[0], own[own >= 0], k)
            if len(rows) == 0:
                continue
            yield pa.RecordBatch.from_arrays(
                [chunk.column("item_id").take(pa.array(rows)).cast(pa.string()), pa.array(ranks, pa.int32()),
                 _take_ids(loaded, positions[rows, cols]), pa.array(scores[rows, cols], pa.float32())],
                names=SIMILAR_SCHEMA.fieldNames(),
            )


def rank_batches(users: DataFrame, index_path: str, rank_cfg, partitions: int = 0,
                 use_gpu: bool = False, popular: dict | None = None, rerank_dir: str | None = None,
                 version: str | None = None, rerank_compiled: bool = True) -> ExecutorBatches:
    """users: (user_id, profile_vec, history_item_ids, history_weights, seen[, popular_list])
    -> the recs_user_topk rows (but run_date) as Arrow batches made on the executors."""
    body = partial(
        rank_partition,
        index_path=index_path,
        k=rank_cfg.k,
        max_candidates=rank_cfg.max_candidates,
        reason_history=rank_cfg.reason_history,
        search_batch=rank_cfg.search_batch,
        use_gpu=use_gpu,
        max_per_category=rank_cfg.max_per_category,
        popular=popular,
        rerank_dir=rerank_dir,
        version=version,
        rerank_compiled=rerank_compiled,
    )
    return ExecutorBatches(_stable_batches(users, "user_id", partitions), body, RANKED_SCHEMA, distinct="user_id",
                           dictionary_columns=("user_id", "reason", "reason_item_id", "model_version"),
                           # Readers prune on a user's rows (and ranks); item ids span every row group.
                           statistics_columns=("user_id", "rank"))


def rank_users(users: DataFrame, index_path: str, rank_cfg, partitions: int = 0, use_gpu: bool = False) -> DataFrame:
    """`rank_batches` as a Spark DataFrame (for inspection and tests; the stage writes
    the batches directly)."""
    return rank_batches(users, index_path, rank_cfg, partitions, use_gpu).to_dataframe()


def _stable_batches(df: DataFrame, key: str, partitions: int = 0) -> DataFrame:
    """Hash-partition and sort by `key`, so every rerun searches the same batches:
    BLAS results depend (in the last bits) on the batch a query is in. Default: one
    partition per core (each Python worker loads the index once and keeps it)."""
    parts = partitions or df.sparkSession.sparkContext.defaultParallelism
    return df.repartition(parts, key).sortWithinPartitions(key)


def similar_batches(items: DataFrame, index_path: str, k: int, partitions: int = 0,
                    use_gpu: bool = False) -> ExecutorBatches:
    """items: (item_id, rec_vec) -> recs_item_similar rows (but run_date) as Arrow batches."""
    return ExecutorBatches(_stable_batches(items, "item_id", partitions),
                           partial(similar_partition, index_path=index_path, k=k, use_gpu=use_gpu), SIMILAR_SCHEMA)


def similar_items(items: DataFrame, index_path: str, k: int, partitions: int = 0, use_gpu: bool = False) -> DataFrame:
    return similar_batches(items, index_path, k, partitions, use_gpu).to_dataframe()
