"""evaluate: ranking metrics on a time-based holdout, beside a popularity baseline.

Protocol: the last `evaluate.holdout_days` days up to the run date are held out
from every upstream stage. A user is evaluated when they have training events and
at least one held-out item they had not interacted with in training; that user's
relevant set is those held-out items. Users without recommendations score zero.

Definitions (k = cut-off, rel_i = 1 when the item at rank i is relevant,
R = number of relevant items):
  Precision@k = hits / k;  Recall@k = hits / R
  NDCG@k      = sum_i rel_i / log2(i + 1)  /  sum_{i <= min(R, k)} 1 / log2(i + 1)
  MAP@k       = mean over users of sum_i rel_i * Precision@i / min(R, k)
The numpy functions below are the reference; the Spark versions compute the same.
"""

from __future__ import annotations

import math
from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

METRIC_NAMES = ("precision", "recall", "ndcg", "map")


# -- reference implementations (one user) ------------------------------------------
def precision_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    return sum(1 for item in recommended[:k] if item in relevant) / k


def recall_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for item in recommended[:k] if item in relevant) / len(relevant)


def ndcg_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(recommended[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def average_precision_at_k(recommended: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(recommended[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / min(len(relevant), k)


# -- Spark ---------------------------------------------------------------------------
def ranking_metrics(recs: DataFrame, relevant: DataFrame, k: int) -> dict[str, float]:
    """Mean metrics over the users in `relevant` (user_id, item_id).

    `recs` has (user_id, rank, item_id) with rank starting at 1.
    """
    rel = relevant.select("user_id", "item_id").distinct().withColumn("rel", F.lit(1))
    n_rel = rel.groupBy("user_id").agg(F.count("*").alias("n_rel"))
    top = recs.where(F.col("rank") <= k).select("user_id", "rank", "item_id")
    top = top.join(n_rel.select("user_id"), "user_id", "inner")
    hits = top.join(rel, ["user_id", "item_id"], "left").fillna(0, subset=["rel"])
    upto = Window.partitionBy("user_id").orderBy("rank").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    hits = hits.withColumn("cum_hits", F.sum("rel").over(upto))
    per_user = hits.groupBy("user_id").agg(
        F.sum("rel").alias("hits"),
        F.sum(F.col("rel") / F.log2(F.col("rank") + 1)).alias("dcg"),
        F.sum(F.when(F.col("rel") == 1, F.col("cum_hits") / F.col("rank")).otherwise(0.0)).alias("ap_sum"),
    )
    users = n_rel.join(per_user, "user_id", "left").fillna(0, subset=["hits", "dcg", "ap_sum"])
    cutoff = F.least(F.col("n_rel"), F.lit(k))
    ideal = F.aggregate(F.sequence(F.lit(1), cutoff), F.lit(0.0), lambda acc, i: acc + 1.0 / F.log2(i + 1))
    scored = users.select(
        (F.col("hits") / F.lit(k)).alias("precision"),
        (F.col("hits") / F.col("n_rel")).alias("recall"),
        (F.col("dcg") / ideal).alias("ndcg"),
        (F.col("ap_sum") / cutoff).alias("map"),
    )
    # A sum of doubles depends on the order the partitions' partial sums arrive in; a
    # decimal sum does not, so a rerun of a date reproduces its metrics bit for bit.
    means = [F.avg(F.col(m).cast("decimal(38,18)")).cast("double").alias(m) for m in METRIC_NAMES]
    row = scored.agg(*means, F.count("*").alias("users")).first()
    result = {m: float(row[m] or 0.0) for m in METRIC_NAMES}
    result["users"] = int(row["users"])
    return result


def relevant_items(train: DataFrame, holdout: DataFrame) -> DataFrame:
    """(user_id, item_id) held out for users with training history, minus items they
    already had in training."""
    train_items = train.where(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    train_users = train_items.select("user_id").distinct()
    held = holdout.where(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    held = held.join(train_users, "user_id", "inner")
    return held.join(train_items, ["user_id", "item_id"], "left_anti")


def popularity_recs(train: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Top-k most popular training items (distinct users) that each user has not seen."""
    seen = train.where(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
    popularity = seen.groupBy("item_id").agg(F.count("*").alias("users"))
    most_seen = seen.join(users, "user_id", "inner").groupBy("user_id").count().agg(F.max("count")).first()[0] or 0
    depth = k + int(most_seen)
    # The head of the popularity list is small (k + the longest history): take it to
    # the driver and broadcast it, instead of ranking every item in one partition.
    head = popularity.orderBy(F.desc("users"), F.asc("item_id")).limit(depth).collect()
    ranked = train.sparkSession.createDataFrame(
        [(row["item_id"], i) for i, row in enumerate(head, start=1)], "item_id string, pop_rank int"
    )
    if not head:
        return train.sparkSession.createDataFrame([], "user_id string, rank int, item_id string")
    # No users x head cross join: per user only the head ranks they have seen (at most
    # their history) travel, and their top k unseen ranks are the first k of
    # 1..k + |seen ranks| without them (array_except keeps the sequence's order).
    seen_ranks = seen.join(F.broadcast(ranked), "item_id", "inner").groupBy("user_id").agg(
        F.collect_list("pop_rank").alias("seen_ranks"))
    per_user = users.select("user_id").distinct().join(seen_ranks, "user_id", "left").select(
        "user_id", F.coalesce("seen_ranks", F.array().cast("array<int>")).alias("seen_ranks"))
    last = F.least(F.lit(len(head)), F.lit(k) + F.size("seen_ranks"))
    unseen = F.slice(F.array_except(F.sequence(F.lit(1), last), F.col("seen_ranks")), 1, k)
    picked = per_user.select("user_id", F.posexplode(unseen).alias("position", "pop_rank"))
    return (
        picked.join(F.broadcast(ranked), "pop_rank", "inner")
        .select("user_id", (F.col("position") + 1).cast("int").alias("rank"), "item_id")
    )


def coverage(recs: DataFrame, users: DataFrame, k: int, catalog_size: int) -> float:
    """Share of the catalog that appears in the top-k of the evaluated users."""
    if catalog_size == 0:
        return 0.0
    items = recs.where(F.col("rank") <= k).join(users, "user_id", "inner").select("item_id").distinct().count()
    return items / catalog_size
