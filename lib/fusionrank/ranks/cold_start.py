"""Ranking policies beside retrieval.

* diversity: the per-category cap, `rank.max_per_category`, runs on the ranking
  workers (ranking._cap_per_category) over the index's item attributes.
* cold start: users with events but no profile (nothing weighted in their
  history, e.g. only searches, or only items not in the index) get the most
  popular items of the recent window, in their most frequent top-level category
  when their events name one ("popular in <category>"), else overall ("popular").
  `popular_lists` computes the lists (small, on the driver), `assign_lists` each
  cold user's list, and the ranking workers write the rows.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from fusionrank.core.spark import utc_literal


def top_category(category):
    """'Women > Dresses > Maxi' -> 'Women' (null stays null)."""
    return F.trim(F.split(category, ">").getItem(0))


def popular_lists(events: DataFrame, catalog: DataFrame, k: int, since: dt.datetime) -> dict[str, list[tuple]]:
    """{top-level category: [(item_id, score, reason)] * <= k, "": the overall list}: each
    category's most popular items of the window, filled up with the overall ones; score
    is the item's share of the window's events. Only (categories + 1) x k rows reach
    the driver."""
    recent = events.where((F.col("event_ts") >= utc_literal(since)) & F.col("item_id").isNotNull())
    cats = catalog.select("item_id", top_category(F.col("category")).alias("category"))
    counts = (recent.groupBy("item_id").agg(F.count("*").alias("n"))
              .crossJoin(recent.agg(F.count("*").alias("_total")))  # one row: broadcast
              .join(cats, "item_id"))
    overall = (counts.orderBy(F.desc("n"), "item_id").limit(k)  # a top-k, not a one-partition window
               .withColumn("rank", F.lit(0)).withColumn("category", F.lit(None).cast("string")))
    per_category = (counts.where(F.col("category").isNotNull())
                    .withColumn("rank", F.row_number().over(Window.partitionBy("category").orderBy(F.desc("n"), "item_id")))
                    .where(F.col("rank") <= k))
    columns = ["category", "rank", "item_id", (F.col("n") / F.col("_total")).alias("score")]
    rows = overall.select(*columns).unionByName(per_category.select(*columns)).collect()
    overall_rows = sorted((r for r in rows if r["category"] is None), key=lambda r: (-r["score"], r["item_id"]))
    top = [(r["item_id"], r["score"], "popular") for r in overall_rows]
    ordered = sorted((r for r in rows if r["category"] is not None), key=lambda r: (r["category"], r["rank"]))
    lists = {"": top}
    for r in ordered:
        lists.setdefault(r["category"], []).append((r["item_id"], r["score"], f"popular in {r['category']}"))
    for category, items in lists.items():
        if category:
            have = {item for item, _, _ in items}
            lists[category] = (items + [entry for entry in top if entry[0] not in have])[:k]
    return lists


def assign_lists(users: DataFrame, events: DataFrame, catalog: DataFrame, lists: dict) -> DataFrame:
    """(user_id, popular_list) for `users` (user_id): the key in `lists` of each user's
    most frequent top-level category among the items they touched (ties by name), or
    "" (the overall list) when they touched none or that category has no list. The
    ranking workers expand the keys into rows (ranking.popular_rows)."""
    cats = catalog.select("item_id", top_category(F.col("category")).alias("category"))
    touched = (events.where(F.col("item_id").isNotNull()).join(users, "user_id").join(cats, "item_id")
               .where(F.col("category").isNotNull()).groupBy("user_id", "category").count())
    favourite = (touched.withColumn("_n", F.row_number().over(
        Window.partitionBy("user_id").orderBy(F.desc("count"), "category"))).where(F.col("_n") == 1)
        .select("user_id", "category"))
    known = sorted(c for c in lists if c)
    return users.join(favourite, "user_id", "left").select(
        "user_id", F.when(F.col("category").isin(known), F.col("category")).otherwise(F.lit("")).alias("popular_list"))
