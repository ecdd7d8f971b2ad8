"""Search quality of the query-ranking systems on a shop's held-out search sessions,
in-process (pandas, numpy, the library's encoders and indexes; no Spark), for
bench/search_quality.py and its fast CI test.

Protocol (time-based, nothing scored is seen by what it scores):
  test   = search sessions of the last `test_days` days;
  train  = everything before; its last `val_days` days are the validation slice and
           the rest the fit slice. Hyperparameters (the hybrid blend, CTR and intent
           weights) and the tuned encoder's acceptance are decided on validation with
           statistics from the fit slice only; the test is then scored with
           statistics (CTR, intent) from all of train, and the encoder tuned on the
           fit slice.
Systems (each ranks the whole catalog for a query; metrics at k=10):
  bm25           BM25 over title, brand, category, description (index.lexical)
  dense          zero-shot MiniLM: cosine of the query and the item text vectors
  dense_ctr      today's query_topk/search(): dense top candidates + engaged items,
                 re-ranked by (1 - w) * similarity + w * ctr with today's defaults
  hybrid         RRF of dense and BM25 (ranks.hybrid defaults, no CTR)
  tuned          dense with the domain-tuned encoder (vectors.tune_text)
  full           RRF of tuned dense and BM25 + CTR (pooled with the nearest known
                 queries' clicks) + intent, weights chosen on validation (choose_params)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrank.index.lexical import LexicalIndex
from fusionrank.metrics.search_eval import attributed_events, case_grades, evaluate_rankings, search_cases
from fusionrank.ranks.hybrid import HybridParams, hybrid_rerank, pool_engagement
from fusionrank.ranks.intent import QueryIntent
from fusionrank.ranks.query_topk import rerank
from fusionrank.vectors.encoders import TextEncoder, default_text_model_path
from fusionrank.vectors.tune_text import TuneParams, tune_text_encoder

SYSTEMS = ("bm25", "dense", "dense_ctr", "hybrid", "tuned", "full")
ENGAGEMENT_WEIGHTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
INTENT_WEIGHTS = {"view": 0.5, "click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
CANDIDATES = 100
K = 10


def item_text(row) -> str:
    """As vectors.encode.item_text: title. category. brand. description."""
    return ". ".join(str(x) for x in (row.title, row.category, row.brand, row.description) if x)


def load_shop(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    folder = Path(folder)
    catalog = pd.read_json(folder / "catalog.jsonl", lines=True, dtype={"item_id": str})
    events = pd.read_json(folder / "events.jsonl", lines=True, dtype={"item_id": str, "query": str},
                          convert_dates=False)
    kinds_file = folder / "query_kinds.json"
    raw = json.loads(kinds_file.read_text()) if kinds_file.exists() else {}
    kinds = {" ".join(q.lower().split()): k for q, k in raw.items()}
    return catalog, events, kinds


@dataclass
class Stats:
    """What a slice of history says about queries: engagement, searches, intent."""

    engagement: dict[str, dict[str, tuple[float, int]]]
    searches: dict[str, int]
    intent: QueryIntent
    _near: dict = field(default_factory=dict)

    def neighbours(self, queries: list[str], space: "Space") -> dict[str, list[tuple[str, float]]]:
        """Each query's nearest known queries (the intent's neighbour rule), cached."""
        missing = [q for q in dict.fromkeys(queries) if q not in self._near]
        if missing:
            self._near.update(zip(missing, self.intent.nearest(missing, space.queries(missing))))
        return {q: self._near[q] for q in queries}


def history_stats(events: pd.DataFrame, category_of: dict[str, str], vectors_of) -> Stats:
    searches, engaged = attributed_events(events)
    counts = searches.groupby("query").size().to_dict()
    weighted = engaged[engaged["event_type"].isin(list(ENGAGEMENT_WEIGHTS))]
    weighted = weighted.assign(w=weighted["event_type"].map(ENGAGEMENT_WEIGHTS),
                               c=(weighted["event_type"] == "click").astype(int))
    per = weighted.groupby(["query", "item_id"], as_index=False).agg(w=("w", "sum"), c=("c", "sum"))
    engagement: dict[str, dict[str, tuple[float, int]]] = {}
    for row in per.itertuples(index=False):
        engagement.setdefault(row.query, {})[row.item_id] = (float(row.w), int(row.c))
    intent_rows = engaged.assign(category=engaged["item_id"].map(category_of),
                                 weight=engaged["event_type"].map(INTENT_WEIGHTS))
    intent = QueryIntent.fit(intent_rows[["query", "category", "weight"]].dropna(), vectors_of)
    return Stats(engagement, {q: int(n) for q, n in counts.items()}, intent)


@dataclass
class Space:
    """One text encoder's view: item vectors and a query vector cache."""

    encoder: TextEncoder
    item_vecs: np.ndarray
    cache: dict[str, np.ndarray] = field(default_factory=dict)

    def queries(self, texts: list[str]) -> np.ndarray:
        missing = sorted(set(texts) - set(self.cache))
        if missing:
            for q, v in zip(missing, self.encoder.encode(missing, batch_size=128, max_length=32)):
                self.cache[q] = v
        return np.stack([self.cache[q] for q in texts]) if texts else np.zeros((0, self.item_vecs.shape[1]))

    def dense(self, queries: list[str], n: int) -> dict[str, tuple[list[int], np.ndarray]]:
        """Per query, the positions of its `n` nearest items (best first, ties by
        position) and their cosines; cached per (query, n)."""
        dense_cache = self.__dict__.setdefault("_dense", {})
        missing = [q for q in dict.fromkeys(queries) if (q, n) not in dense_cache]
        vecs = self.queries(missing)
        n_eff = min(n, self.item_vecs.shape[0])
        for start in range(0, len(missing), 512):
            sims = vecs[start:start + 512] @ self.item_vecs.T
            top = np.argpartition(-sims, n_eff - 1, axis=1)[:, :n_eff]
            for j, q in enumerate(missing[start:start + 512]):
                order = top[j][np.lexsort((top[j], -sims[j, top[j]]))]
                dense_cache[(q, n)] = (order.tolist(), sims[j, order].astype(np.float32))
        return {q: dense_cache[(q, n)] for q in queries}

    def similarity(self, query: str, positions: list[int]) -> np.ndarray:
        return self.item_vecs[positions] @ self.queries([query])[0]


