"""query_topk: the most frequent queries' top items, from the logs and the index.

Computed at the end of the `rank` stage:

1. The `query.top_queries` most frequent queries of the `search` events in the last
   `query.lookback_days` of training events (lower-cased, whitespace collapsed).
2. Their engagement: every click, add_to_cart and purchase is attributed to the
   latest search before it in the same session; per (query, item) the events are
   summed with `query.event_weights` (Spark, on the executors).
3. On the driver (the query list is bounded by config): the queries are encoded
   with the text model of the index's ModelSpec (from its manifest), mapped into
   its space with `ModelSpec.query_vectors` (the text part of a fused vector: image
   and behaviour parts zero, the same projection W), and searched in the run's FAISS index for
   `query.candidates` items; items engaged with after the query join the
   candidates. A candidate's similarity is the cosine between the query and the
   item's text part (`text_similarity`), so a behaviour part does not dilute it.
4. Re-rank: score = (1 - ctr_weight) * similarity + ctr_weight * ctr with
   ctr = engagement / (searches + ctr_prior), a click-through shrunk towards zero
   for rarely searched queries; the top `query.k` are kept.

`fusionrank.search` (interfaces.search) answers any query with the same functions.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F

from fusionrank.core.errors import IndexError_
from fusionrank.core.spark import utc_literal
from fusionrank.index.build import load_index
from fusionrank.index.lexical import LexicalIndex, has_lexical, lexical_dir
from fusionrank.ranks.hybrid import engagement_intent, hybrid_rerank, item_categories, params_from
from fusionrank.ranks.intent import QueryIntent
from fusionrank.vectors.encoders import get_text_encoder
from fusionrank.vectors.fusion import l2_normalize
from fusionrank.vectors.spec import ModelSpec

ENGAGEMENT_TYPES = ("view", "click", "add_to_cart", "purchase")


def normalize_query(text: str) -> str:
    """The form queries are counted and looked up in: lower case, single spaces."""
    return " ".join(str(text).lower().split())


# -- Spark side (bounded results only come back to the driver) -----------------------------
def _normalized(col):
    return F.lower(F.trim(F.regexp_replace(col, r"\s+", " ")))


def frequent_queries(events, since: dt.datetime, until: dt.datetime, n: int, min_searches: int = 1):
    """(query, searches, users): the `n` most searched queries in [since, until)."""
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
def encode_queries(texts: list[str], spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Query texts -> (text vectors, vectors in the index's space: text part only,
    the same projection, behaviour part zero)."""
    encoder = get_text_encoder(spec.text_model_folder(), dtype=spec.text_dtype)
    text = encoder.encode(list(texts), batch_size=spec.text_batch_size, max_length=spec.text_max_length)
    return text, spec.to_ranking_space(spec.query_vectors(text))


