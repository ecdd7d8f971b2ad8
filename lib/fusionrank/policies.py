"""Ranking policies applied after retrieval, as Spark DataFrame transforms.

(The per-category cap, `rank.max_per_category`, runs on the ranking workers:
ranking._cap_per_category.)
* `cold_start`: users with events but no profile (nothing weighted in their
  history, e.g. only searches, or only items not in the index) get the most
  popular items of the recent window, in their most frequent top-level category
  when their events name one ("popular in <category>"), else overall ("popular").
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from fusionrank.spark import utc_literal


def top_category(category):
    """'Women > Dresses > Maxi' -> 'Women' (null stays null)."""
    return F.trim(F.split(category, ">").getItem(0))


def cold_start(users: DataFrame, events: DataFrame, catalog: DataFrame, k: int, since: dt.datetime) -> DataFrame:
    """(user_id, rank, item_id, score, reason, reason_item_id) for `users` (user_id) from
    popularity among `events` since `since`; score is the item's share of the window."""
    recent = events.where((F.col("event_ts") >= utc_literal(since)) & F.col("item_id").isNotNull())
    cats = catalog.select("item_id", top_category(F.col("category")).alias("category"))
    counts = recent.groupBy("item_id").agg(F.count("*").alias("n")).join(cats, "item_id")
    total = recent.count() or 1
    by_popularity = Window.orderBy(F.desc("n"), "item_id")
    overall = (counts.withColumn("rank", F.row_number().over(by_popularity)).where(F.col("rank") <= k)
               .select("rank", "item_id", (F.col("n") / total).alias("score")))
    in_category = Window.partitionBy("category").orderBy(F.desc("n"), "item_id")
    per_category = (counts.where(F.col("category").isNotNull())
                    .withColumn("rank", F.row_number().over(in_category)).where(F.col("rank") <= k)
                    .select("category", "rank", "item_id", (F.col("n") / total).alias("score")))
    # Each cold user's most frequent category among the items they touched.
    touched = (events.where(F.col("item_id").isNotNull()).join(users, "user_id").join(cats, "item_id")
               .where(F.col("category").isNotNull()).groupBy("user_id", "category").count())
    favourite = (touched.withColumn("_n", F.row_number().over(
        Window.partitionBy("user_id").orderBy(F.desc("count"), "category"))).where(F.col("_n") == 1)
        .select("user_id", "category"))
    with_category = users.join(favourite, "user_id", "left")
    by_category = (with_category.where(F.col("category").isNotNull()).join(per_category, "category")
                   .select("user_id", "rank", "item_id", "score",
                           F.concat(F.lit("popular in "), F.col("category")).alias("reason")))
    # Users without a category, and categories with fewer than k items, fall back to overall.
    have = by_category.groupBy("user_id").agg(F.count("*").alias("_have"))
    need = with_category.join(have, "user_id", "left").where(F.coalesce("_have", F.lit(0)) < k).select("user_id")
    fill = need.crossJoin(overall).select("user_id", "rank", "item_id", "score", F.lit("popular").alias("reason"))
    merged = by_category.unionByName(fill.join(by_category.select("user_id", "item_id"), ["user_id", "item_id"],
                                               "left_anti").withColumn("rank", F.col("rank") + F.lit(k)))
    order = Window.partitionBy("user_id").orderBy("rank", "item_id")
    return (merged.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)
            .withColumn("reason_item_id", F.lit(None).cast("string")))
