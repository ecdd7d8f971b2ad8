"""The stage registry: what each nightly stage reads, does and writes.

Each stage is `fn(ctx) -> dict of counts`, keyed on the run date: rerunning a date
replaces that date's rows and duplicates nothing. `run_stage` and `run_all` are
the Python entry points; the CLI and the spark-submit jobs call them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fusionrank import behaviour as behaviour_model
from fusionrank import encoding, evaluation, index, policies, privacy, profiles, queries, ranking
from fusionrank.config import Settings
from fusionrank.data import cleaning, inputs, volume
from fusionrank.data.schemas import (
    CATALOG_FIELDS,
    CATALOG_REQUIRED,
    EVENT_FIELDS,
    EVENT_REQUIRED,
    RECS_ITEM_SIMILAR,
    RECS_USER_TOPK,
)
from fusionrank.logs import log_context
from fusionrank.models import model_version, text_model_path
from fusionrank.spark import get_session, utc_literal
from fusionrank.storage import TableStore

log = logging.getLogger("fusionrank.pipeline")


# The item_embeddings column the ANN index holds and user profiles are built in.
INDEX_VECTOR = "rec_vec"


class StageError(RuntimeError):
    """A stage cannot run (missing upstream output, bad input, failed check)."""


@dataclass
class RunContext:
    settings: Settings
    spark: SparkSession
    store: TableStore
    run_date: dt.date
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def run_end(self) -> dt.datetime:
        """First instant after the run date (UTC): nothing later belongs to this run."""
        day = self.run_date + dt.timedelta(days=1)
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)

    @property
    def holdout_start(self) -> dt.datetime:
        """Events from here to `run_end` are held out for evaluation."""
        return self.run_end - dt.timedelta(days=self.settings.evaluate.holdout_days)

    def commit_info(self, stage: str) -> dict[str, str]:
        return {"fusionrank.stage": stage, "fusionrank.run_date": str(self.run_date), "fusionrank.run_id": self.run_id}

    def describe(self, stage: str) -> None:
        # Names the work in the Spark UI instead of "mapInPandas at ...".
        self.spark.sparkContext.setJobGroup(f"fusionrank:{stage}", f"fusionrank:{stage} {self.run_date}", True)

    # Shared reads, so every stage agrees on what "training" means.
    def events(self) -> DataFrame:
        return self.store.read("events_clean")

    def training_events(self) -> DataFrame:
        return self.events().where(F.col("event_ts") < utc_literal(self.holdout_start))

    def holdout_events(self) -> DataFrame:
        events = self.events()
        return events.where(
            (F.col("event_ts") >= utc_literal(self.holdout_start)) & (F.col("event_ts") < utc_literal(self.run_end))
        )

    def for_date(self, table: str) -> DataFrame:
        if not self.store.exists(table):
            raise StageError(f"table {table} does not exist yet: run the stage that writes it for {self.run_date} first")
        if str(self.run_date) not in self.store.partition_values(table, "run_date"):
            raise StageError(f"table {table} has no rows for run_date {self.run_date}: run its stage for that date first")
        return self.store.read(table, where={"run_date": self.run_date})

    def index_path(self) -> str:
        return str(index.index_dir(self.settings.storage.index_root, self.run_date))

    def pseudonymised(self, df: DataFrame) -> DataFrame:
        """`df` with user ids as they leave the system (`privacy.pseudonymise_user_ids`)."""
        return privacy.pseudonymise_users(df, privacy.user_salt(self.settings))


def _write_quarantine(ctx: RunContext, rejected: DataFrame, stage: str) -> None:
    rows = cleaning.quarantine_rows(rejected, stage, ctx.run_date)
    ctx.store.write(
        rows, "quarantine", partition_by=["run_date", "stage"],
        replace={"run_date": ctx.run_date, "stage": stage}, commit_info=ctx.commit_info(stage),
    )


def _publish_cleaned(
    ctx: RunContext,
    stage: str,
    source,
    classified: DataFrame,
    output_columns: list[str],
    write_clean: Callable[[DataFrame], None],
    drift: dict | None = None,
) -> dict:
    """Write the clean rows and the quarantine of a cleaning stage; return the counts.

    Every raw row is either clean or quarantined with a reason, so the counts add up.
    When the quarantined share passes `cleaning.max_quarantine_share` the stage fails
    after writing the quarantine (for inspection) but not the clean table, which keeps
    its last version: a broken feed stops the night instead of publishing emptiness.
    """
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = classified.groupBy(cleaning.REASON).count().collect()
        raw_rows = sum(int(r["count"]) for r in by_reason)
        if raw_rows == 0:
            raise StageError(f"{stage}: input {source.path} has no rows")
        clean_rows = sum(int(r["count"]) for r in by_reason if r[cleaning.REASON] is None)
        # Reasons that quote the bad value are grouped by their fixed prefix.
        reasons: dict[str, int] = {}
        for row in by_reason:
            if row[cleaning.REASON] is not None:
                key = row[cleaning.REASON].split(":")[0]
                reasons[key] = reasons.get(key, 0) + int(row["count"])
        reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        clean, rejected = cleaning.split_clean(classified, output_columns)
        # Feed volume against the previous successful night, before anything is written.
        drift = {**(drift or {}), **volume.distinct_counts(clean, output_columns)}
        try:
            drift.update(volume.guard(stage, {"raw_rows": raw_rows, "clean_rows": clean_rows, **drift},
                                      run_log_dir(ctx.settings, ctx.run_date).parent, ctx.run_date, ctx.settings.cleaning))
        except volume.VolumeError as exc:
            raise StageError(str(exc)) from None
        share, limit = (raw_rows - clean_rows) / raw_rows, ctx.settings.cleaning.max_quarantine_share
        if share > limit:
            _write_quarantine(ctx, rejected, stage)
            top = ", ".join(f"{reason} ({n})" for reason, n in list(reasons.items())[:3])
            raise StageError(
                f"{stage}: {raw_rows - clean_rows} of {raw_rows} rows of {source.path} were quarantined "
                f"({share:.1%}), above cleaning.max_quarantine_share ({limit:.1%}); top reasons: {top}. "
                f"The quarantine for {ctx.run_date} was written for inspection; the clean table was not changed"
            )
        write_clean(clean)
        _write_quarantine(ctx, rejected, stage)
    finally:
        classified.unpersist()
    return {"raw_rows": raw_rows, "clean_rows": clean_rows, "quarantined_rows": raw_rows - clean_rows,
            "quarantine_reasons": reasons, **(drift or {})}


# -- stages ------------------------------------------------------------------------
def clean_catalog(ctx: RunContext) -> dict:
    cfg = ctx.settings
    drift: dict = {}
    raw = inputs.read_raw(ctx.spark, cfg.inputs.catalog, CATALOG_FIELDS, CATALOG_REQUIRED, "catalog",
                          delta_reader=lambda p: _read_delta_input(ctx, p), drift=drift)

    def write(clean: DataFrame) -> None:
        ctx.store.write(
            clean.withColumn("run_date", F.lit(ctx.run_date)), "catalog_clean", partition_by=["run_date"],
            replace={"run_date": ctx.run_date}, commit_info=ctx.commit_info("clean_catalog"),
        )

    classified = cleaning.classify_catalog(raw, cfg.cleaning, ctx.run_end)
    return _publish_cleaned(ctx, "clean_catalog", cfg.inputs.catalog, classified, cleaning.CATALOG_OUTPUT, write,
                            drift)


def clean_events(ctx: RunContext) -> dict:
    cfg = ctx.settings
    drift: dict = {}
    raw = inputs.read_raw(ctx.spark, cfg.inputs.events, EVENT_FIELDS, EVENT_REQUIRED, "events",
                          delta_reader=lambda p: _read_delta_input(ctx, p), drift=drift)
    items = ctx.for_date("catalog_clean").select("item_id")

    def write(clean: DataFrame) -> None:
        # The input is the full history up to the run date, so the table is replaced
        # whole; one file per event date keeps the partitions compact.
        ctx.store.write(
            clean.repartition("event_date"), "events_clean", partition_by=["event_date"],
            commit_info=ctx.commit_info("clean_events"),
        )

    classified = cleaning.classify_events(raw, items, cfg.cleaning, ctx.run_end)
    return _publish_cleaned(ctx, "clean_events", cfg.inputs.events, classified, cleaning.EVENTS_OUTPUT, write,
                            drift)


def encode_items(ctx: RunContext) -> dict:
    cfg = ctx.settings
    version = model_version(cfg)
    catalog = ctx.for_date("catalog_clean")
    previous_date = ctx.store.latest_partition("item_embeddings", "run_date", at_most=str(ctx.run_date))
    previous = ctx.store.read("item_embeddings", where={"run_date": previous_date}) if previous_date else None
    carried, todo = encoding.plan_encoding(catalog, previous, version)
    dims = encoding.fusion_dims(cfg)
    projection = encoding.projection_spec(cfg, version)
    # The encoder output is cached: it is counted (image outcomes) and then written,
    # and the models must run once per item.
    encoded = encoding.encode(todo, cfg, cfg.encode.partitions).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        total = ctx.store.count_rows("catalog_clean", where={"run_date": ctx.run_date})
        if total is None:
            total = catalog.count()
        statuses = {row["image_status"]: row["count"] for row in encoded.groupBy("image_status").count().collect()}
        to_encode = sum(statuses.values())
        images = {f"images_{s}": int(statuses.get(s, 0)) for s in encoding.IMAGE_STATUSES}
        if images["images_missing"] or images["images_corrupt"]:
            log.warning("encode_items: %d item image(s) missing and %d corrupt; those items have no image_vec",
                        images["images_missing"], images["images_corrupt"])
        fresh = encoded.drop("image_status").withColumn("encoded_at", F.current_timestamp())
        both = carried.unionByName(fresh)
        behaviour = history = None
        learn = projection[0] == "learned" and not Path(projection[3]).exists()
        if cfg.behaviour.enabled or learn:
            # Confidence from event types (no time decay): what was done, not when.
            history = profiles.weighted_history(ctx.training_events(), cfg.profiles, ctx.holdout_start, decay=False)
        if cfg.behaviour.enabled:
            positive = history.where(F.col("weight") > 0)
            behaviour = (behaviour_model.lae_item_vectors(positive, cfg.behaviour) if cfg.behaviour.method == "lae"
                         else encoding.behaviour_vectors(positive, cfg.behaviour))
        learned = {}
        if learn:
            # Trained once per model_version and reused, so fused vectors stay comparable.
            learned = encoding.learn_projection(both, behaviour, history, dims, cfg.fusion, projection)
        fused = encoding.fused_items(both, behaviour, dims, cfg.fusion, projection)
        fused = behaviour_model.rec_vectors(fused, behaviour_model.behaviour_dim(cfg), cfg.rank.content_weight)
        ctx.describe("encode_items")
        ctx.store.write(encoding.with_metadata(fused, version, ctx.run_date), "item_embeddings",
                        partition_by=["run_date"], replace={"run_date": ctx.run_date},
                        commit_info={**ctx.commit_info("encode_items"), "fusionrank.model_version": version})
    finally:
        encoded.unpersist()
    with_behaviour = 0
    if cfg.behaviour.enabled:
        written = ctx.store.read("item_embeddings", where={"run_date": ctx.run_date})
        with_behaviour = written.where(F.col("behaviour_vec").isNotNull()).count()
    return {"items": total, "encoded": to_encode, "carried_over": total - to_encode,
            "with_behaviour": with_behaviour, **images, **learned, "fused_dim": dims.total if projection[0] == "identity"
            else projection[2], "previous_run_date": previous_date, "model_version": version}


def build_index(ctx: RunContext) -> dict:
    """Train on a bounded sample (driver), add vectors per partition into shards of the
    trained index (executors), merge and self-check (driver); see index.py."""
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
    ctx.describe("build_index")
    # What ranking workers need to explain and diversify, shipped with the index.
    attributes = (ctx.for_date("catalog_clean")
                  .select("item_id", "title", policies.top_category(F.col("category")).alias("category"))
                  .join(vectors.select("item_id"), "item_id", "left_semi")) if ctx.store.exists("catalog_clean") else None
    built = index.build_from_spark(vectors.select("item_id", F.col(INDEX_VECTOR).alias("fused_vec")), dim, count, cfg.index,
                                   index.index_dir(cfg.storage.index_root, ctx.run_date), stats["mv"],
                                   str(ctx.run_date), attributes=attributes)
    m = built.manifest
    return {"path": str(built.path), **{k: m[k] for k in ("count", "dim", "type", "shards")},
            **{k: m[k] for k in ("nlist", "nprobe", "pq_m", "ef_search") if k in m},
            "self_check_recall_at_10": m["self_check"]["recall_at_10"],
            f"self_check_recall_at_{m['self_check']['k']}": m["self_check"]["recall_at_k"],
            "min_recall": m["self_check"]["min_recall"]}


def build_profiles(ctx: RunContext) -> dict:
    cfg = ctx.settings
    history = profiles.weighted_history(ctx.training_events(), cfg.profiles, ctx.holdout_start)
    vectors = ctx.for_date("item_embeddings").select("item_id", F.col(INDEX_VECTOR).alias("vec"))
    out = ctx.pseudonymised(profiles.build_user_profiles(history, vectors, cfg.profiles, ctx.run_date,
                                                         behaviour_model.behaviour_dim(cfg)))
    ctx.describe("build_profiles")
    ctx.store.write(out, "user_profiles", partition_by=["run_date"], replace={"run_date": ctx.run_date},
                    commit_info=ctx.commit_info("build_profiles"))
    users = ctx.store.count_rows("user_profiles", where={"run_date": ctx.run_date})
    return {"users": users, "training_events_before": ctx.holdout_start.isoformat()}


def rank(ctx: RunContext) -> dict:
    cfg = ctx.settings
    index_path = ctx.index_path()
    manifest = index.read_manifest(index_path)
    version = manifest["model_version"]
    profiles_df = ctx.for_date("user_profiles")
    seen = (ctx.training_events().where(F.col("item_id").isNotNull())
            .groupBy("user_id").agg(F.collect_set("item_id").alias("seen")))
    seen = ctx.pseudonymised(seen)  # user_profiles carries the ids as they leave the system
    users = profiles_df.join(seen, "user_id", "left").select(
        "user_id", "profile_vec", "history_item_ids", "history_weights", "seen"
    )
    popular = None
    if cfg.rank.cold_start:
        # Users with events but no profile get popular lists: the lists are small (driver),
        # the users are matched to theirs in Spark and ranked beside everyone else.
        # Profiles carry user ids as they leave the system (maybe pseudonymised), the
        # events the plain ones: match on the former, compute on the latter.
        since = ctx.holdout_start - dt.timedelta(days=cfg.rank.trending_days)
        catalog = ctx.for_date("catalog_clean")
        popular = policies.popular_lists(ctx.training_events(), catalog, cfg.rank.k, since)
        known = ctx.training_events().select("user_id").distinct().withColumn("_plain", F.col("user_id"))
        cold_users = (ctx.pseudonymised(known).join(profiles_df.select("user_id"), "user_id", "left_anti")
                      .select(F.col("_plain").alias("user_id")))
        cold = ctx.pseudonymised(policies.assign_lists(cold_users, ctx.training_events(), catalog, popular))
        users = users.withColumn("popular_list", F.lit(None).cast("string")).unionByName(
            cold, allowMissingColumns=True)
    # Search, seen-item removal, the per-category cap, reasons and cold-start lists run
    # on the executors, which write their Parquet files themselves (no Spark rows).
    ranked = ranking.rank_batches(users, index_path, cfg.rank, cfg.rank.user_partitions,
                                  use_gpu=cfg.index.use_gpu, popular=popular)
    ctx.describe("rank")
    ctx.store.write(None, "recs_user_topk", partition_by=["run_date"], replace={"run_date": ctx.run_date},
                    commit_info=ctx.commit_info("rank"), batches=ranked, schema=RECS_USER_TOPK)
    users_ranked = ctx.store.last_write["distinct"]  # counted by the writing tasks: no re-read
    if cfg.rank.write_similar:
        items = ctx.for_date("item_embeddings").select("item_id", F.col(INDEX_VECTOR).alias("fused_vec")).where(F.col("fused_vec").isNotNull())
        similar = ranking.similar_batches(items, index_path, cfg.rank.similar_k, cfg.rank.user_partitions,
                                          use_gpu=cfg.index.use_gpu)
        ctx.store.write(None, "recs_item_similar", partition_by=["run_date"], replace={"run_date": ctx.run_date},
                        commit_info=ctx.commit_info("rank"), batches=similar, schema=RECS_ITEM_SIMILAR)
    # Counts from the writers' reports and the Delta log: no re-read of the rows.
    similar_rows = (ctx.store.count_rows("recs_item_similar", where={"run_date": ctx.run_date})
                    if cfg.rank.write_similar else None)
    return {"users_ranked": int(users_ranked),
            "recs_rows": ctx.store.count_rows("recs_user_topk", where={"run_date": ctx.run_date}),
            "similar_rows": similar_rows, "index_type": manifest["type"],
            "index_recall_at_10": manifest["self_check"]["recall_at_10"],
            **_query_topk(ctx, index_path, version)}


def _query_topk(ctx: RunContext, index_path: str, version: str) -> dict:
    """query_topk for the most frequent queries of the training window (the held-out
    days stay out, as for every other output of a backtest run)."""
    from fusionrank.data.schemas import QUERY_TOPK

    cfg = ctx.settings
    since = ctx.holdout_start - dt.timedelta(days=cfg.query.lookback_days)
    ctx.describe("rank")
    rows, counts = queries.compute_query_topk(ctx.training_events(), index_path, cfg, since, ctx.holdout_start)
    # A few hundred rows at most, already on the driver: written without a Spark job.
    rows["model_version"] = version
    ctx.store.write_rows(pa.Table.from_pandas(rows, preserve_index=False), "query_topk", QUERY_TOPK,
                         partition_by=["run_date"], replace={"run_date": ctx.run_date},
                         commit_info=ctx.commit_info("rank"))
    return counts


def evaluate(ctx: RunContext) -> dict:
    cfg = ctx.settings
    # The same ids as recs_user_topk (pseudonymised or not), so the joins match.
    train, holdout = ctx.pseudonymised(ctx.training_events()), ctx.pseudonymised(ctx.holdout_events())
    relevant = evaluation.relevant_items(train, holdout).persist(StorageLevel.MEMORY_AND_DISK)
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
        popular = evaluation.popularity_recs(train, users, max_k).persist(StorageLevel.MEMORY_AND_DISK)
        for k in cfg.evaluate.ks:
            ours = evaluation.ranking_metrics(recs, relevant, k)
            base = evaluation.ranking_metrics(popular, relevant, k)
            for metric in evaluation.METRIC_NAMES:
                rows.append((metric, k, ours[metric], base[metric]))
                summary[f"{metric}@{k}"] = (ours[metric], base[metric])
            cov = (evaluation.coverage(recs, users, k, catalog_size), evaluation.coverage(popular, users, k, catalog_size))
            rows.append(("coverage", k, cov[0], cov[1]))
            summary[f"coverage@{k}"] = cov
            summary["users_evaluated"] = (ours["users"], base["users"])
        rows.append(("users_evaluated", None, float(summary["users_evaluated"][0]), float(summary["users_evaluated"][1])))
        popular.unpersist()
    finally:
        relevant.unpersist()
    # The index's own recall against exact search (the build's self-check), beside
    # the ranking metrics so the report and the publish gate can see it.
    check = index.read_manifest(ctx.index_path())["self_check"]
    rows.append(("index_recall", 10, float(check["recall_at_10"]), None))
    frame = ctx.spark.createDataFrame(
        [(ctx.run_date, m, k, float(v), None if b is None else float(b), split, "popularity") for m, k, v, b in rows],
        "run_date date, metric string, k int, value double, baseline double, split string, baseline_name string",
    )
    ctx.store.write(frame, "metrics", partition_by=["run_date"], replace={"run_date": ctx.run_date},
                    commit_info=ctx.commit_info("evaluate"))
    return {"split": split, "metrics": summary, "index_recall_at_10": float(check["recall_at_10"])}


def _read_delta_input(ctx: RunContext, path: str) -> DataFrame:
    from fusionrank.storage import read_delta_path

    return read_delta_path(ctx.spark, path, ctx.store.engine)


def publish(ctx: RunContext) -> dict:
    from fusionrank.publish import publish_stage

    return publish_stage(ctx)


# -- registry ------------------------------------------------------------------------
STAGES: dict[str, Callable[[RunContext], dict]] = {
    "clean_catalog": clean_catalog,
    "clean_events": clean_events,
    "encode_items": encode_items,
    "build_index": build_index,
    "build_profiles": build_profiles,
    "rank": rank,
    "evaluate": evaluate,
    # The night becomes the consumers' current snapshot only if its metrics pass the gate.
    "publish": publish,
}
ORDER = list(STAGES)


@dataclass
class StageResult:
    stage: str
    run_date: dt.date
    seconds: float
    counts: dict


def make_context(settings: Settings, run_date: dt.date, spark: SparkSession | None = None) -> RunContext:
    spark = spark or get_session(settings)
    return RunContext(settings, spark, TableStore(spark, settings), run_date)


def run_stage(name: str, settings: Settings, run_date: dt.date, spark: SparkSession | None = None,
              ctx: RunContext | None = None) -> StageResult:
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    ctx = ctx or make_context(settings, run_date, spark)
    with log_context(run_date=run_date, stage=name, run_id=ctx.run_id):
        ctx.describe(name)
        log.info("stage %s starting (config digest %s)", name, settings.digest())
        started = time.perf_counter()
        try:
            counts = STAGES[name](ctx)
        except Exception as exc:
            log.error("stage %s failed after %.1fs: %s", name, time.perf_counter() - started, exc)
            raise
        elapsed = time.perf_counter() - started
        log.info("stage %s done in %.1fs: %s", name, elapsed, counts)
    result = StageResult(name, run_date, elapsed, counts)
    record_stage(settings, result, ctx.run_id)
    return result


def run_log_dir(settings: Settings, run_date: dt.date | str) -> Path:
    """Where each stage's result for a date is kept (read by reports)."""
    return settings.storage.root / "_runs" / f"run_date={run_date}"


