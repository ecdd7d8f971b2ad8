"""rank: per-user top-K and similar items, searched on the executors.

Each Python worker loads the run's FAISS index once (`index.load_index`) and
searches its users in batches: candidates are fetched with room for the user's
seen items, which are removed, and every recommendation is explained by the
history item that contributed most to its score (weight x similarity).
"""

from __future__ import annotations

from functools import partial
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.data.schemas import RECS_ITEM_SIMILAR, RECS_USER_TOPK


def _columns(schema: T.StructType, names: list[str]) -> T.StructType:
    return T.StructType([schema[name] for name in names])


# What the executors emit; run_date, reason text and model_version are added after.
RANKED_SCHEMA = _columns(RECS_USER_TOPK, ["user_id", "rank", "item_id", "score", "reason_item_id"])
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


def rank_partition(
    batches: Iterator[pd.DataFrame],
    index_path: str,
    k: int,
    max_candidates: int,
    reason_history: int,
    search_batch: int,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: top-k unseen items per user, with reasons."""
    import faiss

    from fusionrank.index import load_index
    from fusionrank.spark import task_cpus

    faiss.omp_set_num_threads(task_cpus())
    loaded = load_index(index_path)
    total = int(loaded.index.ntotal)
    for pdf in batches:
        for start in range(0, len(pdf), search_batch):
            chunk = pdf.iloc[start:start + search_batch]
            seen_sets = [set(_as_list(s)) for s in chunk["seen"]]
            fetch = min(total, max_candidates, k + max((len(s) for s in seen_sets), default=0))
            if fetch <= 0:
                continue
            queries = np.ascontiguousarray(np.stack(chunk["profile_vec"].map(np.asarray).tolist()), dtype=np.float32)
            scores, positions = loaded.index.search(queries, fetch)
            rows = []
            for row, user_id, seen, score_row, pos_row in zip(
                chunk.itertuples(index=False), chunk["user_id"], seen_sets, scores, positions
            ):
                ids = np.where(pos_row >= 0, loaded.ids[np.maximum(pos_row, 0)], None)
                picked = top_unseen(ids, score_row, seen, k)
                if not picked:
                    continue
                hist_ids = _as_list(row.history_item_ids)[:reason_history]
                hist_w = np.asarray(_as_list(row.history_weights)[:reason_history], dtype=np.float32)
                hist_vecs, known = loaded.vectors(hist_ids)
                hist_w = hist_w[[hist_ids.index(i) for i in known]] if known else hist_w[:0]
                cand_vecs, _ = loaded.vectors([item for item, _ in picked])
                reasons = pick_reasons(cand_vecs, hist_vecs, known, hist_w)
                for rank, ((item, score), reason) in enumerate(zip(picked, reasons), start=1):
                    rows.append((user_id, rank, item, score, reason))
            if rows:
                yield pd.DataFrame(rows, columns=RANKED_SCHEMA.fieldNames())


def similar_partition(batches: Iterator[pd.DataFrame], index_path: str, k: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the k nearest other items of every item."""
    import faiss

    from fusionrank.index import load_index
    from fusionrank.spark import task_cpus

    faiss.omp_set_num_threads(task_cpus())
    loaded = load_index(index_path)
    fetch = min(int(loaded.index.ntotal), k + 1)
    for pdf in batches:
        if pdf.empty or fetch <= 0:
            continue
        queries = np.ascontiguousarray(np.stack(pdf["fused_vec"].map(np.asarray).tolist()), dtype=np.float32)
        scores, positions = loaded.index.search(queries, fetch)
        rows = []
        for item_id, score_row, pos_row in zip(pdf["item_id"], scores, positions):
            ids = np.where(pos_row >= 0, loaded.ids[np.maximum(pos_row, 0)], None)
            for rank, (other, score) in enumerate(top_unseen(ids, score_row, {item_id}, k), start=1):
                rows.append((item_id, rank, other, score))
        if rows:
            yield pd.DataFrame(rows, columns=SIMILAR_SCHEMA.fieldNames())


def rank_users(users: DataFrame, index_path: str, rank_cfg, partitions: int = 0) -> DataFrame:
    """users: (user_id, profile_vec, history_item_ids, history_weights, seen)."""
    users = _stable_batches(users, "user_id", partitions)
    body = partial(
        rank_partition,
        index_path=index_path,
        k=rank_cfg.k,
        max_candidates=rank_cfg.max_candidates,
        reason_history=rank_cfg.reason_history,
        search_batch=rank_cfg.search_batch,
    )
    return users.mapInPandas(body, RANKED_SCHEMA)


def _stable_batches(df: DataFrame, key: str, partitions: int = 0) -> DataFrame:
    """Hash-partition and sort by `key`, so every rerun searches the same batches:
    BLAS results depend (in the last bits) on the batch a query is in."""
    parts = partitions or int(df.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    return df.repartition(parts, key).sortWithinPartitions(key)


def similar_items(items: DataFrame, index_path: str, k: int, partitions: int = 0) -> DataFrame:
    """items: (item_id, fused_vec)."""
    items = _stable_batches(items, "item_id", partitions)
    return items.mapInPandas(partial(similar_partition, index_path=index_path, k=k), SIMILAR_SCHEMA)


def explain(recs: DataFrame, catalog: DataFrame) -> DataFrame:
    """Add a readable `reason` from the reason item's title."""
    titles = catalog.select(F.col("item_id").alias("reason_item_id"), F.col("title").alias("_reason_title"))
    joined = recs.join(titles, "reason_item_id", "left")
    reason = F.when(
        F.col("_reason_title").isNotNull(), F.concat(F.lit("similar to "), F.col("_reason_title"))
    ).otherwise(F.lit("close to your profile"))
    return joined.withColumn("reason", reason).drop("_reason_title")
