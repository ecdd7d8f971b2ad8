"""Search metrics for `evaluate`: the held-out search sessions (events of the
evaluate holdout, which no upstream stage saw) scored against what the night
serves (query_topk rows, else the index, hybrid under `query.hybrid` with the
night's query memory), beside
zero-shot dense retrieval of the same index (metrics.search_eval definitions)."""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from fusionrank.index.build import read_manifest

from fusionrank.metrics.search_eval import GRADES, case_grades, evaluate_rankings, search_cases
from fusionrank.ranks.query_memory import MEMORY_COLUMNS, QueryMemory
from fusionrank.ranks.query_topk import answer_queries

log = logging.getLogger("fusionrank.metrics")

SEARCH_K = 10
SEARCH_SPLIT = "search"


def holdout_search_grades(ctx) -> list[tuple[str, dict[str, int]]]:
    """[(query, {item: grade})] of the held-out search sessions (at most
    evaluate.search_max_cases sessions, in a fixed order)."""
    holdout = ctx.holdout_events().where(F.col("session_id").isNotNull())
    searches = (holdout.where(F.col("event_type") == "search").select("user_id", "session_id").distinct()
                .orderBy("user_id", "session_id").limit(ctx.settings.evaluate.search_max_cases))
    events = (holdout.where(F.col("event_type").isin("search", *GRADES))
              .join(searches, ["user_id", "session_id"], "left_semi")
              .select("user_id", "session_id", "event_type", F.col("event_ts").cast("long").alias("event_ts"),
                      "item_id", "query").toPandas())  # bounded by search_max_cases sessions
    return case_grades(search_cases(events)) if not events.empty else []


def served_queries(ctx, queries: list[str]) -> tuple[dict[str, list[str]], QueryMemory | None]:
    """What the night serves search from: its query_topk rows of `queries` ({query:
    item ids by rank}) and its query memory (None when it wrote none)."""
    stored: dict[str, list[str]] = {}
    if ctx.store.exists("query_topk"):
        rows = (ctx.for_date("query_topk").where(F.col("query").isin(sorted(set(queries))))
                .select("query", "rank", "item_id").orderBy("query", "rank").collect())
        for r in rows:
            stored.setdefault(r["query"], []).append(r["item_id"])
    memory = None
    if ctx.has_date("query_memory"):  # bounded by query.top_queries
        memory = QueryMemory.from_frame(ctx.for_date("query_memory").select(*MEMORY_COLUMNS).toPandas())
    return stored, memory


def search_metric_rows(ctx) -> tuple[list[tuple], dict]:
    """[(metric, k, value, baseline)] for search_ndcg, search_recall, search_mrr and
    search_cases (empty when the holdout has no search with engagement)."""
    cfg = ctx.settings
    grades = holdout_search_grades(ctx)
    if not grades:
        return [], {"search_cases": 0}
    queries = [q for q, _ in grades]
    stored, memory = served_queries(ctx, queries)
    index_path = ctx.index_path()
    if not read_manifest(index_path).get("model_spec"):
        log.warning("evaluate: the index of %s records no model_spec (foreign embeddings): no search metrics",
                    ctx.run_date)
        return [], {"search_cases": 0}
    ours = evaluate_rankings(grades, answer_queries(queries, index_path, stored, cfg.query, SEARCH_K, memory=memory),
                             SEARCH_K)["all"]
    base = evaluate_rankings(grades, answer_queries(queries, index_path, stored, cfg.query, SEARCH_K,
                                                    dense_only=True), SEARCH_K)["all"]
    rows = [(f"search_{m}", SEARCH_K, ours[m], base[m]) for m in ("ndcg", "recall", "mrr")]
    rows.append(("search_cases", None, float(ours["cases"]), float(base["cases"])))
    return rows, {f"search_{m}@{SEARCH_K}": (ours[m], base[m]) for m in ("ndcg", "recall", "mrr")} | \
        {"search_cases": ours["cases"]}