def record_stage(settings: Settings, result: StageResult, run_id: str) -> None:
    """Keep the stage's counts as JSON; a rerun of the date replaces them."""
    folder = run_log_dir(settings, result.run_date)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "stage": result.stage, "run_date": str(result.run_date), "run_id": run_id,
        "seconds": round(result.seconds, 3), "counts": result.counts, "config_digest": settings.digest(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = folder / f".{result.stage}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, folder / f"{result.stage}.json")


def read_stage_records(settings: Settings, run_date: dt.date | str) -> dict[str, dict]:
    folder = run_log_dir(settings, run_date)
    if not folder.exists():
        return {}
    records = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        records[record["stage"]] = record
    return records


def preflight(settings: Settings, stages: list[str]) -> None:
    """Fail before the first stage on what a later one would fail on: the text model
    folder and the pseudonymisation salt."""
    if "encode_items" in stages:
        text_model_path(settings)
    if {"build_profiles", "rank", "evaluate"} & set(stages):
        privacy.user_salt(settings)


def run_all(settings: Settings, run_date: dt.date, spark: SparkSession | None = None,
            stages: list[str] | None = None, on_stage: Callable[[StageResult], None] | None = None,
            stage_scope: Callable[[str], ContextManager] | None = None) -> list[StageResult]:
    """Run `stages` (default: all, in order) for one date; `stage_scope(name)` wraps
    each stage (progress display), `on_stage(result)` sees each result."""
    preflight(settings, stages or ORDER)
    ctx = make_context(settings, run_date, spark)
    log.info("run %s for %s: config digest %s from %s", ctx.run_id, run_date, settings.digest(),
             " + ".join(settings.source_files))
    results = []
    for name in stages or ORDER:
        with (stage_scope(name) if stage_scope else nullcontext()):
            result = run_stage(name, settings, run_date, ctx=ctx)
        results.append(result)
        if on_stage:
            on_stage(result)
    return results
