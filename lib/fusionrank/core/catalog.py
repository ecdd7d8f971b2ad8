"""The table catalog: every table fusionrank writes (name, schema, partitioning, whether
it holds one partition per run date, whether it belongs to the published snapshot),
and the layout of every other artifact under `storage.root`. One place owns these
facts; stages, the store, the report, `show` and publish read them from here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import types as T

from fusionrank.core import uri as uris
from fusionrank.storage import fs

# Output tables. Column names here are the contract downstream consumers read
# (DESIGN.md, "Output tables"); tests check every table against these.
VECTOR = T.ArrayType(T.FloatType())
# The item_embeddings column in the ranking space: what the ANN index holds and user
# profiles are built in (vectors.space). One name end to end.
INDEX_VECTOR = "rec_vec"

CATALOG_CLEAN = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("title", T.StringType(), False),
        T.StructField("description", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("brand", T.StringType()),
        T.StructField("price", T.DoubleType()),
        T.StructField("image_uri", T.StringType()),
        T.StructField("updated_at", T.TimestampType()),
        T.StructField("content_hash", T.StringType(), False),
        T.StructField("run_date", T.DateType(), False),
    ]
)

EVENTS_CLEAN = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("item_id", T.StringType()),
        T.StructField("event_ts", T.TimestampType(), False),
        T.StructField("value", T.DoubleType()),
        T.StructField("query", T.StringType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("event_date", T.DateType(), False),
    ]
)

QUARANTINE = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("reason", T.StringType(), False),
        T.StructField("source_file", T.StringType()),
        T.StructField("record", T.StringType()),
        T.StructField("quarantined_at", T.TimestampType()),
    ]
)

ITEM_EMBEDDINGS = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("content_hash", T.StringType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("text_vec", VECTOR),
        T.StructField("image_vec", VECTOR),
        T.StructField("behaviour_vec", VECTOR),
        T.StructField("fused_vec", VECTOR),
        T.StructField("encoded_at", T.TimestampType()),
        T.StructField("run_date", T.DateType(), False),
        # The ranking space the ANN index holds: behaviour part ⊕ weighted fused (behaviour.py).
        T.StructField("rec_vec", VECTOR),
    ]
)

USER_PROFILES = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("run_date", T.DateType(), False),
        T.StructField("profile_vec", VECTOR),
        T.StructField("history_len", T.IntegerType()),
        T.StructField("last_event_ts", T.TimestampType()),
        # The most influential history items and their weights (for reasons).
        T.StructField("history_item_ids", T.ArrayType(T.StringType())),
        T.StructField("history_weights", T.ArrayType(T.FloatType())),
    ]
)

RECS_USER_TOPK = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("user_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("score", T.FloatType()),
        T.StructField("reason", T.StringType()),
        T.StructField("reason_item_id", T.StringType()),
        T.StructField("model_version", T.StringType()),
    ]
)

RECS_ITEM_SIMILAR = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("similar_item_id", T.StringType(), False),
        T.StructField("score", T.FloatType()),
    ]
)

METRICS = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("k", T.IntegerType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("baseline", T.DoubleType()),
        T.StructField("split", T.StringType()),
        T.StructField("baseline_name", T.StringType()),
    ]
)

QUERY_TOPK = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("query", T.StringType(), False),
        T.StructField("rank", T.IntegerType(), False),
        T.StructField("item_id", T.StringType(), False),
        T.StructField("score", T.FloatType()),
        # How the score came about: similarity to the query in the index's space,
        # the smoothed click-through, the item's clicks after the query, the query's searches.
        T.StructField("similarity", T.FloatType()),
        T.StructField("ctr", T.FloatType()),
        T.StructField("clicks", T.IntegerType()),
        T.StructField("searches", T.IntegerType()),
        T.StructField("model_version", T.StringType()),
        # The query's predicted top-level category (query.hybrid; null otherwise).
        T.StructField("category", T.StringType()),
    ]
)

# What the night's frequent queries say (ranks.query_memory): search() answers a query
# that is not in query_topk with their intent and pooled click-through.
QUERY_MEMORY = T.StructType(
    [
        T.StructField("run_date", T.DateType(), False),
        T.StructField("query", T.StringType(), False),
        T.StructField("searches", T.IntegerType()),
        T.StructField("query_vec", T.ArrayType(T.FloatType())),  # L2-normalised, the index's text model
        T.StructField("engaged_items", T.ArrayType(T.StringType())),
        T.StructField("engaged_weights", T.ArrayType(T.DoubleType())),
        T.StructField("engaged_clicks", T.ArrayType(T.IntegerType())),
        T.StructField("model_version", T.StringType()),
    ]
)

# The columns DESIGN.md promises for each output table.
CONTRACT_COLUMNS = {
    "item_embeddings": ["item_id", "content_hash", "model_version", "text_vec", "image_vec", "fused_vec", "encoded_at"],
    "user_profiles": ["user_id", "run_date", "profile_vec", "history_len", "last_event_ts"],
    "recs_user_topk": ["run_date", "user_id", "rank", "item_id", "score", "reason", "reason_item_id", "model_version"],
    "recs_item_similar": ["run_date", "item_id", "rank", "similar_item_id", "score"],
    "metrics": ["run_date", "metric", "k", "value", "baseline", "split"],
    "query_topk": ["run_date", "query", "rank", "item_id", "score"],
}


PUBLISHED = T.StructType(
    [
        T.StructField("run_date", T.DateType()),
        T.StructField("run_id", T.StringType()),
        T.StructField("decided_at", T.TimestampType()),
        T.StructField("status", T.StringType()),
        T.StructField("metrics", T.StringType()),
        T.StructField("previous_run_date", T.DateType()),
        T.StructField("table_versions", T.StringType()),
        T.StructField("index_path", T.StringType()),
        T.StructField("reasons", T.StringType()),
    ]
)


@dataclass(frozen=True)
class Table:
    """One output table. `partition_by` is how it is laid out; `dated` tables hold one
    partition per run date and a rerun replaces exactly that date; `in_snapshot`
    tables are pinned (by Delta version) in the published snapshot."""

    name: str
    schema: T.StructType
    partition_by: tuple[str, ...]
    dated: bool
    in_snapshot: bool


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("catalog_clean", CATALOG_CLEAN, ("run_date",), True, True),
    # The input is the full history, so the table is replaced whole each night.
    Table("events_clean", EVENTS_CLEAN, ("event_date",), False, False),
    Table("quarantine", QUARANTINE, ("run_date", "stage"), True, False),
    Table("item_embeddings", ITEM_EMBEDDINGS, ("run_date",), True, True),
    Table("user_profiles", USER_PROFILES, ("run_date",), True, True),
    Table("recs_user_topk", RECS_USER_TOPK, ("run_date",), True, True),
    Table("recs_item_similar", RECS_ITEM_SIMILAR, ("run_date",), True, True),
    Table("metrics", METRICS, ("run_date",), True, True),
    Table("published", PUBLISHED, ("run_date",), True, False),
    # In the snapshot: search() and consumers read the published night's query_topk.
    Table("query_topk", QUERY_TOPK, ("run_date",), True, True),
    # Beside it in the snapshot: the frequent queries behind it (query.hybrid; else empty).
    Table("query_memory", QUERY_MEMORY, ("run_date",), True, True),
)}
OUTPUT_TABLES = tuple(TABLES)
DATED_TABLES = tuple(name for name, t in TABLES.items() if t.dated and name != "published")
SNAPSHOT_TABLES = tuple(name for name, t in TABLES.items() if t.in_snapshot)


def replace_for(table: str, run_date: dt.date, **values) -> dict:
    """The `replace` of a dated table's write: its run date's partition (plus any
    other partition column's value, e.g. the quarantine's stage)."""
    return {"run_date": run_date, **values} if TABLES[table].dated else {}


# -- the layout of everything else under storage.root -----------------------------------
INDEX_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Layout:
    """Where each artifact lives under `storage.root` (tables live at their names).
    Every location is a URI string (`fusionrank.core.uri`)."""

    root: str
    index_dir: str = "index"

    def index(self, run_date: dt.date | str) -> str:
        """The FAISS index artifact (index, ids, attributes, manifest) of a run date."""
        return uris.join(self.root, self.index_dir, f"run_date={run_date}")

    @property
    def index_root(self) -> str:
        return uris.join(self.root, self.index_dir)

    def run_records(self, run_date: dt.date | str) -> str:
        """Each stage's counts for a run date, as JSON (pipeline.runlog)."""
        return uris.join(self.root, "_runs", f"run_date={run_date}")

    @property
    def runs_root(self) -> str:
        return uris.join(self.root, "_runs")

    def learned_projection(self, model_version: str) -> str:
        """The learned fusion matrix W of a model version (executors read it)."""
        return uris.join(self.root, "_fusion", f"{model_version}.npy")

    def tuned_text_model(self, key: str) -> str:
        """A domain-tuned text encoder (safetensors model folder) of tune_text_encoder."""
        return uris.join(self.root, "_models", "text", key)

    def tuned_text_pointer(self) -> str:
        """The latest accepted tuned text encoder (JSON verdict; tuning.stage)."""
        return uris.join(self.root, "_models", "text", "current.json")

    def reranker(self, run_date: dt.date | str) -> str:
        """The re-ranker trained by a run date's rank stage (model, feature list, item
        stats), beside the index artifact."""
        return uris.join(self.root, self.index_dir, "_reranker", f"run_date={run_date}")

    def report(self, run_date: dt.date | str) -> str:
        return uris.join(self.root, "reports", f"run_date={run_date}", "report.html")

    def index_dates(self) -> list[str]:
        """Run dates with a complete index artifact, oldest first."""
        return sorted(entry.split("=", 1)[1] for entry in fs.listdir(self.index_root)
                      if entry.startswith("run_date=") and fs.exists(uris.join(self.index(entry.split("=", 1)[1]),
                                                                                 INDEX_MANIFEST)))


def layout(settings) -> Layout:
    return Layout(str(settings.storage.root), settings.storage.index_dir)