def text_similarity(item_vecs: np.ndarray, query_text: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Cosine between a query's text vector and the text part of ranking-space item vectors.

    The inner product with the fused vector would divide each item's text match by
    the norm of all its parts, so an item nobody interacted with (zero behaviour
    part) would outrank a better-matching popular one. The text part is read back
    through W (exactly for the identity and for orthogonal rotations).
    """
    item_vecs = spec.fused_part(item_vecs)  # the index holds ranking-space vectors
    w = spec.projection_matrix()
    part = item_vecs[:, :spec.text_dim] if w is None else item_vecs @ w[:spec.text_dim].T
    query = query_text / max(float(np.linalg.norm(query_text)), 1e-12)
    return l2_normalize(part) @ query.astype(np.float32)


def index_spec(loaded, where: str) -> ModelSpec:
    """The ModelSpec recorded in an index's manifest: the query side's only source."""
    data = loaded.manifest.get("model_spec")
    if not data:
        raise IndexError_(f"the index at {where} records no model_spec (built from item_embeddings of model_version "
                          f"{loaded.manifest.get('model_version')} by other settings): rerun encode_items and "
                          f"build_index for that date to search it")
    return ModelSpec.from_dict(data)


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


def check_dim(vectors: np.ndarray, loaded, where: str) -> None:
    if vectors.shape[1] != loaded.index.d:
        raise IndexError_(
            f"query vectors have {vectors.shape[1]} dims but the index at {where} has {loaded.index.d}: the "
            f"settings (models, fusion) differ from those the index was built with "
            f"(model_version {loaded.manifest.get('model_version')})")


def top_k_for_queries(
    queries: pd.DataFrame,
    engagement: pd.DataFrame,
    index_path: str,
    cfg,
) -> pd.DataFrame:
    """queries: (query, searches); engagement: (query, item_id, engagement, clicks).
    Returns (query, rank, item_id, score, similarity, ctr, clicks, searches, category); with
    `query.hybrid` the rows come from hybrid_top_k and category is the predicted one.
    `cfg` is the `query` settings; the space comes from the index's manifest."""
    columns = ["query", "rank", "item_id", "score", "similarity", "ctr", "clicks", "searches", "category"]
    if queries.empty:
        return pd.DataFrame(columns=columns)
    loaded = load_index(index_path)
    spec = index_spec(loaded, index_path)
    texts = queries["query"].tolist()
    text, vectors = encode_queries(texts, spec)
    check_dim(vectors, loaded, index_path)
    _, positions = loaded.index.search(vectors, min(int(loaded.index.ntotal), cfg.candidates))
    engaged_by_query: dict[str, dict[str, tuple[float, int]]] = {}
    for row in engagement.itertuples(index=False):
        engaged_by_query.setdefault(row.query, {})[row.item_id] = (float(row.engagement), int(row.clicks))
    rows = []
    if getattr(cfg, "hybrid", False):
        return hybrid_top_k(texts, queries["searches"].astype(int).tolist(), text, positions, engaged_by_query,
                            loaded, spec, index_path, cfg)
    for q, (query, searches) in enumerate(zip(texts, queries["searches"].astype(int))):
        found = [loaded.ids[p] for p in positions[q] if p >= 0]
        engaged = engaged_by_query.get(query, {})
        vecs, ids = loaded.vectors(found + sorted(set(engaged) - set(found)))
        sims = text_similarity(vecs, text[q], spec)
        for rank, (item, score, similarity, ctr, clicks) in enumerate(
                rerank(ids, sims, engaged, searches, cfg.k, cfg.ctr_weight, cfg.ctr_prior), start=1):
            rows.append((query, rank, item, score, similarity, ctr, clicks, int(searches), None))
    return pd.DataFrame(rows, columns=columns)


def hybrid_top_k(texts, searches, text, positions, engaged_by_query, loaded, spec, index_path, cfg) -> pd.DataFrame:
    """query_topk rows by ranks.hybrid: the dense candidates (cosine order) fused with the
    BM25 candidates of the index artifact's lexical index, re-ranked with CTR and the
    query's intent (from its engaged items); `category` is the predicted top-level one."""
    columns = ["query", "rank", "item_id", "score", "similarity", "ctr", "clicks", "searches", "category"]
    lexical = LexicalIndex.load(lexical_dir(index_path)).search(texts, cfg.candidates)
    category_of = item_categories(index_path)
    params = params_from(cfg)
    intents = query_intents(texts, text, engaged_by_query, category_of)
    rows = []
    for q, query in enumerate(texts):
        found = [loaded.ids[p] for p in positions[q] if p >= 0]
        vecs, ids = loaded.vectors(found)
        sims = text_similarity(vecs, text[q], spec)
        dense = [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))]
        engaged = engaged_by_query.get(query, {})
        intent = intents[q]
        ranked = hybrid_rerank(dense, lexical[q][0], engaged, searches[q], cfg.k, params, intent, category_of)
        vecs, known = loaded.vectors([r[0] for r in ranked])
        similarity = dict(zip(known, text_similarity(vecs, text[q], spec))) if known else {}
        top, _ = QueryIntent.top(intent)
        for rank, (item, score, _, ctr, clicks) in enumerate(ranked, start=1):
            rows.append((query, rank, item, score, float(similarity.get(item, 0.0)), ctr, clicks, int(searches[q]),
                         top))
    return pd.DataFrame(rows, columns=columns)


