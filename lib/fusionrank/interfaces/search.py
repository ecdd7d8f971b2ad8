"""`fusionrank.search`: any query, seen or not, against a night's index, without Spark.

The query side is rebuilt from the index's manifest (its ModelSpec), never from
today's settings: a night's index is always searched in the space it was built in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from fusionrank.core.catalog import layout
from fusionrank.core.config import Settings, load_config
from fusionrank.index.build import load_index
from fusionrank.index.lexical import LexicalIndex, has_lexical, lexical_dir
from fusionrank.publish.gate import PUBLISHED, TABLE as PUBLISHED_TABLE
from fusionrank.ranks.hybrid import item_categories
from fusionrank.ranks.query_memory import MEMORY_COLUMNS, QueryMemory
from fusionrank.storage import fs
from fusionrank.vectors.fusion import l2_normalize
from fusionrank.ranks.query_topk import (check_dim, encode_queries, hybrid_answers, index_spec, normalize_query,
                                         text_similarity)


@dataclass(frozen=True)
class SearchHit:
    rank: int
    item_id: str
    score: float
    title: str | None


def _settings(settings) -> Settings:
    if isinstance(settings, Settings):
        return settings
    path = settings or os.environ.get("FUSIONRANK_CONF") or "conf/local.yaml"
    return load_config(path)


def latest_index_date(settings) -> str:
    dates = layout(settings).index_dates()
    if not dates:
        raise FileNotFoundError(f"no index under {layout(settings).index_root}: run build_index first")
    return dates[-1]


def _delta_rows(table_path: str, run_date: str, columns: list[str], filter_expr, version: int | None = None
                ) -> pd.DataFrame:
    if not fs.is_delta_table(table_path):
        return pd.DataFrame(columns=columns)
    table = fs.delta_table(table_path, version)
    if "run_date" not in table.metadata().partition_columns:
        return pd.DataFrame(columns=columns)
    present = [c for c in columns if c in table.schema().to_arrow().names]
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("run_date", "=", run_date)])
    frame = dataset.to_table(columns=present, filter=filter_expr).to_pandas()
    for c in set(columns) - set(present):
        frame[c] = None
    return frame


@dataclass(frozen=True)
class Published:
    run_date: str
    index_path: str | None
    table_versions: dict


def published_snapshot(settings) -> Published | None:
    """The current published snapshot read with delta-rs (no Spark; None before the first publish)."""
    path = settings.storage.table_path(PUBLISHED_TABLE)
    if not fs.is_delta_table(path):
        return None
    frame = fs.delta_table(path).to_pyarrow_dataset().to_table(
        columns=["run_date", "decided_at", "status", "index_path", "table_versions"],
        filter=pc.field("status") == PUBLISHED).to_pandas()
    if frame.empty:
        return None
    row = frame.sort_values(["run_date", "decided_at"]).iloc[-1]
    return Published(str(row["run_date"]), row["index_path"], json.loads(row["table_versions"] or "{}"))


def _user_vector(settings, day: str, user_id: str, version: int | None) -> np.ndarray:
    rows = _delta_rows(settings.storage.table_path("user_profiles"), day, ["user_id", "profile_vec"],
                       pc.field("user_id") == user_id, version)
    if rows.empty or rows["profile_vec"].iloc[0] is None:
        raise LookupError(f"user {user_id!r} has no profile in user_profiles for {day} (ids as in user_profiles)")
    return np.asarray(rows["profile_vec"].iloc[0], dtype=np.float32)


def query_memory(settings, day: str, version: int | None) -> QueryMemory:
    """The night's query memory (empty when the night wrote none: no query.hybrid)."""
    frame = _delta_rows(settings.storage.table_path("query_memory"), day, MEMORY_COLUMNS, None, version)
    return QueryMemory.from_frame(frame)


