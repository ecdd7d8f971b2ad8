"""The stages, in flow order, with what each reads and writes.

Each stage is `fn(ctx) -> dict of counts` in its folder's `stage.py`, keyed on the
run date: rerunning a date replaces that date's rows and duplicates nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fusionrank.clean.stage import clean_catalog, clean_events
from fusionrank.core.context import RunContext
from fusionrank.index.stage import build_index
from fusionrank.metrics.stage import evaluate
from fusionrank.profiles.stage import build_profiles
from fusionrank.publish.stage import publish
from fusionrank.ranks.stage import rank
from fusionrank.tuning.stage import tune_text_encoder
from fusionrank.vectors.stage import encode_items


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], dict]
    reads: tuple[str, ...]
    writes: tuple[str, ...]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("clean_catalog", clean_catalog, ("inputs.catalog",), ("catalog_clean", "quarantine")),
    Stage("clean_events", clean_events, ("inputs.events", "catalog_clean"), ("events_clean", "quarantine")),
    Stage("encode_items", encode_items, ("catalog_clean", "events_clean", "item_embeddings"), ("item_embeddings",)),
    Stage("build_index", build_index, ("item_embeddings", "catalog_clean"), ("index",)),
    Stage("build_profiles", build_profiles, ("events_clean", "item_embeddings"), ("user_profiles",)),
    Stage("rank", rank, ("user_profiles", "index", "events_clean", "catalog_clean", "item_embeddings"),
          ("recs_user_topk", "recs_item_similar", "query_topk", "query_memory")),
    Stage("evaluate", evaluate, ("recs_user_topk", "events_clean", "catalog_clean", "index"), ("metrics",)),
    # The night becomes the consumers' current snapshot only if its metrics pass the gate.
    Stage("publish", publish, ("metrics", "published"), ("published",)),
)}
# Weekly stages: runnable by name (runner, CLI `stage`), not part of the nightly ORDER.
WEEKLY: dict[str, Stage] = {s.name: s for s in (
    Stage("tune_text_encoder", tune_text_encoder, ("events_clean", "catalog_clean"), ("tuned_text_model",)),
)}
ORDER = list(STAGES)
STAGES.update(WEEKLY)
