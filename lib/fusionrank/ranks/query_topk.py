"""query_topk: the most frequent queries' top items, from the logs and the index.

Computed at the end of the `rank` stage:

1. The `query.top_queries` most frequent queries of the `search` events in the last
   `query.lookback_days` of training events (lower-cased, whitespace collapsed).
2. Their engagement: every click, add_to_cart and purchase is attributed to the
   latest search before it in the same session; per (query, item) the events are
   summed with `query.event_weights` (Spark, on the executors).
3. On the executors (ranks.query_topk.topk_partition over the distinct queries, each
   with its engaged items as arrays; the index is loaded once per Python worker as
   for the users, nothing catalog-sized is on the driver): the queries are encoded
   with the text model of the index's ModelSpec (from its manifest), mapped into
   its space with `ModelSpec.query_content` (the text part of a content vector: image
   and behaviour parts zero, the same projection), and searched in the run's FAISS index for
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
from functools import partial
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import QUERY_MEMORY, QUERY_TOPK
from fusionrank.core.errors import IndexError_
from fusionrank.core.spark import task_cpus, utc_literal
from fusionrank.index.build import load_index, read_manifest
from fusionrank.index.lexical import LexicalIndex, has_lexical, lexical_dir
from fusionrank.ranks.hybrid import engagement_intent, hybrid_rerank, item_categories, params_from, pool_engagement
from fusionrank.ranks.intent import QueryIntent
from fusionrank.ranks.query_memory import MEMORY_COLUMNS, QueryMemory, listed
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


# -- numpy side: per partition on the executors (query_topk), on the driver for search() ------
def encode_queries(texts: list[str], spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Query texts -> (text vectors, vectors in the index's space: text part only,
    the same projection, behaviour part zero)."""
    encoder = get_text_encoder(spec.text_model_folder(), dtype=spec.text_dtype)
    text = encoder.encode(list(texts), batch_size=spec.text_batch_size, max_length=spec.text_max_length)
    return text, spec.to_ranking_space(spec.query_content(text))