def encode_items(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """Item vectors; identical texts are encoded once."""
    unique = sorted(set(texts))
    vecs = encoder.encode(unique, batch_size=64, max_length=128)
    row = {t: i for i, t in enumerate(unique)}
    return vecs[[row[t] for t in texts]]


class Ranker:
    def __init__(self, ids: list[str], category_of: dict[str, str], lexical: LexicalIndex):
        self.ids, self.category_of, self.lexical = ids, category_of, lexical
        self._lex: dict[str, list[str]] = {}
        self.position = {item: i for i, item in enumerate(ids)}

    def lexical_ids(self, queries: list[str]) -> dict[str, list[str]]:
        missing = [q for q in dict.fromkeys(queries) if q not in self._lex]
        for q, (found, _) in zip(missing, self.lexical.search(missing, CANDIDATES)):
            self._lex[q] = found
        return {q: self._lex[q] for q in queries}

    def rank(self, system: str, queries: list[str], space: Space | None, stats: Stats | None,
             params: HybridParams | None = None) -> dict[str, list[str]]:
        queries = list(dict.fromkeys(queries))
        if system == "bm25":
            return {q: ids[:K] for q, ids in self.lexical_ids(queries).items()}
        dense = space.dense(queries, CANDIDATES)
        if system in ("dense", "tuned"):
            return {q: [self.ids[i] for i in dense[q][0][:K]] for q in queries}
        if system == "dense_ctr":  # today: ranks.query_topk.rerank with the shipped defaults
            out = {}
            for q in queries:
                positions, sims = dense[q]
                engaged = stats.engagement.get(q, {})
                extra = sorted(set(engaged) - {self.ids[i] for i in positions})
                cand = [self.ids[i] for i in positions] + extra
                cand_sims = np.concatenate([sims, space.similarity(q, [self.position[e] for e in extra])]) \
                    if extra else sims
                rows = rerank(cand, cand_sims, engaged, stats.searches.get(q, 0), K, 0.5, 10.0)
                out[q] = [r[0] for r in rows]
            return out
        lexical = self.lexical_ids(queries)
        params = params or HybridParams(ctr_weight=0.0)
        intents, near = None, {}
        if params.intent_weight and stats is not None:
            intents = dict(zip(queries, stats.intent.predict(queries, space.queries(queries))))
        if params.neighbour_weight and params.ctr_weight and stats is not None:
            near = stats.neighbours(queries, space)
        out = {}
        for q in queries:
            engaged, searches = {}, 0
            if stats is not None and params.ctr_weight:
                engaged, searches = pool_engagement(
                    stats.engagement.get(q, {}), stats.searches.get(q, 0),
                    [(stats.engagement.get(n, {}), stats.searches.get(n, 0), s) for n, s in near.get(q, [])],
                    params.neighbour_weight)
            rows = hybrid_rerank([self.ids[i] for i in dense[q][0]], lexical[q], engaged, searches, K, params,
                                 intents.get(q) if intents else None, self.category_of)
            out[q] = [r[0] for r in rows]
        return out


def intent_accuracy(intent: QueryIntent, space: Space, grades, category_of, seen: set[str]) -> dict[str, float]:
    """Top-1 category accuracy on test cases: truth is the category of the case's
    strongest engaged item; `seen` queries were searched in the history."""
    queries = sorted({q for q, _ in grades})
    predicted = dict(zip(queries, intent.predict(queries, space.queries(queries))))
    hits = {"seen": [0, 0], "unseen": [0, 0]}
    for q, g in grades:
        best = min(g, key=lambda i: (-g[i], i))
        top, _ = QueryIntent.top(predicted[q])
        group = hits["seen" if q in seen else "unseen"]
        group[0] += int(top == category_of.get(best))
        group[1] += 1
    return {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in hits.items()} | \
        {f"{k}_cases": v[1] for k, v in hits.items()}


def training_pairs(fit_events: pd.DataFrame, text_of: dict[str, str], category_of: dict[str, str],
                   base: Space, ids: list[str], seed: int, max_pairs: int) -> tuple[list, list]:
    """(query, engaged item text) pairs from search sessions (clicked or stronger), and
    (item, co-engaged item) pairs from sessions, each with a hard negative: the base
    model's best-ranked item for the anchor of another category than the positive."""
    rng = np.random.default_rng(seed)
    cases = search_cases(fit_events)
    strong = cases[cases["grade"] >= 2]
    q_pairs = list(zip(strong["query"], strong["item_id"]))
    sessions = fit_events[fit_events["event_type"].isin(["click", "add_to_cart", "purchase"])
                          & fit_events["item_id"].notna()].drop_duplicates(["session_id", "item_id"])
    i_pairs = []
    for _, items in sessions.groupby("session_id")["item_id"]:
        items = items.tolist()
        for a, b in zip(items, items[1:]):
            i_pairs.append((a, b))
    n_item = min(len(i_pairs), max_pairs // 4)
    n_query = min(len(q_pairs), max_pairs - n_item)
    q_pairs = [q_pairs[i] for i in rng.permutation(len(q_pairs))[:n_query]]
    i_pairs = [i_pairs[i] for i in rng.permutation(len(i_pairs))[:n_item]]
    queries = sorted({q for q, _ in q_pairs})
    dense = base.dense(queries, 20)
    pairs, negatives = [], []
    for q, item in q_pairs:
        neg = next((ids[p] for p in dense[q][0] if category_of[ids[p]] != category_of[item]), None)
        pairs.append((q, text_of[item]))
        negatives.append(text_of[neg] if neg else None)
    position = {item: i for i, item in enumerate(ids)}
    for a, b in i_pairs:
        sims = base.item_vecs[position[a]] @ base.item_vecs[::37].T  # a strided sample of the index
        order = np.argsort(-sims)
        neg = next((ids[37 * p] for p in order if category_of[ids[37 * p]] != category_of[b]), None)
        pairs.append((text_of[a], text_of[b]))
        negatives.append(text_of[neg] if neg else None)
    return pairs, negatives


# The validation search: coordinate ascent from START over these values, in this
# order, until a full pass changes nothing (a grid of every combination is too slow
# at 20k items). Each value list holds the shipped default.
SEARCH_SPACE = {
    "ctr_weight": (0.0, 0.2, 0.4, 0.5, 0.6, 0.8),
    "neighbour_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "intent_weight": (0.0, 0.05, 0.1, 0.2, 0.3),
    "lexical_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "rrf_k": (5.0, 10.0, 30.0, 60.0),
    "ctr_prior": (2.0, 5.0, 10.0, 20.0),
}
START = HybridParams(rrf_k=60.0, lexical_weight=1.0, ctr_weight=0.5, ctr_prior=10.0, intent_weight=0.0)


def choose_params(score, log=print, passes: int = 3) -> tuple[HybridParams, float, int]:
    """Coordinate ascent of `score(params)` (validation nDCG@10) over SEARCH_SPACE;
    ties keep the current value. Returns the best params, their score and the number
    of evaluations."""
    seen: dict[HybridParams, float] = {}

    def value(p: HybridParams) -> float:
        if p not in seen:
            seen[p] = score(p)
        return seen[p]

    best = START
    for _ in range(passes):
        changed = False
        for key, values in SEARCH_SPACE.items():
            for v in values:
                candidate = best.with_(**{key: v})
                if value(candidate) > value(best) + 1e-9:
                    best, changed = candidate, True
        log(f"validation pass: {best} nDCG@10 {value(best):.4f} ({len(seen)} evaluations)")
        if not changed:
            break
    return best, value(best), len(seen)


def run(folder: str | Path, work: str | Path, test_days: int = 7, val_days: int = 7, seed: int = 0,
        tune: TuneParams | None = None, max_pairs: int = 4000, log=print) -> dict:
    """Every system's metrics on the shop's held-out search sessions (see the module doc)."""
    t0 = time.perf_counter()
    catalog, events, kinds = load_shop(folder)
    end = int(events["event_ts"].max()) // 86_400 * 86_400 + 86_400
    test_start, val_start = end - test_days * 86_400, end - (test_days + val_days) * 86_400
    train = events[events["event_ts"] < test_start]
    fit = train[train["event_ts"] < val_start]
    val = train[train["event_ts"] >= val_start]
    test = events[events["event_ts"] >= test_start]
    ids = catalog["item_id"].tolist()
    category_of = dict(zip(catalog["item_id"], catalog["category"]))
    texts = [item_text(r) for r in catalog.itertuples(index=False)]
    text_of = dict(zip(ids, texts))
    ranker = Ranker(ids, category_of, LexicalIndex.from_frame(catalog))
    timings = {}

    base_encoder = TextEncoder(default_text_model_path(), "cpu", "float32")
    t = time.perf_counter()
    base = Space(base_encoder, encode_items(base_encoder, texts))
    timings["encode_items_s"] = time.perf_counter() - t
    log(f"encoded {len(texts)} items in {timings['encode_items_s']:.0f}s")

    val_grades, test_grades = case_grades(search_cases(val)), case_grades(search_cases(test))
    fit_stats = history_stats(fit, category_of, base.queries)

    # The tuned encoder: trained on the fit slice, accepted only if it beats the base on validation.
    tuned, tuning = base, {"accepted": False, "reason": "not run"}
    if tune is not None:
        pairs, negatives = training_pairs(fit, text_of, category_of, base, ids, seed, max_pairs)
        t = time.perf_counter()
        tuning = tune_text_encoder(default_text_model_path(), Path(work) / "tuned_text", pairs, negatives, tune)
        timings["tune_s"] = time.perf_counter() - t
        encoder = TextEncoder(Path(work) / "tuned_text", "cpu", "float32")
        t = time.perf_counter()
        candidate = Space(encoder, encode_items(encoder, texts))
        timings["encode_items_tuned_s"] = time.perf_counter() - t
        base_val = evaluate_rankings(val_grades, ranker.rank("dense", [q for q, _ in val_grades], base, None), K)
        tuned_val = evaluate_rankings(val_grades, ranker.rank("dense", [q for q, _ in val_grades], candidate, None), K)
        tuning["val_ndcg_base"], tuning["val_ndcg_tuned"] = base_val["all"]["ndcg"], tuned_val["all"]["ndcg"]
        tuning["accepted"] = tuned_val["all"]["ndcg"] > base_val["all"]["ndcg"]
        if tuning["accepted"]:
            tuned = candidate
        log(f"tuned encoder: {tuning['steps']} steps in {tuning['seconds']:.0f}s, val nDCG@10 "
            f"{tuning['val_ndcg_base']:.4f} -> {tuning['val_ndcg_tuned']:.4f} "
            f"({'accepted' if tuning['accepted'] else 'rejected: the base stays'})")

    # Hybrid + CTR + intent weights: chosen on validation with fit-slice statistics.
    tuned_fit_stats = history_stats(fit, category_of, tuned.queries) if tuned is not base else fit_stats
    val_queries = [q for q, _ in val_grades]
    t = time.perf_counter()
    best, best_score, evaluations = choose_params(
        lambda p: evaluate_rankings(val_grades, ranker.rank("full", val_queries, tuned, tuned_fit_stats, p),
                                    K)["all"]["ndcg"], log)
    timings["choose_s"] = time.perf_counter() - t
    log(f"chosen on validation: {best} (val nDCG@10 {best_score:.4f}, {evaluations} evaluations in "
        f"{timings['choose_s']:.0f}s)")

    # Test: statistics from all of train.
    train_stats = history_stats(train, category_of, base.queries)
    tuned_train_stats = history_stats(train, category_of, tuned.queries) if tuned is not base else train_stats
    test_queries = [q for q, _ in test_grades]
    results = {}
    for system in SYSTEMS:
        space = tuned if system in ("tuned", "full") else base
        stats = tuned_train_stats if system == "full" else train_stats
        ranked = ranker.rank(system, test_queries, space, stats, best if system == "full" else None)
        results[system] = evaluate_rankings(test_grades, ranked, K, kinds)
    seen = set(train_stats.intent.queries)
    intent = intent_accuracy(tuned_train_stats.intent, tuned, test_grades, category_of, seen)
    timings["total_s"] = time.perf_counter() - t0
    return {"results": results, "intent": intent, "params": best.to_dict(), "tuning": tuning, "timings": timings,
            "cases": {"val": len(val_grades), "test": len(test_grades)}, "items": len(ids)}
