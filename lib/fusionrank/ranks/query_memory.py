"""The night's query memory: what the frequent queries of the training window say,
kept so that a query nobody searched that night is answered the way query_topk
answers a frequent one.

The `query_memory` table (written by the rank stage under `query.hybrid`, pinned in
the published snapshot beside query_topk) holds one row per frequent query: its
searches, its L2-normalised text vector (the index's text model) and its engaged
items with their weighted engagement and clicks. From it `QueryMemory.context`
gives any query the two things `ranks.hybrid.hybrid_rerank` needs beyond the
candidates, by the rules of `ranks.query_topk.hybrid_top_k`:

- intent: its own engaged items' category distribution when it is a frequent query
  with engagement, else the similarity-weighted mix of its nearest engaged frequent
  queries (ranks.intent);
- engagement: its own (if any) pooled with its nearest frequent queries'
  (`pool_engagement`, each counted `neighbour_weight * cosine` times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fusionrank.ranks.hybrid import engagement_intent, pool_engagement
from fusionrank.ranks.intent import QueryIntent
from fusionrank.vectors.fusion import l2_normalize

MEMORY_COLUMNS = ["query", "searches", "query_vec", "engaged_items", "engaged_weights", "engaged_clicks"]


@dataclass
class QueryMemory:
    queries: list[str]
    searches: list[int]
    vectors: np.ndarray                           # (n, d) L2-normalised query text vectors
    engaged: list[dict[str, tuple[float, int]]]   # per query: {item_id: (engagement, clicks)}

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        self.vectors = vectors.reshape(len(self.queries), -1) if len(self.queries) else np.zeros((0, 0), np.float32)
        self._row = {q: i for i, q in enumerate(self.queries)}

    def __len__(self) -> int:
        return len(self.queries)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "QueryMemory":
        """From query_memory rows (MEMORY_COLUMNS), in a fixed order (by query)."""
        missing = set(MEMORY_COLUMNS) - set(frame.columns)
        if missing:
            raise ValueError(f"query_memory rows lack columns {sorted(missing)}")
        frame = frame.sort_values("query", kind="stable").reset_index(drop=True)
        engaged = []
        for items, weights, clicks in zip(frame["engaged_items"], frame["engaged_weights"], frame["engaged_clicks"]):
            items, weights, clicks = listed(items), listed(weights), listed(clicks)
            if not len(items) == len(weights) == len(clicks):
                raise ValueError("query_memory: engaged_items, engaged_weights and engaged_clicks differ in length")
            engaged.append({str(i): (float(w), int(c)) for i, w, c in zip(items, weights, clicks)})
        dims = {len(v) for v in frame["query_vec"]}
        if len(dims) > 1:
            raise ValueError(f"query_memory: query vectors of several sizes {sorted(dims)}")
        vectors = np.stack([np.asarray(v, np.float32) for v in frame["query_vec"]]) if len(frame) else \
            np.zeros((0, 0), np.float32)
        return cls(frame["query"].astype(str).tolist(), frame["searches"].astype(int).tolist(), vectors, engaged)

    @classmethod
    def build(cls, queries: Sequence[str], searches: Sequence[int], text: np.ndarray,
              engaged_by_query: Mapping[str, Mapping[str, tuple[float, int]]]) -> "QueryMemory":
        return cls(list(queries), [int(s) for s in searches], l2_normalize(np.asarray(text, np.float32)),
                   [dict(engaged_by_query.get(q, {})) for q in queries])

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for q, n, v, e in zip(self.queries, self.searches, self.vectors, self.engaged):
            items = sorted(e)
            rows.append((q, int(n), v.astype(np.float32).tolist(), items, [float(e[i][0]) for i in items],
                         [int(e[i][1]) for i in items]))
        return pd.DataFrame(rows, columns=MEMORY_COLUMNS)

    def context(self, texts: Sequence[str], text: np.ndarray, category_of: Mapping[str, str],
                neighbour_weight: float) -> list[tuple[dict[str, float], dict[str, tuple[float, int]], float]]:
        """Per query: (intent {category: p}, engagement {item: (w, clicks)}, searches),
        pooled as `hybrid_top_k` pools a frequent query of the night."""
        texts = list(texts)
        if not texts:
            return []
        vectors = l2_normalize(np.asarray(text, np.float32).reshape(len(texts), -1))
        if not len(self) or self.vectors.shape[1] != vectors.shape[1]:
            return [({}, {}, 0.0) for _ in texts]
        own = [engagement_intent(e, category_of) for e in self.engaged]
        known = [i for i, d in enumerate(own) if d]
        intents: list[dict[str, float]] = [{} for _ in texts]
        if known:
            categories = sorted({c for i in known for c in own[i]})
            distribution = np.array([[own[i].get(c, 0.0) for c in categories] for i in known])
            intents = QueryIntent([self.queries[i] for i in known], categories, distribution,
                                  self.vectors[known]).predict(texts, vectors)
        near = QueryIntent(self.queries, [], np.zeros((len(self), 0)), self.vectors).nearest(texts, vectors) \
            if neighbour_weight > 0 else [[] for _ in texts]
        out = []
        for q, query in enumerate(texts):
            row = self._row.get(query)
            engaged = self.engaged[row] if row is not None else {}
            searches = self.searches[row] if row is not None else 0
            pooled, total = pool_engagement(
                engaged, searches, [(self.engaged[self._row[n]], self.searches[self._row[n]], s) for n, s in near[q]],
                neighbour_weight)
            out.append((intents[q], pooled, total))
        return out


def listed(value) -> list:
    """An array cell as a list (null: empty)."""
    return [] if value is None or (isinstance(value, float) and np.isnan(value)) else list(value)