def text_similarity(item_vecs: np.ndarray, query_text: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Cosine between a query's text vector and the text part of ranking-space item vectors.

    The inner product with the fused vector would divide each item's text match by
    the norm of all its parts, so an item nobody interacted with (zero behaviour
    part) would outrank a better-matching popular one. The text part is read back
    through W (exactly for the identity and for orthogonal rotations).
    """
    part = spec.text_part(item_vecs)  # the index holds ranking-space vectors
    query = query_text / max(float(np.linalg.norm(query_text)), 1e-12)
    return l2_normalize(part) @ query.astype(np.float32)


def index_spec(loaded, where: str) -> ModelSpec:
    """The ModelSpec recorded in a loaded index's manifest: the query side's only source."""
    return manifest_spec(loaded.manifest, where)


def manifest_spec(manifest: dict, where: str) -> ModelSpec:
    """The ModelSpec an index manifest records (no index loaded to read it)."""
    data = manifest.get("model_spec")
    if not data:
        raise IndexError_(f"the index at {where} records no model_spec (built from item_embeddings of model_version "
                          f"{manifest.get('model_version')} by other settings): rerun encode_items and "
                          f"build_index for that date to search it")
    return ModelSpec.from_dict(data)


def engaged_by_query(engagement: pd.DataFrame) -> dict[str, dict[str, tuple[float, int]]]:
    """(query, item_id, engagement, clicks) rows -> {query: {item_id: (engagement, clicks)}}."""
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for row in engagement.itertuples(index=False):
        out.setdefault(row.query, {})[row.item_id] = (float(row.engagement), int(row.clicks))
    return out


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
    by_query = engaged_by_query(engagement)
    rows = []
    if getattr(cfg, "hybrid", False):
        return hybrid_top_k(texts, queries["searches"].astype(int).tolist(), text, positions, by_query,
                            loaded, spec, index_path, cfg)
    for q, (query, searches) in enumerate(zip(texts, queries["searches"].astype(int))):
        found = [loaded.ids[p] for p in positions[q] if p >= 0]
        engaged = by_query.get(query, {})
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
    near = query_neighbours(texts, text) if params.neighbour_weight and params.ctr_weight else [[]] * len(texts)
    row_of = {query: q for q, query in enumerate(texts)}
    rows = []
    for q, query in enumerate(texts):
        found = [loaded.ids[p] for p in positions[q] if p >= 0]
        vecs, ids = loaded.vectors(found)
        sims = text_similarity(vecs, text[q], spec)
        dense = [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))]
        engaged, pooled_searches = pool_engagement(
            engaged_by_query.get(query, {}), searches[q],
            [(engaged_by_query.get(n, {}), searches[row_of[n]], s) for n, s in near[q]], params.neighbour_weight)
        intent = intents[q]
        ranked = hybrid_rerank(dense, lexical[q][0], engaged, pooled_searches, cfg.k, params, intent, category_of)
        vecs, known = loaded.vectors([r[0] for r in ranked])
        similarity = dict(zip(known, text_similarity(vecs, text[q], spec))) if known else {}
        top, _ = QueryIntent.top(intent)
        for rank, (item, score, _, ctr, clicks) in enumerate(ranked, start=1):
            rows.append((query, rank, item, score, float(similarity.get(item, 0.0)), ctr, clicks, int(searches[q]),
                         top))
    return pd.DataFrame(rows, columns=columns)


# What the executors emit: query_topk's columns but run_date and model_version.
TOPK_COLUMNS = ["query", "rank", "item_id", "score", "similarity", "ctr", "clicks", "searches", "category"]
TOPK_SCHEMA = T.StructType([QUERY_TOPK[name] for name in TOPK_COLUMNS])


def unpack_queries(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One partition's (query, searches, engaged_items, engaged_weights, engaged_clicks)
    rows -> the (queries, engagement) frames `top_k_for_queries` takes, queries in the
    driver's order (most searched first, then by text)."""
    frame = frame.sort_values(["searches", "query"], ascending=[False, True], kind="stable").reset_index(drop=True)
    queries = frame[["query", "searches"]]
    rows = [(q, item, float(w), int(c))
            for q, items, weights, clicks in zip(frame["query"], frame["engaged_items"], frame["engaged_weights"],
                                                 frame["engaged_clicks"])
            for item, w, c in zip(listed(items), listed(weights), listed(clicks))]
    engagement = pd.DataFrame(rows, columns=["query", "item_id", "engagement", "clicks"])
    return queries, engagement


def topk_partition(frames: Iterator[pd.DataFrame], index_path: str, cfg) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the query_topk rows of one partition's queries (the index and
    the text model are loaded once per Python worker, as for the users)."""
    import faiss

    faiss.omp_set_num_threads(task_cpus())
    frames = [f for f in frames if len(f)]
    if not frames:
        return
    queries, engagement = unpack_queries(pd.concat(frames, ignore_index=True))
    out = top_k_for_queries(queries, engagement, index_path, cfg)
    if len(out):
        yield out.astype({"rank": "int32", "score": "float32", "similarity": "float32", "ctr": "float32",
                          "clicks": "int32", "searches": "int32"}).astype({"category": object})


def query_rows(queries, engaged):
    """(query, searches, engaged_items, engaged_weights, engaged_clicks): each query with
    its engaged items as arrays (at most `query.max_engaged_items`)."""
    grouped = engaged.groupBy("query").agg(F.sort_array(F.collect_list(F.struct(
        "item_id", F.col("engagement").cast("double").alias("w"), F.col("clicks").cast("int").alias("c")))).alias("e"))
    rows = queries.select("query", F.col("searches").cast("long").alias("searches")).join(grouped, "query", "left")
    return rows.select("query", "searches", F.col("e.item_id").alias("engaged_items"),
                       F.col("e.w").alias("engaged_weights"), F.col("e.c").alias("engaged_clicks"))


def memory_partition(frames: Iterator[pd.DataFrame], index_path: str) -> Iterator[pd.DataFrame]:
    """mapInPandas body: query_memory rows (without run_date/model_version) of one
    partition's `query_rows`, the queries encoded with the text model of the index's ModelSpec."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return
    queries, engagement = unpack_queries(pd.concat(frames, ignore_index=True))
    # Only the text model is needed: the manifest names it, the index stays unloaded.
    text, _ = encode_queries(queries["query"].tolist(), manifest_spec(read_manifest(index_path), index_path))
    memory = QueryMemory.build(queries["query"].tolist(), queries["searches"].tolist(), text,
                               engaged_by_query(engagement))
    yield memory.to_frame().astype({"searches": "int32"})


MEMORY_SCHEMA = T.StructType([QUERY_MEMORY[name] for name in MEMORY_COLUMNS])


def query_memory_frame(rows, index_path: str):
    """The query_memory rows (without run_date/model_version) of `query_rows`, the
    queries encoded on the executors in one task (the list is bounded by query.top_queries)."""
    return rows.repartition(1).mapInPandas(partial(memory_partition, index_path=index_path), MEMORY_SCHEMA)


