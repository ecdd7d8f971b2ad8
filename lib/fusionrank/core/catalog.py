"""Data contracts: the raw inputs users bring and the tables fusionrank writes."""

from __future__ import annotations

from pyspark.sql import types as T

from fusionrank.core.config import EVENT_TYPES

CATALOG_FIELDS = ["item_id", "title", "description", "category", "brand", "price", "image_uri", "updated_at"]
CATALOG_REQUIRED = ["item_id", "title"]

EVENT_FIELDS = ["user_id", "event_type", "event_ts", "item_id", "value", "query", "session_id"]
EVENT_REQUIRED = ["user_id", "event_type", "event_ts"]

KNOWN_EVENT_TYPES = EVENT_TYPES

# Output tables. Column names here are the contract downstream consumers read
# (DESIGN.md, "Output tables"); tests check every table against these.
VECTOR = T.ArrayType(T.FloatType())

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
