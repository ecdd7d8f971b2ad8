"""Transform: clean the raw catalog and events.

Each function takes the raw rows (every column a string, see `inputs.read_raw`) and
returns one DataFrame with a `reason` column: null for a clean row, otherwise why
the row was rejected (the first rule it broke). `split_clean` turns that into the
clean table and the quarantine rows, so that every raw row ends up in exactly one
of the two and the counts always add up.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fusionrank.core.config import CleaningConfig
from fusionrank.raw.readers import CORRUPT, SOURCE_FILE
from fusionrank.raw.contract import CATALOG_FIELDS, EVENT_FIELDS, KNOWN_EVENT_TYPES
from fusionrank.core.spark import utc_literal

REASON = "reason"
HASH_SEPARATOR = "\u001f"


# -- column helpers (pure) ------------------------------------------------------
def blank(col: Column) -> Column:
    """Null, empty, or only whitespace/control characters (tabs and newlines too)."""
    return col.isNull() | (F.regexp_replace(col, r"[\s\p{Cntrl}\x{FFFD}\x{200B}]", "") == "")


def not_utf8(col: Column) -> Column:
    """Bytes that were not UTF-8 were read as U+FFFD: in an id they cannot be trusted
    (two different bad ids would become one)."""
    return F.coalesce(F.instr(col, "\ufffd") > 0, F.lit(False))


def normalize_text(col: Column, max_chars: int | None = None) -> Column:
    """Drop control characters and the replacement character left by bad bytes,
    collapse whitespace, trim; empty becomes null."""
    text = F.regexp_replace(col, r"[\p{Cntrl}\x{FFFD}\x{200B}]", " ")
    text = F.trim(F.regexp_replace(text, r"\s+", " "))
    if max_chars:
        text = F.substring(text, 1, max_chars)
    return F.when(text == "", None).otherwise(text)


def normalize_category(col: Column) -> Column:
    """`Women>Dresses >  Maxi` becomes `Women > Dresses > Maxi`."""
    text = normalize_text(col)
    text = F.regexp_replace(text, r"\s*>\s*", " > ")
    text = F.regexp_replace(text, r"^( > )+|( > )+$", "")
    return F.when(text == "", None).otherwise(text)


def _try_double(col: Column) -> Column:
    return F.when(blank(col), None).otherwise(F.trim(col).try_cast("double"))


def parse_timestamp(col: Column, millis_threshold: float = 1e11) -> Column:
    """Epoch seconds or milliseconds (numbers), or an ISO-8601 / Spark timestamp string."""
    number = _try_double(col)
    finite = number.isNotNull() & ~F.isnan(number) & (F.abs(number) < F.lit(1e14))
    seconds = F.when(F.abs(number) > F.lit(millis_threshold), number / 1000.0).otherwise(number)
    from_epoch = F.when(finite, F.timestamp_seconds(seconds))
    from_text = F.when(number.isNull() & ~blank(col), F.try_to_timestamp(F.trim(col)))
    return F.coalesce(from_epoch, from_text)


def reject(df: DataFrame, condition: Column, reason: Column | str) -> DataFrame:
    """Set `reason` on rows that are still clean and meet `condition`."""
    reason_col = F.lit(reason) if isinstance(reason, str) else reason
    return df.withColumn(REASON, F.coalesce(F.col(REASON), F.when(condition, reason_col)))


def quoted(col: Column, width: int = 40) -> Column:
    return F.concat(F.lit("'"), F.substring(F.coalesce(col, F.lit("")), 1, width), F.lit("'"))


def content_hash(*cols: Column) -> Column:
    return F.sha2(F.concat_ws(HASH_SEPARATOR, *[F.coalesce(c.cast("string"), F.lit("")) for c in cols]), 256)


def _raw_record(fields: list[str]) -> Column:
    """The raw row as JSON, or the malformed text itself. Bytes that are not UTF-8
    become U+FFFD: a raw invalid byte in the quarantine's string column would make
    the whole table unreadable for pyarrow, pandas and DuckDB."""
    return F.make_valid_utf8(F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*[F.col(f) for f in fields]))))


def _malformed_reason() -> Column:
    return F.when(F.is_valid_utf8(F.col(CORRUPT)), F.lit("malformed record")).otherwise(
        F.lit("malformed record: not valid UTF-8"))


# -- catalog ----------------------------------------------------------------------
def classify_catalog(raw: DataFrame, rules: CleaningConfig, run_end: dt.datetime | None = None) -> DataFrame:
    """Parse and validate catalog rows; keep the latest version of each item.

    With `run_end` (the first instant after the run date), versions updated later
    belong to a later run: they are quarantined and the version before them wins,
    so a backfill over a full-history catalog sees the catalog as it was."""
    df = raw.withColumn(REASON, F.lit(None).cast("string"))
    df = df.withColumn("_record", _raw_record(CATALOG_FIELDS))
    df = reject(df, F.col(CORRUPT).isNotNull(), _malformed_reason())
    df = reject(df, blank(F.col("item_id")), "missing item_id")
    df = reject(df, blank(F.col("title")), "missing title")
    df = reject(df, not_utf8(F.col("item_id")), "item_id is not valid UTF-8")

    price = _try_double(F.col("price"))
    df = df.withColumn("_price", price)
    df = reject(df, ~blank(F.col("price")) & F.col("_price").isNull(),
                F.concat(F.lit("price is not a number: "), quoted(F.col("price"))))
    df = reject(df, F.isnan(F.col("_price")) | (F.abs(F.col("_price")) == float("inf")), "price is not finite")
    df = reject(df, F.col("_price") < 0, "negative price")
    df = reject(df, F.col("_price") > rules.max_price,
                F.lit(f"price above cleaning.max_price ({rules.max_price:g})"))

    df = df.withColumn("_updated_at", parse_timestamp(F.col("updated_at"), rules.epoch_millis_threshold))
    df = reject(df, ~blank(F.col("updated_at")) & F.col("_updated_at").isNull(),
                F.concat(F.lit("unparseable updated_at: "), quoted(F.col("updated_at"))))
    if run_end is not None:
        df = reject(df, F.col("_updated_at") >= utc_literal(run_end), "updated_at after the run date")

    df = df.select(
        F.trim(F.col("item_id")).alias("item_id"),
        normalize_text(F.col("title"), rules.max_text_chars).alias("title"),
        normalize_text(F.col("description"), rules.max_text_chars).alias("description"),
        normalize_category(F.col("category")).alias("category"),
        normalize_text(F.col("brand")).alias("brand"),
        F.col("_price").alias("price"),
        normalize_text(F.col("image_uri")).alias("image_uri"),
        F.col("_updated_at").alias("updated_at"),
        F.col(REASON),
        F.col("_record"),
        F.col(SOURCE_FILE),
    )
    df = df.withColumn(
        "content_hash",
        content_hash(*[F.col(c) for c in ("title", "description", "category", "brand", "price", "image_uri")]),
    )
    # Latest version wins; ties on updated_at are broken by content so reruns agree.
    latest = Window.partitionBy("item_id", F.col(REASON).isNull()).orderBy(
        F.col("updated_at").desc_nulls_last(), F.col("content_hash").desc()
    )
    df = df.withColumn("_version_rank", F.row_number().over(latest))
    df = reject(df, F.col("_version_rank") > 1, "duplicate item_id: superseded by a newer version")
    return df.drop("_version_rank")


CATALOG_OUTPUT = ["item_id", "title", "description", "category", "brand", "price", "image_uri", "updated_at", "content_hash"]


# -- events -----------------------------------------------------------------------
def classify_events(
    raw: DataFrame,
    known_items: DataFrame,
    rules: CleaningConfig,
    run_end: dt.datetime,
) -> DataFrame:
    """Parse and validate events against the clean catalog.

    `run_end` is the first instant after the run date: later events belong to a
    later run and are rejected here rather than leaking into this one.
    """
    df = raw.withColumn(REASON, F.lit(None).cast("string"))
    df = df.withColumn("_record", _raw_record(EVENT_FIELDS))
    df = reject(df, F.col(CORRUPT).isNotNull(), _malformed_reason())
    df = reject(df, blank(F.col("user_id")), "missing user_id")
    df = reject(df, not_utf8(F.col("user_id")), "user_id is not valid UTF-8")
    df = reject(df, not_utf8(F.col("item_id")), "item_id is not valid UTF-8")
    event_type = F.lower(F.trim(F.col("event_type")))
    df = df.withColumn("_event_type", event_type)
    df = reject(df, blank(F.col("event_type")), "missing event_type")
    df = reject(df, ~F.col("_event_type").isin(*KNOWN_EVENT_TYPES),
                F.concat(F.lit("unknown event_type: "), quoted(F.col("event_type"))))
    df = df.withColumn("_event_ts", parse_timestamp(F.col("event_ts"), rules.epoch_millis_threshold))
    df = reject(df, blank(F.col("event_ts")), "missing event_ts")
    df = reject(df, F.col("_event_ts").isNull(), F.concat(F.lit("unparseable event_ts: "), quoted(F.col("event_ts"))))
    df = reject(df, F.col("_event_ts") >= utc_literal(run_end), "event_ts after the run date")
    is_search = F.col("_event_type") == "search"
    df = reject(df, ~is_search & blank(F.col("item_id")), "missing item_id")
    df = reject(df, is_search & blank(F.col("query")), "search event without query")
    df = df.withColumn("_value", _try_double(F.col("value")))
    df = reject(df, ~blank(F.col("value")) & F.col("_value").isNull(),
                F.concat(F.lit("value is not a number: "), quoted(F.col("value"))))
    df = reject(df, F.isnan(F.col("_value")) | (F.abs(F.col("_value")) == float("inf")), "value is not finite")

    df = df.select(
        F.trim(F.col("user_id")).alias("user_id"),
        F.col("_event_type").alias("event_type"),
        F.when(blank(F.col("item_id")), None).otherwise(F.trim(F.col("item_id"))).alias("item_id"),
        F.col("_event_ts").alias("event_ts"),
        F.col("_value").alias("value"),
        normalize_text(F.col("query"), 512).alias("query"),
        normalize_text(F.col("session_id")).alias("session_id"),
        F.col(REASON),
        F.col("_record"),
        F.col(SOURCE_FILE),
    )
    known = known_items.select(F.col("item_id").alias("_known_item")).distinct()
    df = df.join(known, df["item_id"] == known["_known_item"], "left")
    df = reject(df, F.col("item_id").isNotNull() & F.col("_known_item").isNull(), "unknown item_id (not in catalog_clean)")
    df = df.drop("_known_item")

    keys = ["user_id", "event_type", "item_id", "event_ts", "value", "query"]
    dup_window = Window.partitionBy(*keys, F.col(REASON).isNull()).orderBy("_record")
    df = df.withColumn("_copy", F.row_number().over(dup_window))
    df = reject(df, F.col("_copy") > 1, "duplicate event")

    df = df.withColumn("event_date", F.to_date(F.col("event_ts")))
    day = Window.partitionBy("user_id", "event_date")
    df = df.withColumn("_day_events", F.sum(F.when(F.col(REASON).isNull(), 1).otherwise(0)).over(day))
    df = reject(
        df,
        F.col("_day_events") > rules.bot_max_events_per_day,
        F.concat(
            F.lit("bot filter: "), F.col("_day_events").cast("string"),
            F.lit(f" events in one day (cleaning.bot_max_events_per_day = {rules.bot_max_events_per_day})"),
        ),
    )
    return df.drop("_copy", "_day_events")


EVENTS_OUTPUT = ["user_id", "event_type", "item_id", "event_ts", "value", "query", "session_id", "event_date"]


# -- split ------------------------------------------------------------------------
def split_clean(classified: DataFrame, output_columns: list[str]) -> tuple[DataFrame, DataFrame]:
    """(clean rows with `output_columns`, rejected rows as quarantine records)."""
    clean = classified.where(F.col(REASON).isNull()).select(*output_columns)
    rejected = classified.where(F.col(REASON).isNotNull()).select(
        F.col(REASON).alias("reason"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.col("_record").alias("record"),
    )
    return clean, rejected


def quarantine_rows(rejected: DataFrame, stage: str, run_date: dt.date) -> DataFrame:
    return rejected.select(
        F.lit(run_date).alias("run_date"),
        F.lit(stage).alias("stage"),
        "reason",
        "source_file",
        "record",
        F.current_timestamp().alias("quarantined_at"),
    )