def query_topk_frame(queries, engaged, index_path: str, cfg, partitions: int, rows=None):
    """The query_topk rows (without run_date/model_version) as a Spark DataFrame searched
    on the executors: each query travels with its engaged items (arrays, at most
    `query.max_engaged_items`), so neither the index, the item ids nor the text model
    are on the driver. With `query.hybrid` one task sees every query (the intent of a
    query without engagement comes from its nearest engaged queries)."""
    rows = query_rows(queries, engaged) if rows is None else rows
    parts = 1 if getattr(cfg, "hybrid", False) else max(1, int(partitions))
    return rows.repartition(parts, "query").mapInPandas(partial(topk_partition, index_path=index_path, cfg=cfg),
                                                        TOPK_SCHEMA)


def query_partitions(spark, top_queries: int, per_partition: int = 250) -> int:
    """Partitions for the query search: one per `per_partition` queries, at most one per core."""
    return max(1, min(spark.sparkContext.defaultParallelism, -(-int(top_queries) // per_partition)))


def compute_query_topk(events, index_path: str, cfg, since: dt.datetime, until: dt.datetime):
    """The query_topk rows and the query_memory rows (without run_date/model_version) as
    Spark DataFrames searched on the executors (None, None when there are no queries;
    memory None unless `query.hybrid`), and counts. `cfg` is the `query` settings. Only
    the query list (bounded by query.top_queries) and counts come to the driver."""
    frequent = frequent_queries(events, since, until, cfg.top_queries, cfg.min_searches)
    # At most query.top_queries (query, searches, users) rows: fixed once, not recomputed
    # from the events by every job below.
    listed = frequent.collect()
    if not listed:
        return None, None, {"queries": 0}
    queries = events.sparkSession.createDataFrame(listed, frequent.schema)
    engaged = query_engagement(events, queries, since, until, cfg.event_weights, cfg.max_engaged_items)
    rows = query_rows(queries, engaged)
    out = query_topk_frame(queries, engaged, index_path, cfg, query_partitions(events.sparkSession, cfg.top_queries),
                           rows=rows)
    memory = query_memory_frame(rows, index_path) if getattr(cfg, "hybrid", False) else None
    return out, memory, {
        "queries": len(listed),
        "searches": int(sum(row["searches"] for row in listed)),
        "queries_with_clicks": int(engaged.select("query").distinct().count()),
    }


def hybrid_answers(texts: list[str], text: np.ndarray, dense: list[list[str]], lexical: list[list[str]], k: int,
                   cfg, memory=None, category_of: dict | None = None) -> list[list[tuple[str, float, float, float, int]]]:
    """ranks.hybrid re-rank of each query's dense and BM25 candidates for queries without
    query_topk rows: with the night's query memory (ranks.query_memory) a query gets the
    intent of its nearest frequent queries, and with `query.unseen_neighbour_weight` > 0
    their pooled click-through, as `hybrid_top_k` gives them to a frequent query without
    engagement; without a memory, dense + BM25 only."""
    params = params_from(cfg)
    if memory is None or not len(memory):
        params = params.with_(ctr_weight=0.0, intent_weight=0.0)
        contexts = [({}, {}, 0.0) for _ in texts]
    else:
        borrow = float(getattr(cfg, "unseen_neighbour_weight", 0.0))
        contexts = memory.context(texts, text, category_of or {}, borrow if params.ctr_weight else 0.0)
    return [hybrid_rerank(d, lex, engaged, searches, k, params, intent, category_of)
            for d, lex, (intent, engaged, searches) in zip(dense, lexical, contexts)]


def answer_queries(texts: list[str], index_path: str, stored: dict[str, list[str]], cfg, k: int,
                   dense_only: bool = False, memory=None) -> dict[str, list[str]]:
    """The top `k` item ids for each query the way `fusionrank.search` answers it: the
    night's query_topk rows (`stored`: {query: item ids by rank}) when it has `k` of
    them, else the index (fused with the lexical index under `query.hybrid`, with the
    intent and click-through of the night's query `memory`, a QueryMemory, if given).
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
    dense = []
    for q, query in enumerate(todo):
        vecs, ids = loaded.vectors([loaded.ids[p] for p in positions[q] if p >= 0])
        sims = text_similarity(vecs, text[q], spec)
        dense.append([ids[j] for j in sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))])
    if not hybrid:
        return out | {query: ranked[:k] for query, ranked in zip(todo, dense)}
    category_of = item_categories(index_path) if memory is not None and len(memory) else {}
    answers = hybrid_answers(todo, text, dense, [lexical[q][0] for q in range(len(todo))], k, cfg, memory, category_of)
    return out | {query: [r[0] for r in ranked] for query, ranked in zip(todo, answers)}


def query_neighbours(texts: list[str], text: np.ndarray) -> list[list[tuple[str, float]]]:
    """Each query's nearest other queries of this run (ranks.intent's neighbour rule)."""
    vectors = l2_normalize(np.asarray(text, dtype=np.float32))
    return QueryIntent(list(texts), [], np.zeros((len(texts), 0)), vectors).nearest(texts, vectors)


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
