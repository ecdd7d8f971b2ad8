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
    the driver.

    One Spark job (one aggregation, one window): the overall top k are found on the
    driver among the collected per-group top k (an item among the k most popular overall
    is among the k most popular of its own group, under the same order), and the
    window's event total is the sum of the groups' totals. Groups: each top-level
    category, catalog items without one (overall list only), and items not in the
    catalog (counted in the total only)."""
    recent = events.where((F.col("event_ts") >= utc_literal(since)) & F.col("item_id").isNotNull())
    cats = catalog.select("item_id", top_category(F.col("category")).alias("category"), F.lit(True).alias("_known"))
    counts = (recent.groupBy("item_id").agg(F.count("*").alias("n")).join(cats, "item_id", "left")
              .withColumn("_known", F.coalesce(F.col("_known"), F.lit(False))))
    group = Window.partitionBy("_known", "category")
    ranked = (counts.withColumn("rank", F.row_number().over(group.orderBy(F.desc("n"), "item_id")))
              .withColumn("_group_total", F.sum("n").over(group)))
    rows = (ranked.where((F.col("rank") <= F.when(F.col("_known"), F.lit(k)).otherwise(F.lit(1))))
            .select("_known", "category", "rank", "item_id", "n", "_group_total").collect())
    total = sum(r["_group_total"] for r in rows if r["rank"] == 1)
    known = [r for r in rows if r["_known"]]
    overall_rows = sorted(known, key=lambda r: (-r["n"], r["item_id"]))[:k]
    top = [(r["item_id"], r["n"] / total, "popular") for r in overall_rows]
    ordered = sorted((r for r in known if r["category"] is not None), key=lambda r: (r["category"], r["rank"]))
    lists = {"": top}
    for r in ordered:
        lists.setdefault(r["category"], []).append((r["item_id"], r["n"] / total, f"popular in {r['category']}"))
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
