"""Hybrid query ranking: dense and lexical candidates fused by reciprocal rank fusion,
then re-ranked with the query's click-through and its category intent.

For a query with dense candidates D (by cosine, best first) and lexical candidates
L (by BM25), an item's fused score is

    fused = (w_d / (c + rank_D) + w_l / (c + rank_L)) / ((w_d + w_l) / (c + 1))

(a missing rank contributes 0; the denominator puts a double first place at 1), and

    score = (1 - ctr_weight) * fused + ctr_weight * ctr + intent_weight * p(category)

with ctr = engagement / (searches + ctr_prior) as in ranks.query_topk and
p(category) the query's predicted category distribution (ranks.intent). With
`neighbour_weight` > 0 the engagement and searches are pooled with those of the
query's nearest known queries (`pool_engagement`), so a misspelt or reworded query
borrows the clicks of the query it stands for. Items
engaged with after the query join the candidates. Ties break by item id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping, Sequence

from fusionrank.core import uri as uris
from fusionrank.index.build import ATTRIBUTES_DIR
from fusionrank.storage import fs


@dataclass(frozen=True)
class HybridParams:
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    ctr_weight: float = 0.5
    ctr_prior: float = 10.0
    intent_weight: float = 0.0
    neighbour_weight: float = 0.0

    def with_(self, **changes) -> "HybridParams":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def rrf(rankings: Sequence[Sequence[str]], weights: Sequence[float], rrf_k: float) -> dict[str, float]:
    """Normalised weighted reciprocal rank fusion of ranked id lists (best first)."""
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        raise ValueError(f"rank fusion needs a positive weight, got {list(weights)}")
    scale = (rrf_k + 1.0) / total
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights):
        if weight <= 0:
            continue
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (rrf_k + rank) * scale
    return fused


def hybrid_rerank(
    dense_ids: Sequence[str],
    lexical_ids: Sequence[str],
    engagement: Mapping[str, tuple[float, int]],
    searches: float,
    k: int,
    params: HybridParams,
    intent: Mapping[str, float] | None = None,
    category_of: Mapping[str, str] | None = None,
) -> list[tuple[str, float, float, float, int]]:
    """(item_id, score, fused, ctr, clicks) of the best k candidates."""
    fused = rrf([list(dense_ids), list(lexical_ids)], [params.dense_weight, params.lexical_weight], params.rrf_k)
    denominator = max(float(searches) + params.ctr_prior, 1e-9)
    rows = []
    for item in set(fused) | set(engagement):
        engaged, clicks = engagement.get(item, (0.0, 0))
        ctr = min(1.0, engaged / denominator) if searches > 0 or engaged > 0 else 0.0
        boost = 0.0
        if intent and category_of is not None and params.intent_weight:
            boost = float(intent.get(category_of.get(item, ""), 0.0))
        f = fused.get(item, 0.0)
        score = (1.0 - params.ctr_weight) * f + params.ctr_weight * ctr + params.intent_weight * boost
        rows.append((item, score, f, ctr, int(clicks)))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows[:k]


def pool_engagement(engagement: Mapping[str, tuple[float, int]], searches: int,
                    neighbours: Sequence[tuple[Mapping[str, tuple[float, int]], int, float]],
                    weight: float) -> tuple[dict[str, tuple[float, int]], float]:
    """A query's engagement and searches pooled with its neighbours' (engagement,
    searches, cosine), each counted `weight * cosine` times: the click-through of a
    rare or unseen query is shrunk towards that of the queries nearest to it."""
    pooled = {item: (float(w), int(c)) for item, (w, c) in engagement.items()}
    total = float(searches)
    if weight <= 0:
        return pooled, total
    for engaged, n, similarity in neighbours:
        share = weight * max(float(similarity), 0.0)
        total += share * n
        for item, (w, c) in engaged.items():
            old_w, old_c = pooled.get(item, (0.0, 0))
            pooled[item] = (old_w + share * w, old_c + int(c))
    return pooled, total


def params_from(cfg) -> HybridParams:
    """HybridParams from the `query` settings."""
    return HybridParams(rrf_k=cfg.rrf_k, dense_weight=1.0, lexical_weight=cfg.lexical_weight,
                        ctr_weight=cfg.ctr_weight, ctr_prior=cfg.ctr_prior, intent_weight=cfg.intent_weight,
                        neighbour_weight=getattr(cfg, "neighbour_weight", 0.0))


def item_categories(index_path) -> dict[str, str]:
    """{item_id: top-level category} from the index artifact's attributes (empty if none)."""
    import pyarrow.parquet as pq

    from_dir = uris.join(str(index_path), ATTRIBUTES_DIR)
    if not fs.exists(from_dir):
        return {}
    filesystem, path = fs.filesystem(from_dir)
    table = pq.read_table(path, columns=["item_id", "category"], filesystem=filesystem)
    return {i: c for i, c in zip(table.column("item_id").to_pylist(), table.column("category").to_pylist()) if c}


def engagement_intent(engaged: Mapping[str, tuple[float, int]], category_of: Mapping[str, str],
                      prior: float = 0.5) -> dict[str, float]:
    """A known query's category distribution from its engaged items (ranks.intent's rule)."""
    weights: dict[str, float] = {}
    for item, (w, _) in engaged.items():
        category = category_of.get(item)
        if category:
            weights[category] = weights.get(category, 0.0) + float(w)
    total = sum(weights.values())
    if total <= 0:
        return {}
    cats = sorted(weights)
    return {c: (weights[c] + prior / len(cats)) / (total + prior) for c in cats}
