"""evaluate: recs_user_topk + training and held-out events -> metrics (fusionrank and a
popularity baseline on the same split, and the index's self-check recall)."""

from __future__ import annotations

from pyspark import StorageLevel

from fusionrank.core.context import RunContext
from fusionrank.core.errors import StageError
from fusionrank.index.build import read_manifest
from fusionrank.metrics import measures
from fusionrank.metrics.search_stage import SEARCH_SPLIT, search_metric_rows

METRICS_DDL = "run_date date, metric string, k int, value double, baseline double, split string, baseline_name string"


def evaluate(ctx: RunContext) -> dict:
    cfg = ctx.settings
    # The same ids as recs_user_topk (pseudonymised or not), so the joins match.
    train, holdout = ctx.pseudonymised(ctx.training_events()), ctx.pseudonymised(ctx.holdout_events())
    relevant = measures.relevant_items(train, holdout).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        users = relevant.select("user_id").distinct()
        if users.limit(1).count() == 0:
            raise StageError(
                f"no user has held-out events between {ctx.holdout_start} and {ctx.run_end} and training history "
                f"before it: choose a run date inside the data or change evaluate.holdout_days"
            )
        recs = ctx.for_date("recs_user_topk").select("user_id", "rank", "item_id")
        catalog_size = ctx.for_date("catalog_clean").count()
        split = f"time_holdout_{cfg.evaluate.holdout_days}d"
        rows, summary = [], {}
        max_k = max(cfg.evaluate.ks)
        popular = measures.popularity_recs(train, users, max_k).persist(StorageLevel.MEMORY_AND_DISK)
        for k in cfg.evaluate.ks:
            ours = measures.ranking_metrics(recs, relevant, k)
            base = measures.ranking_metrics(popular, relevant, k)
            for metric in measures.METRIC_NAMES:
                rows.append((metric, k, ours[metric], base[metric]))
                summary[f"{metric}@{k}"] = (ours[metric], base[metric])
            cov = (measures.coverage(recs, users, k, catalog_size), measures.coverage(popular, users, k, catalog_size))
            rows.append(("coverage", k, cov[0], cov[1]))
            summary[f"coverage@{k}"] = cov
            summary["users_evaluated"] = (ours["users"], base["users"])
        rows.append(("users_evaluated", None, float(summary["users_evaluated"][0]), float(summary["users_evaluated"][1])))
        popular.unpersist()
    finally:
        relevant.unpersist()
    # The index's own recall against exact search (the build's self-check), beside
    # the ranking metrics so the report and the publish gate can see it.
    check = read_manifest(ctx.index_path())["self_check"]
    rows.append(("index_recall", 10, float(check["recall_at_10"]), None))
    records = [(ctx.run_date, m, k, float(v), None if b is None else float(b), split, "popularity")
               for m, k, v, b in rows]
    if cfg.evaluate.search:
        search_rows, search_summary = search_metric_rows(ctx)
        records += [(ctx.run_date, m, k, float(v), None if b is None else float(b), SEARCH_SPLIT, "dense_zero_shot")
                    for m, k, v, b in search_rows]
        summary.update(search_summary)
    frame = ctx.spark.createDataFrame(records, METRICS_DDL)
    ctx.write("metrics", frame, "evaluate")
    return {"split": split, "metrics": summary, "index_recall_at_10": float(check["recall_at_10"])}