def compute_query_topk(events, index_path: str, cfg, since: dt.datetime, until: dt.datetime):
    """The query_topk rows (without run_date/model_version) as a pandas frame, and counts.
    `cfg` is the `query` settings."""
    queries = frequent_queries(events, since, until, cfg.top_queries, cfg.min_searches)
    queries_pd = queries.toPandas()  # at most query.top_queries rows
    if queries_pd.empty:
        return top_k_for_queries(queries_pd, pd.DataFrame(), index_path, cfg), {"queries": 0}
    engaged = query_engagement(events, queries, since, until, cfg.event_weights, cfg.max_engaged_items)
    engaged_pd = engaged.toPandas()  # at most top_queries x max_engaged_items rows
    out = top_k_for_queries(queries_pd, engaged_pd, index_path, cfg)
    return out, {
        "queries": int(len(queries_pd)),
        "searches": int(queries_pd["searches"].sum()),
        "queries_with_clicks": int(engaged_pd["query"].nunique()) if not engaged_pd.empty else 0,
        "query_rows": int(len(out)),
    }




def answer_queries(texts: list[str], index_path: str, stored: dict[str, list[str]], cfg, k: int,
                   dense_only: bool = False) -> dict[str, list[str]]:
    """The top `k` item ids for each query the way `fusionrank.search` answers it: the
    night's query_topk rows (`stored`: {query: item ids by rank}) when it has `k` of
    them, else the index (fused with the lexical index under `query.hybrid`).
    `dense_only`: zero-shot dense retrieval for every query (the baseline)."""
    out: dict[str, list[str]] = {}
    todo = list(dict.fromkeys(texts)) if dense_only else [q for q in dict.fromkeys(texts)
                                                           if len(stored.get(q, ())) < k]
    if not dense_only:
        out.update({q: list(stored[q][:k]) for q in dict.fromkeys(texts) if q not in set(todo)})
    if not todo:
        return out
    loaded = load_index(index_path)
    spec = index_spec(loaded, index_path)
    text, vectors = encode_queries(todo, spec)
    check_dim(vectors, loaded, index_path)
    _, positions = loaded.index.search(vectors, min(int(loaded.index.ntotal), max(k, cfg.candidates)))
    hybrid = getattr(cfg, "hybrid", False) and not dense_only and has_lexical(index_path)
    lexical = LexicalIndex.load(lexical_dir(index_path)).search(todo, cfg.candidates) if hybrid else None
    params = params_from(cfg).with_(ctr_weight=0.0, intent_weight=0.0) if hybrid else None
    for q, query in enumerate(todo):
        vecs, ids = loaded.vectors([loaded.ids[p] for p in positions[q] if p >= 0])
        sims = text_similarity(vecs, text[q], spec)
        dense = [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))]
        if hybrid:
            out[query] = [r[0] for r in hybrid_rerank(dense, lexical[q][0], {}, 0, k, params)]
        else:
            out[query] = dense[:k]
    return out


def query_intents(texts: list[str], text: np.ndarray, engaged_by_query: dict, category_of: dict) -> list[dict]:
    """Each query's category distribution: from its own engaged items when it has
    some, else from its nearest such queries (ranks.intent, on the query text vectors)."""
    own = [engagement_intent(engaged_by_query.get(q, {}), category_of) for q in texts]
    known = [i for i, d in enumerate(own) if d]
    if not known or len(known) == len(texts):
        return own
    categories = sorted({c for i in known for c in own[i]})
    distribution = np.array([[own[i].get(c, 0.0) for c in categories] for i in known])
    vectors = l2_normalize(np.asarray(text, dtype=np.float32))
    intent = QueryIntent([texts[i] for i in known], categories, distribution, vectors[known])
    return intent.predict(texts, vectors)