def search(query: str, k: int = 10, settings=None, run_date: str | dt.date | None = None,
           user_id: str | None = None) -> list[SearchHit]:
    """The top `k` items for `query` in the published snapshot (or the index of `run_date`).

    `settings` is a Settings object or a config path (default: $FUSIONRANK_CONF or
    conf/local.yaml). Without `run_date` the current published snapshot is searched
    (its index and its query_topk at the pinned version); before anything is
    published, the latest index. A query that is in that night's `query_topk` gets
    those rows (they carry the click-through); any other query is encoded with the
    index's own text model and searched in the index, fused with the night's BM25
    index when `query.hybrid` (ranks.hybrid) and given the intent and pooled
    click-through of the night's nearest frequent queries (its query_memory, pinned
    in the snapshot beside query_topk). With `user_id` (as in user_profiles)
    each candidate's score gains `query.user_weight` x cosine(user profile, item).
    """
    if not isinstance(query, str) or not normalize_query(query):
        raise ValueError("search needs a non-empty query string")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    settings = _settings(settings)
    snapshot = published_snapshot(settings) if run_date is None else None
    if snapshot is not None:
        day, path, versions = snapshot.run_date, str(snapshot.index_path or layout(settings).index(snapshot.run_date)), \
            snapshot.table_versions
    else:
        day = str(run_date) if run_date else latest_index_date(settings)
        path, versions = layout(settings).index(day), {}
    normalized = normalize_query(query)
    cfg = settings.query
    fetch = k if user_id is None else max(k, cfg.candidates)
    hits: list[tuple[str, float]] = []
    stored = _delta_rows(settings.storage.table_path("query_topk"), day, ["query", "rank", "item_id", "score"],
                         pc.field("query") == normalized, versions.get("query_topk"))
    loaded = None
    if len(stored) >= k:
        stored = stored.sort_values("rank")
        hits = list(zip(stored["item_id"], stored["score"].astype(float)))
    else:
        loaded = load_index(path)
        spec = index_spec(loaded, str(path))
        text, vector = encode_queries([normalized], spec)
        check_dim(vector, loaded, str(path))
        _, positions = loaded.index.search(vector, min(max(fetch, cfg.candidates), int(loaded.index.ntotal)))
        vecs, ids = loaded.vectors([loaded.ids[p] for p in positions[0] if p >= 0])
        sims = text_similarity(vecs, text[0], spec)
        order = sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))
        if cfg.hybrid and has_lexical(path):
            lexical = LexicalIndex.load(lexical_dir(path)).search([normalized], cfg.candidates)[0][0]
            memory = query_memory(settings, day, versions.get("query_memory"))
            ranked = hybrid_answers([normalized], text, [[ids[j] for j in order]], [lexical],
                                    max(fetch, cfg.candidates), cfg, memory,
                                    item_categories(path) if len(memory) else {})[0]
            hits = [(item, score) for item, score, *_ in ranked]
        else:
            hits = [(str(ids[j]), float(sims[j])) for j in order]
    if user_id is not None and hits:
        profile = _user_vector(settings, day, user_id, versions.get("user_profiles"))
        loaded = loaded or load_index(path)
        vecs, known = loaded.vectors([i for i, _ in hits])
        affinity = dict(zip(known, l2_normalize(vecs) @ (profile / max(float(np.linalg.norm(profile)), 1e-12))))
        hits = [(i, s + cfg.user_weight * float(affinity.get(i, 0.0))) for i, s in hits]
        hits.sort(key=lambda h: (-h[1], h[0]))
    hits = hits[:k]
    titles = _delta_rows(settings.storage.table_path("catalog_clean"), day, ["item_id", "title"],
                         pc.field("item_id").isin([i for i, _ in hits]), versions.get("catalog_clean"))
    title_of = dict(zip(titles["item_id"], titles["title"]))
    return [SearchHit(rank, item, score, title_of.get(item)) for rank, (item, score) in enumerate(hits, start=1)]
