"""Search evaluation: held-out search sessions -> graded relevance -> nDCG, Recall, MRR.

A case is one search event: its query (normalised like ranks.query_topk) and the
items the same session engaged with after it, before the next search, graded by
the strongest event type (`GRADES`: view 1, click 2, add_to_cart 3, purchase 4).

Definitions (one case, ranking r_1..r_n, g(i) the grade of the item at rank i, 0 if
not engaged; R the engaged items):
  nDCG@k   = sum_{i<=k} (2^g(i) - 1) / log2(i + 1)  /  the same for the grades sorted
  Recall@k = |top k ∩ R| / |R|
  MRR@k    = 1 / (rank of the first engaged item), 0 if none in the top k
Means are over cases (a query searched twice counts twice).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

GRADES = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
SEARCH_METRICS = ("ndcg", "recall", "mrr")


def normalize_query(text: str) -> str:
    return " ".join(str(text).lower().split())


def ndcg(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    if not grades:
        return 0.0
    dcg = sum((2.0 ** grades.get(item, 0) - 1.0) / math.log2(i + 2) for i, item in enumerate(ranked[:k]))
    ideal = sum((2.0 ** g - 1.0) / math.log2(i + 2) for i, g in enumerate(sorted(grades.values(), reverse=True)[:k]))
    return dcg / ideal if ideal > 0 else 0.0


def recall(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    if not grades:
        return 0.0
    return sum(1 for item in ranked[:k] if item in grades) / len(grades)


def mrr(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    for i, item in enumerate(ranked[:k], start=1):
        if item in grades:
            return 1.0 / i
    return 0.0


def attributed_events(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(searches: case, query; engaged: case, query, item_id, event_type): every search
    event of `events` (user_id, session_id, event_type, event_ts, item_id, query) and
    the view/click/cart/purchase events its session had after it, before the next search."""
    needed = {"user_id", "session_id", "event_type", "event_ts", "item_id", "query"}
    missing = needed - set(events.columns)
    if missing:
        raise ValueError(f"search cases need event columns {sorted(needed)}; missing {sorted(missing)}")
    frame = events[events["session_id"].notna() & (
        (events["event_type"] == "search") | events["event_type"].isin(list(GRADES)) & events["item_id"].notna())]
    frame = frame.assign(_order=(frame["event_type"] != "search").astype(int))
    frame = frame.sort_values(["user_id", "session_id", "event_ts", "_order"], kind="stable")
    is_search = frame["event_type"] == "search"
    # A case number per search, carried forward within the session.
    case = is_search.cumsum().where(is_search)
    frame = frame.assign(case=case.groupby([frame["user_id"], frame["session_id"]]).ffill())
    queries = frame[is_search].assign(query=lambda f: f["query"].map(normalize_query))[["case", "query"]]
    queries = queries[queries["query"] != ""].astype({"case": np.int64})
    engaged = frame[~is_search & frame["case"].notna()].astype({"case": np.int64})
    engaged = engaged[["case", "item_id", "event_type"]].merge(queries, on="case")
    return queries.reset_index(drop=True), engaged.reset_index(drop=True)


def search_cases(events: pd.DataFrame) -> pd.DataFrame:
    """(case, query, item_id, grade): every search event of `events` with the items its
    session engaged with after it (attributed_events), graded by the strongest event.
    Searches without engagement are dropped (nothing to score them against)."""
    _, engaged = attributed_events(events)
    engaged = engaged.assign(grade=engaged["event_type"].map(GRADES))
    out = engaged.groupby(["case", "query", "item_id"], as_index=False)["grade"].max()
    return out[["case", "query", "item_id", "grade"]].sort_values(["case", "item_id"]).reset_index(drop=True)


def case_grades(cases: pd.DataFrame) -> list[tuple[str, dict[str, int]]]:
    """[(query, {item: grade})] per case, in case order."""
    out = []
    for _, group in cases.groupby("case", sort=True):
        out.append((group["query"].iloc[0], dict(zip(group["item_id"], group["grade"].astype(int)))))
    return out


def evaluate_rankings(grades: list[tuple[str, dict[str, int]]], ranked_of: Mapping[str, Sequence[str]] | Callable,
                      k: int = 10, kind_of: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """{group: {ndcg, recall, mrr, cases}} for `all` and, with `kind_of` ({query: kind}),
    for `clean` and `noisy` (every kind but clean) cases."""
    lookup = ranked_of if callable(ranked_of) else ranked_of.get
    sums: dict[str, list[float]] = {}
    for query, g in grades:
        ranked = lookup(query) or []
        values = (ndcg(ranked, g, k), recall(ranked, g, k), mrr(ranked, g, k))
        groups = ["all"]
        if kind_of is not None:
            groups.append("clean" if kind_of.get(query, "clean") == "clean" else "noisy")
        for group in groups:
            acc = sums.setdefault(group, [0.0, 0.0, 0.0, 0])
            for j, v in enumerate(values):
                acc[j] += v
            acc[3] += 1
    return {group: {"ndcg": a[0] / a[3], "recall": a[1] / a[3], "mrr": a[2] / a[3], "cases": a[3]}
            for group, a in sums.items() if a[3]}
