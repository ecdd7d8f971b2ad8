"""Query intent: which category a query is after.

A known query (searched in training, with engaged items) gets the category
distribution of what its sessions engaged with, weighted by event type and
smoothed (`prior` pseudo-counts spread evenly). An unseen query gets the
similarity-weighted mix of its `neighbours` nearest known queries (cosine of the
query text vectors; neighbours below `min_similarity` are ignored, and a query with
none gets no intent). `top` is the most likely category and its probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass
class QueryIntent:
    queries: list[str]
    categories: list[str]
    distribution: np.ndarray  # (queries, categories), rows sum to 1
    vectors: np.ndarray | None  # (queries, d) L2-normalised query text vectors
    neighbours: int = 5
    min_similarity: float = 0.5

    @classmethod
    def fit(cls, engaged: pd.DataFrame, vectors_of=None, prior: float = 0.5, neighbours: int = 5,
            min_similarity: float = 0.5) -> "QueryIntent":
        """engaged: (query, category, weight) rows; `vectors_of(list of queries)` gives
        their L2-normalised text vectors (None: known queries only)."""
        missing = {"query", "category", "weight"} - set(engaged.columns)
        if missing:
            raise ValueError(f"intent needs columns query, category, weight; missing {sorted(missing)}")
        table = engaged.groupby(["query", "category"], sort=True)["weight"].sum().unstack(fill_value=0.0)
        queries, categories = table.index.astype(str).tolist(), table.columns.astype(str).tolist()
        counts = table.to_numpy(dtype=np.float64) + prior / max(len(categories), 1)
        distribution = counts / counts.sum(axis=1, keepdims=True)
        vectors = None
        if vectors_of is not None and queries:
            vectors = np.asarray(vectors_of(queries), dtype=np.float32)
        return cls(queries, categories, distribution, vectors, neighbours, min_similarity)

    def __post_init__(self) -> None:
        self._row = {q: i for i, q in enumerate(self.queries)}

    def known(self, query: str) -> bool:
        return query in self._row

    def predict(self, queries: Sequence[str], query_vectors: np.ndarray | None = None) -> list[dict[str, float]]:
        """Per query, {category: probability} (empty when nothing is known)."""
        out: list[dict[str, float]] = []
        sims = None
        unseen = [i for i, q in enumerate(queries) if q not in self._row]
        if unseen and query_vectors is not None and self.vectors is not None and len(self.queries):
            sims = np.asarray(query_vectors, dtype=np.float32)[unseen] @ self.vectors.T
        position = {i: j for j, i in enumerate(unseen)}
        for i, q in enumerate(queries):
            row = self._row.get(q)
            if row is not None:
                dist = self.distribution[row]
            elif sims is not None:
                s = sims[position[i]]
                top = np.argsort(-s, kind="stable")[:self.neighbours]
                top = top[s[top] >= self.min_similarity]
                if not len(top):
                    out.append({})
                    continue
                w = s[top].astype(np.float64)
                dist = (w[:, None] * self.distribution[top]).sum(axis=0) / w.sum()
            else:
                out.append({})
                continue
            out.append({c: float(p) for c, p in zip(self.categories, dist)})
        return out

    def nearest(self, queries: Sequence[str], query_vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """Per query, its `neighbours` nearest known queries other than itself with
        cosine >= `min_similarity`, as (query, cosine), nearest first."""
        if self.vectors is None or not len(self.queries) or not len(queries):
            return [[] for _ in queries]
        sims = np.asarray(query_vectors, dtype=np.float32) @ self.vectors.T
        out = []
        for i, q in enumerate(queries):
            s = sims[i]
            own = self._row.get(q)
            if own is not None:
                s = s.copy()
                s[own] = -np.inf
            top = np.argsort(-s, kind="stable")[:self.neighbours]
            out.append([(self.queries[j], float(s[j])) for j in top if s[j] >= self.min_similarity])
        return out

    @staticmethod
    def top(dist: dict[str, float]) -> tuple[str | None, float]:
        if not dist:
            return None, 0.0
        category = min(dist, key=lambda c: (-dist[c], c))
        return category, dist[category]
