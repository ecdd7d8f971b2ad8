"""The search side: `query_topk` from the logs, and `search()` for any query.

query_topk (computed at the end of the `rank` stage):

1. The `query.top_queries` most frequent queries of the `search` events in the last
   `query.lookback_days` of training events (lower-cased, whitespace collapsed).
2. Their engagement: every click, add_to_cart and purchase is attributed to the
   latest search before it in the same session; per (query, item) the events are
   summed with `query.event_weights` (Spark, on the executors).
3. On the driver (the query list is bounded by config): the queries are encoded
   with the text model, mapped into the index's space with
   `encoding.query_vectors` (the text part of a fused vector: image and behaviour
   parts zero, the same projection W), and searched in the run's FAISS index for
   `query.candidates` items; items engaged with after the query join the
   candidates. A candidate's similarity is the cosine between the query and the
   item's text part (`text_similarity`), so a behaviour part does not dilute it.
4. Re-rank: score = (1 - ctr_weight) * similarity + ctr_weight * ctr with
   ctr = engagement / (searches + ctr_prior), a click-through shrunk towards zero
   for rarely searched queries; the top `query.k` are kept.

`search(query, k)` (exported as `fusionrank.search`) answers any query, seen or not, from the latest index without
Spark: the run's precomputed rows when the query is in `query_topk`, otherwise
the index alone.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ENGAGEMENT_TYPES = ("view", "click", "add_to_cart", "purchase")


def normalize_query(text: str) -> str:
    """The form queries are counted and looked up in: lower case, single spaces."""
    return " ".join(str(text).lower().split())


# -- Spark side (bounded results only come back to the driver) -----------------------------
def _normalized(col):
    from pyspark.sql import functions as F

    return F.lower(F.trim(F.regexp_replace(col, r"\s+", " ")))


def frequent_queries(events, since: dt.datetime, until: dt.datetime, n: int, min_searches: int = 1):
    """(query, searches, users): the `n` most searched queries in [since, until)."""
    from pyspark.sql import functions as F

    from fusionrank.core.spark import utc_literal

    searches = events.where(
        (F.col("event_type") == "search") & F.col("query").isNotNull()
        & (F.col("event_ts") >= utc_literal(since)) & (F.col("event_ts") < utc_literal(until))
    ).select(_normalized(F.col("query")).alias("query"), "user_id")
    counted = searches.where(F.col("query") != "").groupBy("query").agg(
        F.count("*").alias("searches"), F.countDistinct("user_id").alias("users"))
    return counted.where(F.col("searches") >= min_searches).orderBy(F.desc("searches"), "query").limit(n)


def query_engagement(events, queries, since: dt.datetime, until: dt.datetime, weights: dict[str, float],
                     max_items: int):
    """(query, item_id, engagement, clicks): the events after a search of each of
    `queries` in the same session, attributed to the latest search before them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from fusionrank.core.spark import utc_literal

    types = [t for t, w in weights.items() if w > 0]
    in_window = (F.col("event_ts") >= utc_literal(since)) & (F.col("event_ts") < utc_literal(until))
    relevant = events.where(
        in_window & F.col("session_id").isNotNull()
        & ((F.col("event_type") == "search") | (F.col("event_type").isin(*types) & F.col("item_id").isNotNull()))
    ).select(
        "user_id", "session_id", "event_ts", "event_type", "item_id",
        F.when(F.col("event_type") == "search", _normalized(F.col("query"))).alias("search_query"),
        # A search and an event in the same second: the search came first.
        F.when(F.col("event_type") == "search", 0).otherwise(1).alias("_order"),
    )
    session = Window.partitionBy("user_id", "session_id").orderBy("event_ts", "_order").rowsBetween(
        Window.unboundedPreceding, Window.currentRow)
    attributed = relevant.withColumn("query", F.last("search_query", ignorenulls=True).over(session)).where(
        (F.col("event_type") != "search") & F.col("query").isNotNull())
    weight = F.lit(0.0)
    for event_type, w in weights.items():
        weight = F.when(F.col("event_type") == event_type, F.lit(float(w))).otherwise(weight)
    per_item = attributed.join(F.broadcast(queries.select("query")), "query").groupBy("query", "item_id").agg(
        F.sum(weight).alias("engagement"),
        F.sum(F.when(F.col("event_type") == "click", 1).otherwise(0)).cast("int").alias("clicks"),
    )
    top = Window.partitionBy("query").orderBy(F.desc("engagement"), "item_id")
    return per_item.withColumn("_rank", F.row_number().over(top)).where(F.col("_rank") <= max_items).drop("_rank")


