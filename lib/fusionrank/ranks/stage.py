"""rank: user_profiles + the index + training events + catalog_clean ->
recs_user_topk, recs_item_similar, query_topk and query_memory.

Search, seen-item removal, the per-category cap, reasons and cold-start lists run
on the executors (ranks.users), which write their Parquet files themselves (no
Spark rows); query_topk is searched on the executors too, for a bounded list of queries."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
from pyspark.sql import functions as F

from fusionrank.core.catalog import INDEX_VECTOR, RECS_ITEM_SIMILAR, RECS_USER_TOPK, TABLES
from fusionrank.core.context import RunContext
from fusionrank.index.build import load_index, read_manifest
from fusionrank.ranks import cold_start, users as ranking
from fusionrank.ranks.rerank import nightly as rerank
from fusionrank.ranks.query_topk import compute_query_topk


def rank(ctx: RunContext) -> dict:
    cfg = ctx.settings
    index_path = ctx.index_path()
    manifest = read_manifest(index_path)
    profiles_df = ctx.for_date("user_profiles")
    seen = (ctx.training_events().where(F.col("item_id").isNotNull())
            .groupBy("user_id").agg(F.collect_set("item_id").alias("seen")))
    seen = ctx.pseudonymised(seen)  # user_profiles carries the ids as they leave the system
    users = profiles_df.join(seen, "user_id", "left").select(
        "user_id", "profile_vec", "history_item_ids", "history_weights", "seen"
    )
    rerank_dir, rerank_counts, version = None, {}, manifest["model_version"]
    if cfg.rerank.enabled:  # the second stage: trained here (driver), applied in the rank pass
        ctx.describe("rank")
        rerank_dir, rerank_counts = rerank.train_nightly(ctx, load_index(index_path), ctx.spec.behaviour_dim)
        if rerank_dir is not None:
            extra = ctx.pseudonymised(rerank.user_columns(ctx.training_events(), cfg.rerank.recent))
            users = users.join(extra, "user_id", "left")
            version = rerank.model_version(version, rerank_dir)
    popular = None
    if cfg.rank.cold_start:
        # Users with events but no profile get popular lists: the lists are small (driver),
        # the users are matched to theirs in Spark and ranked beside everyone else.
        # Profiles carry user ids as they leave the system (maybe pseudonymised), the
        # events the plain ones: match on the former, compute on the latter.
        since = ctx.holdout_start - dt.timedelta(days=cfg.rank.trending_days)
        catalog = ctx.for_date("catalog_clean")
        popular = cold_start.popular_lists(ctx.training_events(), catalog, cfg.rank.k, since)
        known = ctx.training_events().select("user_id").distinct().withColumn("_plain", F.col("user_id"))
        cold_users = (ctx.pseudonymised(known).join(profiles_df.select("user_id"), "user_id", "left_anti")
                      .select(F.col("_plain").alias("user_id")))
        cold = ctx.pseudonymised(cold_start.assign_lists(cold_users, ctx.training_events(), catalog, popular))
        users = users.withColumn("popular_list", F.lit(None).cast("string")).unionByName(
            cold, allowMissingColumns=True)
    ranked = ranking.rank_batches(users, index_path, cfg.rank, cfg.rank.user_partitions,
                                  use_gpu=cfg.index.use_gpu, popular=popular, rerank_dir=rerank_dir,
                                  version=version, rerank_compiled=cfg.rerank.compiled)
    ctx.describe("rank")
    ctx.write("recs_user_topk", None, "rank", batches=ranked, schema=RECS_USER_TOPK)
    users_ranked = ctx.store.last_write["distinct"]  # counted by the writing tasks: no re-read
    if cfg.rank.write_similar:
        items = ctx.for_date("item_embeddings").select("item_id", INDEX_VECTOR).where(F.col(INDEX_VECTOR).isNotNull())
        similar = ranking.similar_batches(items, index_path, cfg.rank.similar_k, cfg.rank.user_partitions,
                                          use_gpu=cfg.index.use_gpu)
        ctx.write("recs_item_similar", None, "rank", batches=similar, schema=RECS_ITEM_SIMILAR)
    # Counts from the writers' reports and the Delta log: no re-read of the rows.
    similar_rows = (ctx.store.count_rows("recs_item_similar", where={"run_date": ctx.run_date})
                    if cfg.rank.write_similar else None)
    return {"users_ranked": int(users_ranked),
            "recs_rows": ctx.store.count_rows("recs_user_topk", where={"run_date": ctx.run_date}),
            "similar_rows": similar_rows, "index_type": manifest["type"],
            "index_recall_at_10": manifest["self_check"]["recall_at_10"], **rerank_counts,
            **write_query_topk(ctx, index_path, manifest["model_version"])}


def write_query_topk(ctx: RunContext, index_path: str, version: str) -> dict:
    """query_topk for the most frequent queries of the training window (the held-out
    days stay out, as for every other output of a backtest run)."""
    cfg = ctx.settings
    since = ctx.holdout_start - dt.timedelta(days=cfg.query.lookback_days)
    ctx.describe("rank")
    rows, memory, counts = compute_query_topk(ctx.training_events(), index_path, cfg.query, since,
                                              ctx.holdout_start)
    for table, frame in (("query_topk", rows), ("query_memory", memory)):
        if frame is None:  # no searches (or no hybrid for the memory): an empty partition, without a Spark job
            schema = TABLES[table].schema
            empty = pa.Table.from_pandas(pd.DataFrame(columns=[f.name for f in schema.fields if f.name != "run_date"]),
                                         preserve_index=False)
            ctx.write_rows(table, empty, "rank")
            continue
        columns = [f.name for f in TABLES[table].schema.fields if f.name != "run_date"]
        ctx.write(table, frame.withColumn("model_version", F.lit(version)).select(*columns), "rank")
    if rows is None:
        return counts
    return {**counts, "query_rows": ctx.store.count_rows("query_topk", where={"run_date": ctx.run_date}),
            "query_memory_rows": ctx.store.count_rows("query_memory", where={"run_date": ctx.run_date})}
