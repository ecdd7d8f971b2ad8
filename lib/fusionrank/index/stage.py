"""build_index: item_embeddings -> the run date's FAISS index artifact (index, ids,
attributes, manifest carrying the ModelSpec). Train on a bounded sample (driver),
add vectors per partition into shards of the trained index (executors), merge and
self-check (driver); see index.build."""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from fusionrank.core.catalog import INDEX_VECTOR
from fusionrank.core.context import RunContext
from fusionrank.core.errors import StageError
from fusionrank.index import build
from fusionrank.index.lexical import LexicalIndex, lexical_dir
from fusionrank.ranks.cold_start import top_category

log = logging.getLogger("fusionrank.index")


def build_index(ctx: RunContext) -> dict:
    cfg = ctx.settings
    vectors = ctx.for_date("item_embeddings").select("item_id", INDEX_VECTOR, "model_version")
    vectors = vectors.where(F.col(INDEX_VECTOR).isNotNull())
    stats = vectors.agg(F.count("*").alias("n"), F.first(F.size(INDEX_VECTOR)).alias("dim"),
                        F.countDistinct("model_version").alias("versions"), F.first("model_version").alias("mv")).first()
    count, dim = int(stats["n"]), int(stats["dim"] or 0)
    if count == 0:
        raise StageError(f"item_embeddings has no vectors for {ctx.run_date}")
    if stats["versions"] != 1:
        raise StageError(f"item_embeddings for {ctx.run_date} mixes {stats['versions']} model versions")
    # The manifest describes the space only when this run's spec made the vectors.
    model_spec = ctx.spec.to_dict() if ctx.spec.version == stats["mv"] else None
    if model_spec is None:
        log.warning("build_index: item_embeddings of %s have model_version %s, not this run's %s; the index "
                    "manifest records no ModelSpec (query_topk and search cannot encode queries for it)",
                    ctx.run_date, stats["mv"], ctx.spec.version)
    ctx.describe("build_index")
    # What ranking workers need to explain and diversify, shipped with the index.
    attributes = (ctx.for_date("catalog_clean")
                  .select("item_id", "title", top_category(F.col("category")).alias("category"))
                  .join(vectors.select("item_id"), "item_id", "left_semi")) if ctx.store.exists("catalog_clean") else None
    built = build.build_from_spark(vectors.select("item_id", INDEX_VECTOR), dim, count, cfg.index,
                                   ctx.layout.index(ctx.run_date), stats["mv"], str(ctx.run_date),
                                   attributes=attributes, model_spec=model_spec,
                                   rank_gpu=cfg.spark.uses_gpu("rank"))
    lexical = {}
    if cfg.query.hybrid and ctx.store.exists("catalog_clean"):
        # The BM25 index beside FAISS (index.lexical); the catalog's text comes to the driver.
        docs = (ctx.for_date("catalog_clean").select("item_id", "title", "brand", "category", "description")
                .join(vectors.select("item_id"), "item_id", "left_semi").orderBy("item_id").toPandas())
        LexicalIndex.from_frame(docs).save(lexical_dir(built.path))
        lexical = {"lexical_items": int(len(docs))}
    m = built.manifest
    return {"path": str(built.path), **lexical, **{k: m[k] for k in ("count", "dim", "type", "shards")},
            **{k: m[k] for k in ("nlist", "nprobe", "pq_m", "ef_search") if k in m},
            "self_check_recall_at_10": m["self_check"]["recall_at_10"],
            f"self_check_recall_at_{m['self_check']['k']}": m["self_check"]["recall_at_k"],
            "min_recall": m["self_check"]["min_recall"]}
