"""encode_items: catalog_clean (+ training events, previous item_embeddings) ->
item_embeddings. Text and image vectors for new or changed items only, behaviour
vectors from the logs every night, fused and put into the ranking space."""

from __future__ import annotations

import logging

from pyspark import StorageLevel
from pyspark.sql import functions as F

from fusionrank.core.context import RunContext
from fusionrank.core.spark import gpu_task_profile
from fusionrank.profiles.build import weighted_history
from fusionrank.storage import fs
from fusionrank.vectors import behaviour as behaviour_model
from fusionrank.vectors import encode, fusion, space

log = logging.getLogger("fusionrank.vectors")


def encode_items(ctx: RunContext) -> dict:
    cfg, spec = ctx.settings, ctx.spec
    catalog = ctx.for_date("catalog_clean")
    previous_date = ctx.store.latest_partition("item_embeddings", "run_date", at_most=str(ctx.run_date))
    previous = ctx.store.read("item_embeddings", where={"run_date": previous_date}) if previous_date else None
    carried, todo = encode.plan_encoding(catalog, previous, spec.version)
    # The encoder output is cached: it is counted (image outcomes) and then written,
    # and the models must run once per item.
    profile = gpu_task_profile(ctx.spark, cfg, "encode_items")  # spark.stages.encode_items.gpu_tasks
    encoded = encode.encode(todo, spec, cfg.encode.partitions, profile).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        total = ctx.store.count_rows("catalog_clean", where={"run_date": ctx.run_date})
        if total is None:
            total = catalog.count()
        statuses = {row["image_status"]: row["count"] for row in encoded.groupBy("image_status").count().collect()}
        to_encode = sum(statuses.values())
        images = {f"images_{s}": int(statuses.get(s, 0)) for s in encode.IMAGE_STATUSES}
        if images["images_missing"] or images["images_corrupt"]:
            log.warning("encode_items: %d item image(s) missing and %d corrupt; those items have no image_vec",
                        images["images_missing"], images["images_corrupt"])
        fresh = encoded.drop("image_status").withColumn("encoded_at", F.current_timestamp())
        both = carried.unionByName(fresh)
        behaviour = history = None
        learn = spec.learns_projection and not fs.exists(spec.projection[3])
        if spec.behaviour_dim or learn:
            # Confidence from event types (no time decay): what was done, not when.
            history = weighted_history(ctx.training_events(), cfg.profiles, ctx.holdout_start, decay=False)
        if spec.behaviour_dim:
            positive = history.where(F.col("weight") > 0)
            behaviour = (behaviour_model.lae_item_vectors(positive, cfg.behaviour) if cfg.behaviour.method == "lae"
                         else behaviour_model.behaviour_vectors(positive, cfg.behaviour))
        learned = {}
        if learn:
            # Trained once per model_version and reused, so fused vectors stay comparable.
            learned = fusion.learn_projection(both, behaviour, history, spec.dims, cfg.fusion, spec.projection)
        fused = fusion.fused_items(both, behaviour, spec.dims, spec.weights, spec.projection)
        fused = space.rec_vectors_for(fused, spec)
        ctx.describe("encode_items")
        ctx.write("item_embeddings", encode.with_metadata(fused, spec.version, ctx.run_date), "encode_items",
                  commit_extra={"fusionrank.model_version": spec.version})
    finally:
        encoded.unpersist()
    with_behaviour = 0
    if spec.behaviour_dim:
        written = ctx.store.read("item_embeddings", where={"run_date": ctx.run_date})
        with_behaviour = written.where(F.col("behaviour_vec").isNotNull()).count()
    return {"items": total, "encoded": to_encode, "carried_over": total - to_encode,
            "with_behaviour": with_behaviour, **images, **learned, "fused_dim": spec.fused_dim,
            "previous_run_date": previous_date, "model_version": spec.version}