# -- driver side (numpy, bounded by query.top_queries) ----------------------------------------
def encode_queries(texts: list[str], settings, model_version: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Query texts -> (text vectors, vectors in the index's space: text part only,
    the same projection, behaviour part zero)."""
    from fusionrank.vectors import behaviour
    from fusionrank.vectors import encode as encoding
    from fusionrank.vectors.encoders import get_text_encoder, text_model_path

    text_cfg = settings.models.text
    encoder = get_text_encoder(text_model_path(settings), dtype=text_cfg.dtype)
    text = encoder.encode(list(texts), batch_size=text_cfg.batch_size, max_length=text_cfg.max_length)
    fused = encoding.query_vectors(text, settings, model_version)
    return text, behaviour.to_ranking_space(fused, settings)


def text_similarity(item_vecs: np.ndarray, query_text: np.ndarray, settings, model_version: str | None) -> np.ndarray:
    """Cosine between a query's text vector and the text part of fused item vectors.

    The inner product with the fused vector would divide each item's text match by
    the norm of all its parts, so an item nobody interacted with (zero behaviour
    part) would outrank a better-matching popular one. The text part is read back
    through W (exactly for the identity and for orthogonal rotations).
    """
    from fusionrank.vectors import behaviour
    from fusionrank.vectors import encode as encoding

    item_vecs = behaviour.fused_part(item_vecs, settings)  # the index holds ranking-space vectors
    dims = encoding.fusion_dims(settings)
    w = encoding.projection_matrix(encoding.projection_spec(settings, model_version))
    part = item_vecs[:, :dims.text] if w is None else item_vecs @ w[:dims.text].T
    query = query_text / max(float(np.linalg.norm(query_text)), 1e-12)
    return encoding.l2_normalize(part) @ query.astype(np.float32)


def rerank(
    candidate_ids: list[str],
    similarities: np.ndarray,
    engagement: dict[str, tuple[float, int]],
    searches: int,
    k: int,
    ctr_weight: float,
    ctr_prior: float,
) -> list[tuple[str, float, float, float, int]]:
    """(item_id, score, similarity, ctr, clicks) of the best k candidates.

    score = (1 - ctr_weight) * similarity + ctr_weight * ctr, where
    ctr = engagement / (searches + ctr_prior); ties by item id so reruns agree.
    """
    rows = []
    denominator = max(float(searches) + ctr_prior, 1e-9)
    for item, similarity in zip(candidate_ids, similarities):
        engaged, clicks = engagement.get(item, (0.0, 0))
        ctr = min(1.0, engaged / denominator)
        score = (1.0 - ctr_weight) * float(similarity) + ctr_weight * ctr
        rows.append((item, score, float(similarity), ctr, int(clicks)))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows[:k]


def _check_dim(vectors: np.ndarray, loaded, where: str) -> None:
    from fusionrank.index.build import IndexError_

    if vectors.shape[1] != loaded.index.d:
        raise IndexError_(
            f"query vectors have {vectors.shape[1]} dims but the index at {where} has {loaded.index.d}: the "
            f"settings (models, fusion) differ from those the index was built with "
            f"(model_version {loaded.manifest.get('model_version')})")


def top_k_for_queries(
    queries: pd.DataFrame,
    engagement: pd.DataFrame,
    index_path: str,
    settings,
) -> pd.DataFrame:
    """queries: (query, searches); engagement: (query, item_id, engagement, clicks).
    Returns (query, rank, item_id, score, similarity, ctr, clicks, searches)."""
    from fusionrank.index.build import load_index

    cfg = settings.query
    columns = ["query", "rank", "item_id", "score", "similarity", "ctr", "clicks", "searches"]
    if queries.empty:
        return pd.DataFrame(columns=columns)
    loaded = load_index(index_path)
    version = loaded.manifest.get("model_version")
    texts = queries["query"].tolist()
    text, vectors = encode_queries(texts, settings, version)
    _check_dim(vectors, loaded, index_path)
    _, positions = loaded.index.search(vectors, min(int(loaded.index.ntotal), cfg.candidates))
    engaged_by_query: dict[str, dict[str, tuple[float, int]]] = {}
    for row in engagement.itertuples(index=False):
        engaged_by_query.setdefault(row.query, {})[row.item_id] = (float(row.engagement), int(row.clicks))
    rows = []
    for q, (query, searches) in enumerate(zip(texts, queries["searches"].astype(int))):
        found = [loaded.ids[p] for p in positions[q] if p >= 0]
        engaged = engaged_by_query.get(query, {})
        vecs, ids = loaded.vectors(found + sorted(set(engaged) - set(found)))
        sims = text_similarity(vecs, text[q], settings, version)
        for rank, (item, score, similarity, ctr, clicks) in enumerate(
                rerank(ids, sims, engaged, searches, cfg.k, cfg.ctr_weight, cfg.ctr_prior), start=1):
            rows.append((query, rank, item, score, similarity, ctr, clicks, int(searches)))
    return pd.DataFrame(rows, columns=columns)


def compute_query_topk(events, index_path: str, settings, since: dt.datetime, until: dt.datetime):
    """The query_topk rows (without run_date/model_version) as a pandas frame, and counts."""
    cfg = settings.query
    queries = frequent_queries(events, since, until, cfg.top_queries, cfg.min_searches)
    queries_pd = queries.toPandas()  # at most query.top_queries rows
    if queries_pd.empty:
        return top_k_for_queries(queries_pd, pd.DataFrame(), index_path, settings), {"queries": 0}
    engaged = query_engagement(events, queries, since, until, cfg.event_weights, cfg.max_engaged_items)
    engaged_pd = engaged.toPandas()  # at most top_queries x max_engaged_items rows
    out = top_k_for_queries(queries_pd, engaged_pd, index_path, settings)
    return out, {
        "queries": int(len(queries_pd)),
        "searches": int(queries_pd["searches"].sum()),
        "queries_with_clicks": int(engaged_pd["query"].nunique()) if not engaged_pd.empty else 0,
        "query_rows": int(len(out)),
    }


# -- the library call ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchHit:
    rank: int
    item_id: str
    score: float
    title: str | None


def _settings(settings):
    from fusionrank.core.config import Settings, load_config

    if isinstance(settings, Settings):
        return settings
    path = settings or os.environ.get("FUSIONRANK_CONF") or "conf/local.yaml"
    return load_config(path)


def latest_index_date(settings) -> str:
    from fusionrank.index.build import MANIFEST

    root = Path(settings.storage.index_root)
    dates = sorted(p.name.split("=", 1)[1] for p in root.glob("run_date=*") if (p / MANIFEST).exists())
    if not dates:
        raise FileNotFoundError(f"no index under {root}: run build_index first")
    return dates[-1]


def _delta_rows(table_path: str, run_date: str, columns: list[str], filter_expr) -> pd.DataFrame:
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(table_path):
        return pd.DataFrame(columns=columns)
    table = DeltaTable(table_path)
    if "run_date" not in table.metadata().partition_columns:
        return pd.DataFrame(columns=columns)
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("run_date", "=", run_date)])
    return dataset.to_table(columns=columns, filter=filter_expr).to_pandas()


def search(query: str, k: int = 10, settings=None, run_date: str | dt.date | None = None) -> list[SearchHit]:
    """The top `k` items for `query` over the index of `run_date` (default: the latest).

    `settings` is a Settings object or a config path (default: $FUSIONRANK_CONF or
    conf/local.yaml). A query that is in that night's `query_topk` gets those rows
    (they carry the click-through); any other query is encoded and searched in the
    index. No Spark session is needed.
    """
    import pyarrow.compute as pc

    from fusionrank.index.build import index_dir, load_index

    if not isinstance(query, str) or not normalize_query(query):
        raise ValueError("search needs a non-empty query string")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    settings = _settings(settings)
    day = str(run_date) if run_date else latest_index_date(settings)
    normalized = normalize_query(query)
    hits: list[tuple[str, float]] = []
    stored = _delta_rows(settings.storage.table_path("query_topk"), day, ["query", "rank", "item_id", "score"],
                         pc.field("query") == normalized)
    if len(stored) >= k:
        stored = stored.sort_values("rank").head(k)
        hits = list(zip(stored["item_id"], stored["score"].astype(float)))
    else:
        path = index_dir(settings.storage.index_root, day)
        loaded = load_index(path)
        version = loaded.manifest.get("model_version")
        text, vector = encode_queries([normalized], settings, version)
        _check_dim(vector, loaded, str(path))
        _, positions = loaded.index.search(vector, min(max(k, settings.query.candidates), int(loaded.index.ntotal)))
        vecs, ids = loaded.vectors([loaded.ids[p] for p in positions[0] if p >= 0])
        sims = text_similarity(vecs, text[0], settings, version)
        order = sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))[:k]
        hits = [(str(ids[j]), float(sims[j])) for j in order]
    titles = _delta_rows(settings.storage.table_path("catalog_clean"), day, ["item_id", "title"],
                         pc.field("item_id").isin([i for i, _ in hits]))
    title_of = dict(zip(titles["item_id"], titles["title"]))
    return [SearchHit(rank, item, score, title_of.get(item)) for rank, (item, score) in enumerate(hits, start=1)]
