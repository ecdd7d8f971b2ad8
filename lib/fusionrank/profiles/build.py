"""build_profiles: one vector per user from the items in their history.

weight(event) = event_weights[type] * 2^(-age_days / half_life_days)   (age from the user's last event)
                (* max(value - rating_offset, 0) / rating_scale for rating events)
profile       = sum over history items of weight * item_vector, in the ranking
                space (behaviour.py): the behaviour part is the plain weighted sum
                (a low-rank linear autoencoder's user code, so the index score is
                exactly the model's score), the content part is L2-normalised.

Events collapse to (user, item, weight) in Spark SQL; each user's weighted sum is
pooled with numpy in `applyInPandas` on the executors (Spark's higher-order array
functions were measured far slower for this). Nothing is collected to the driver.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import INDEX_VECTOR
from fusionrank.core.config import ProfilesConfig
from fusionrank.core.spark import utc_literal


def event_weight(cfg: ProfilesConfig, as_of: dt.datetime | Column, decay: bool = True) -> Column:
    """The weight of one event as a Spark column (0 for types without a weight).

    `as_of` is the instant ages are measured from: a datetime, or a column (the
    user's last event, see `weighted_history`)."""
    type_weight = F.lit(0.0)
    for event_type, weight in sorted(cfg.event_weights.items()):
        type_weight = F.when(F.col("event_type") == event_type, F.lit(float(weight))).otherwise(type_weight)
    reference = as_of if isinstance(as_of, Column) else utc_literal(as_of)
    age_days = (reference.cast("double") - F.col("event_ts").cast("double")) / 86400.0
    time_decay = (F.pow(F.lit(2.0), -F.greatest(age_days, F.lit(0.0)) / F.lit(cfg.half_life_days))
                  if decay and cfg.half_life_days else F.lit(1.0))
    rating = F.when(
        (F.col("event_type") == "rating") & F.col("value").isNotNull(),
        F.greatest(F.col("value") - F.lit(cfg.rating_offset), F.lit(0.0)) / F.lit(cfg.rating_scale),
    ).otherwise(F.lit(1.0))
    return type_weight * time_decay * rating


def weighted_history(events: DataFrame, cfg: ProfilesConfig, as_of: dt.datetime, decay: bool = True) -> DataFrame:
    """(user_id, item_id, weight, last_ts): events collapsed to one row per user and item.

    With `profiles.decay_from: user_last_event` ages count back from each user's own
    last event, so a user's recent interests weigh more however long ago they were
    active (a global reference would shrink inactive users' profiles as a whole).
    """
    events = events.where(F.col("item_id").isNotNull())
    reference: dt.datetime | Column = as_of
    if cfg.decay_from == "user_last_event":
        events = events.withColumn("_user_last", F.max("event_ts").over(Window.partitionBy("user_id")))
        reference = F.col("_user_last")
    return (
        events
        .withColumn("weight", event_weight(cfg, reference, decay))
        .groupBy("user_id", "item_id")
        .agg(F.sum("weight").alias("weight"), F.max("event_ts").alias("last_ts"))
    )


PROFILE_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType(), False),
        T.StructField("profile_vec", T.ArrayType(T.FloatType())),
        T.StructField("history_len", T.IntegerType()),
        T.StructField("last_event_ts", T.TimestampType()),
        T.StructField("history_item_ids", T.ArrayType(T.StringType())),
        T.StructField("history_weights", T.ArrayType(T.FloatType())),
    ]
)


def pool_user(pdf: pd.DataFrame, max_history: int, behaviour_dim: int = 0) -> pd.DataFrame:
    """One user's rows (item_id, weight, last_ts, vec) -> one profile row.

    The first `behaviour_dim` components are summed as they are; the rest (content)
    is L2-normalised.
    """
    order = np.argsort(pdf["item_id"].to_numpy(), kind="stable")  # fixed summation order: same bits on rerun
    pdf = pdf.iloc[order]
    weights = pdf["weight"].to_numpy(dtype=np.float64)
    vectors = np.stack(pdf[INDEX_VECTOR].map(np.asarray).tolist()).astype(np.float64)
    summed = weights @ vectors
    content = summed[behaviour_dim:]
    profile = np.concatenate([summed[:behaviour_dim], content / max(np.linalg.norm(content), 1e-12)]).astype(np.float32)
    # Heaviest first; ties by item id so reruns agree.
    order = sorted(range(len(pdf)), key=lambda i: (-weights[i], pdf["item_id"].iat[i]))[:max_history]
    return pd.DataFrame(
        {
            "user_id": [pdf["user_id"].iat[0]],
            "profile_vec": [profile],
            "history_len": [len(pdf)],
            "last_event_ts": [pdf["last_ts"].max()],
            "history_item_ids": [[pdf["item_id"].iat[i] for i in order]],
            "history_weights": [np.asarray([weights[i] for i in order], dtype=np.float32)],
        }
    )


def build_user_profiles(
    history: DataFrame,
    item_vectors: DataFrame,
    cfg: ProfilesConfig,
    run_date: dt.date,
    behaviour_dim: int = 0,
) -> DataFrame:
    """user_profiles rows from `weighted_history` and (item_id, rec_vec): the ranking space."""
    rows = history.where(F.col("weight") > 0).join(item_vectors, "item_id", "inner")
    rows = rows.select("user_id", "item_id", "weight", "last_ts", INDEX_VECTOR)
    max_history = cfg.max_history

    def pool(pdf):  # a plain function: Spark inspects it for type hints
        return pool_user(pdf, max_history, behaviour_dim)

    pooled = rows.groupBy("user_id").applyInPandas(pool, PROFILE_SCHEMA)
    return pooled.select(
        "user_id",
        F.lit(run_date).alias("run_date"),
        "profile_vec",
        "history_len",
        "last_event_ts",
        "history_item_ids",
        "history_weights",
    )
