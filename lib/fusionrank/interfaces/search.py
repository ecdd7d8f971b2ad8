"""`fusionrank.search`: any query, seen or not, against a night's index, without Spark.

The query side is rebuilt from the index's manifest (its ModelSpec), never from
today's settings: a night's index is always searched in the space it was built in.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import pandas as pd
import pyarrow.compute as pc

from fusionrank.core.catalog import layout
from fusionrank.core.config import Settings, load_config
from fusionrank.index.build import load_index
from fusionrank.storage import fs
from fusionrank.ranks.query_topk import check_dim, encode_queries, index_spec, normalize_query, text_similarity


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


def _delta_rows(table_path: str, run_date: str, columns: list[str], filter_expr) -> pd.DataFrame:
    if not fs.is_delta_table(table_path):
        return pd.DataFrame(columns=columns)
    table = fs.delta_table(table_path)
    if "run_date" not in table.metadata().partition_columns:
        return pd.DataFrame(columns=columns)
    dataset = table.to_pyarrow_dataset(file_pruning_predicate=[("run_date", "=", run_date)])
    return dataset.to_table(columns=columns, filter=filter_expr).to_pandas()


def search(query: str, k: int = 10, settings=None, run_date: str | dt.date | None = None) -> list[SearchHit]:
    """The top `k` items for `query` over the index of `run_date` (default: the latest).

    `settings` is a Settings object or a config path (default: $FUSIONRANK_CONF or
    conf/local.yaml). A query that is in that night's `query_topk` gets those rows
    (they carry the click-through); any other query is encoded with the index's own
    text model and searched in the index.
    """
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
        path = layout(settings).index(day)
        loaded = load_index(path)
        spec = index_spec(loaded, str(path))
        text, vector = encode_queries([normalized], spec)
        check_dim(vector, loaded, str(path))
        _, positions = loaded.index.search(vector, min(max(k, settings.query.candidates), int(loaded.index.ntotal)))
        vecs, ids = loaded.vectors([loaded.ids[p] for p in positions[0] if p >= 0])
        sims = text_similarity(vecs, text[0], spec)
        order = sorted(range(len(ids)), key=lambda j: (-sims[j], ids[j]))[:k]
        hits = [(str(ids[j]), float(sims[j])) for j in order]
    titles = _delta_rows(settings.storage.table_path("catalog_clean"), day, ["item_id", "title"],
                         pc.field("item_id").isin([i for i, _ in hits]))
    title_of = dict(zip(titles["item_id"], titles["title"]))
    return [SearchHit(rank, item, score, title_of.get(item)) for rank, (item, score) in enumerate(hits, start=1)]
