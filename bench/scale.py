"""Scale of build_index and rank: synthetic factors for I items x U users, through the
pipeline's own stages (pipeline.run_stage: real Spark local mode, real FAISS, Delta).

The inputs are made by Spark on the executors (spark.range + mapInArrow), so the
driver holds none of them: random low-rank vectors (`--factors` Gaussian factors
times a fixed basis, plus noise, unit length) in the ranking space's dimension
(default: conf/local.yaml's ModelSpec.ranking_dim), around `--clusters` centres
(real embeddings are clustered; isotropic random vectors have no near neighbours
and make any IVF scan most lists), no encoder. Written as the
tables the stages read: catalog_clean (titles, 20 top-level categories),
item_embeddings (rec_vec), user_profiles (profile_vec, `--history` items with
weights) and events_clean (those items as views, so the seen-item filter works).

Measured per stage (inputs, build_index, rank): wall seconds, peak RSS of the driver
(Python process, and the JVM: in local mode it is the driver and the executor at
once, bounded by spark.driver.memory), of the largest Python worker (where the
index lives during rank) and of the whole process tree, sampled every 0.2 s by a
thread (psutil); the index's self-check recall. Then each stage's cost is
extrapolated to `--target-items` x `--target-users` from the measured per-item and
per-user costs (core-seconds: wall x cores), with the model used stated beside it.

    python bench/scale.py --items 100000 --users 100000
    python bench/scale.py --items 1000000 --users 1000000 --driver-memory 4g

Timings share the machine with whatever else runs: compare rows of one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
RUN_DATE = dt.date(2026, 1, 15)
CATEGORIES = 20


class PeakRSS:
    """Peak resident memory of this process, its JVM child and the Python workers under
    it, sampled in a thread; `reset()` starts a new window (one per stage)."""

    def __init__(self, every: float = 0.2):
        self.me = psutil.Process(os.getpid())
        self.every = every
        self._stop = threading.Event()
        self.reset()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.peak = {"driver_python": 0, "jvm": 0, "python_worker_max": 0, "python_workers_sum": 0, "tree": 0}
        self.start = self.sample()  # where the stage began (the plan counts what a stage adds)

    def sample(self) -> dict[str, int]:
        now = {"driver_python": self.me.memory_info().rss, "jvm": 0, "python_worker_max": 0, "python_workers_sum": 0}
        for child in self.me.children(recursive=True):
            try:
                name, rss = child.name(), child.memory_info().rss
            except psutil.Error:
                continue
            if "java" in name:
                now["jvm"] += rss
            elif "python" in name:
                now["python_worker_max"] = max(now["python_worker_max"], rss)
                now["python_workers_sum"] += rss
        now["tree"] = now["driver_python"] + now["jvm"] + now["python_workers_sum"]
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self.sample().items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _basis(dim: int, factors: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(factors, dim)).astype(np.float32) / math.sqrt(factors)


def _centres(factors: int, clusters: int) -> np.ndarray:
    return np.random.default_rng(4).normal(size=(clusters, factors)).astype(np.float32)


def _vectors(rng, n: int, basis: np.ndarray, noise: float, centres: np.ndarray, spread: float) -> np.ndarray:
    """Unit vectors around clustered low-rank points: (centre + spread·N) · basis + noise."""
    z = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, basis.shape[0])).astype(np.float32)
    v = z @ basis
    v += noise * rng.normal(size=v.shape).astype(np.float32) / math.sqrt(basis.shape[1])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _vector_array(v: np.ndarray):
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(np.arange(0, v.size + 1, v.shape[1], dtype=np.int32)),
                                    pa.array(v.ravel(), pa.float32()))


def item_batches(batches, dim: int, factors: int, noise: float, version: str, clusters: int, spread: float):
    """mapInArrow: spark.range ids -> item_embeddings rows (deterministic per batch)."""
    import pyarrow as pa

    basis, centres = _basis(dim, factors, 1), _centres(factors, clusters)
    for batch in batches:
        ids = batch.column(0).to_numpy()
        if len(ids) == 0:
            continue
        rng = np.random.default_rng([2, int(ids[0])])
        names = pa.array([f"i{i:08d}" for i in ids])
        n = len(ids)
        yield pa.RecordBatch.from_arrays(
            [names, names, pa.array([version] * n), _vector_array(_vectors(rng, n, basis, noise, centres, spread)),
             pa.array([f"item {i}" for i in ids]), pa.array([f"c{i % CATEGORIES:02d}>sub{i % 7}" for i in ids])],
            names=["item_id", "content_hash", "model_version", "rec_vec", "title", "category"])


def user_batches(batches, dim: int, factors: int, noise: float, items: int, history: int, clusters: int,
                 spread: float):
    """mapInArrow: spark.range ids -> user_profiles rows."""
    import pyarrow as pa

    basis, centres = _basis(dim, factors, 1), _centres(factors, clusters)
    for batch in batches:
        ids = batch.column(0).to_numpy()
        if len(ids) == 0:
            continue
        rng = np.random.default_rng([3, int(ids[0])])
        n = len(ids)
        hist = rng.integers(0, items, size=n * history)
        offsets = pa.array(np.arange(0, n * history + 1, history, dtype=np.int32))
        yield pa.RecordBatch.from_arrays(
            [pa.array([f"u{u:09d}" for u in ids]), _vector_array(_vectors(rng, n, basis, noise, centres, spread)),
             pa.array(np.full(n, history, np.int32)),
             pa.ListArray.from_arrays(offsets, pa.array([f"i{i:08d}" for i in hist])),
             pa.ListArray.from_arrays(offsets, pa.array(rng.uniform(0.5, 2.0, n * history).astype(np.float32)))],
            names=["user_id", "profile_vec", "history_len", "history_item_ids", "history_weights"])


def write_inputs(spark, ctx, args, dim: int, version: str) -> None:
    from functools import partial

    from pyspark.sql import functions as F

    from fusionrank.core import catalog as schemas

    def conform(df, schema):
        return df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                           for f in schema.fields])

    parts = max(args.cores, args.items // 50_000, args.users // 50_000)
    item_ddl = ("item_id string, content_hash string, model_version string, rec_vec array<float>, title string, "
                "category string")
    items = spark.range(0, args.items, numPartitions=parts).mapInArrow(
        partial(item_batches, dim=dim, factors=args.factors, noise=args.noise, version=version,
                clusters=args.clusters, spread=args.spread), item_ddl)
    items = items.withColumn("run_date", F.lit(RUN_DATE))
    ctx.write("catalog_clean", conform(items, schemas.CATALOG_CLEAN), "bench")
    ctx.write("item_embeddings", conform(items, schemas.ITEM_EMBEDDINGS), "bench")
    user_ddl = ("user_id string, profile_vec array<float>, history_len int, history_item_ids array<string>, "
                "history_weights array<float>")
    users = spark.range(0, args.users, numPartitions=parts).mapInArrow(
        partial(user_batches, dim=dim, factors=args.factors, noise=args.noise, items=args.items,
                history=args.history, clusters=args.clusters, spread=args.spread), user_ddl).withColumn("run_date", F.lit(RUN_DATE))
    ctx.write("user_profiles", conform(users, schemas.USER_PROFILES), "bench")
    when = dt.datetime.combine(RUN_DATE - dt.timedelta(days=30), dt.time(12), tzinfo=dt.timezone.utc)
    events = (ctx.for_date("user_profiles").select("user_id", F.explode("history_item_ids").alias("item_id"))
              .select("user_id", F.lit("view").alias("event_type"), "item_id",
                      F.lit(when).cast("timestamp").alias("event_ts"), F.lit(when.date()).alias("event_date")))
    ctx.store.write(conform(events, schemas.EVENTS_CLEAN), "events_clean", partition_by=["event_date"])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


# Measured peak -> the memory plan's row (interfaces.sizing, what `fusionrank sizing`
# prints): the driver's Python process while build_index trains and merges, and the
# largest Python worker while rank searches (it holds the loaded index). The plan
# counts what a stage adds to a process: the driver's growth over its RSS when the
# stage began, and the worker's peak over a worker's RSS before any index (the
# largest worker of the inputs stage).
PLAN_ROWS = (("build_index", "driver Python", "driver_python"), ("rank", "worker", "python_worker_max"))


def print_plan(settings, args, dim: int, peaks: dict, starts: dict, shards: int | None) -> None:
    """Measured growth beside the plan at this run's scale and shard count, and the bound
    a deployment configures for it (conf/cluster.yaml's per-stage Spark memory and the
    plan at its own shard count, interfaces.sizing.limits)."""
    from fusionrank.core.config import load_config
    from fusionrank.interfaces import sizing

    planned = sizing.needs_at(settings, args.items, args.users, dim=dim, shards=shards)
    cluster = load_config(ROOT / "conf" / "cluster.yaml")
    cluster_plan = sizing.needs_at(cluster, args.items, args.users, dim=dim)
    base = {"driver_python": starts["build_index"]["driver_python"],
            "python_worker_max": peaks["inputs"]["python_worker_max"]}
    print(f"\nmemory plan at {args.items:,} items x {args.users:,} users, dim {dim}, {shards} index shards "
          "(interfaces.sizing: what the stage adds to the process; bound: conf/cluster.yaml's setting for the "
          "stage, with the plan at its shard count):")
    print(f"{'stage':<13}{'where':<15}{'peak GiB':>9}{'added GiB':>11}{'plan GiB':>10}{'added/plan':>12}"
          "  bound in conf/cluster.yaml")
    for stage, place, key in PLAN_ROWS:
        peak, plan = peaks[stage][key], planned.get((stage, place), 0.0)
        added = peak - base[key]
        counted, bound = sizing.limits(cluster, stage, place, cluster_plan.get((stage, place), 0.0))
        conf_key = sizing.BOUND[place]
        bound_text = (f"{conf_key} {cluster.spark.conf_for(stage).get(conf_key)} = {gib(bound)} GiB "
                      f"(plan there {gib(counted)} GiB: {'fits' if counted <= bound else 'DOES NOT FIT'})"
                      if bound else "unbounded")
        print(f"{stage:<13}{place:<15}{gib(peak):>9}{gib(added):>11}{gib(plan):>10}"
              f"{added / plan if plan else float('nan'):>12.2f}  {bound_text}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=0, help="0: conf/local.yaml's ranking-space dimension")
    parser.add_argument("--factors", type=int, default=32, help="rank of the synthetic vectors")
    parser.add_argument("--noise", type=float, default=0.1, help="isotropic noise in the full dimension")
    parser.add_argument("--clusters", type=int, default=1024, help="cluster centres in factor space")
    parser.add_argument("--spread", type=float, default=0.5, help="spread around a centre (factor space)")
    parser.add_argument("--history", type=int, default=5, help="history (and seen) items per user")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory (local mode: driver + executor)")
    parser.add_argument("--index-type", default=None, help="index.type (default: the config's, auto)")
    parser.add_argument("--budget-mb", type=int, default=0, help="index.memory_budget_mb (0: the config's)")
    parser.add_argument("--no-similar", action="store_true", help="rank.write_similar: false")
    parser.add_argument("--target-items", type=int, default=10_000_000)
    parser.add_argument("--target-users", type=int, default=100_000_000)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    parser.add_argument("--smaller", default=None,
                        help="the --json of a smaller run: extrapolate from the marginal cost between the two "
                             "(fixed costs such as Spark jobs and index training cancel out)")
    args = parser.parse_args(argv)

    from fusionrank.core.config import load_config
    from fusionrank.core.context import make_context
    from fusionrank.core.spark import get_session
    from fusionrank.index import build as index_build
    from fusionrank.pipeline import run_stage
    from fusionrank.vectors import spec as specs

    work = Path(args.work or tempfile.mkdtemp(prefix="fusionrank-scale-"))
    index_cfg = {k: v for k, v in {"type": args.index_type, "memory_budget_mb": args.budget_mb or None}.items() if v}
    settings = load_config(ROOT / "conf" / "local.yaml", overrides={
        "spark": {"master": f"local[{args.cores}]", "ui_enabled": False, "driver_memory": args.driver_memory,
                  "conf": {"spark.sql.shuffle.partitions": str(max(args.cores, args.users // 100_000))}},
        "storage": {"root": str(work / "warehouse")},
        "index": {"use_gpu": False, **index_cfg},
        "rank": {"write_similar": not args.no_similar},
        "evaluate": {"holdout_days": 1},
    })
    spec = specs.resolve(settings)
    dim = args.dim or spec.ranking_dim
    memory = PeakRSS()
    spark = get_session(settings)
    ctx = make_context(settings, RUN_DATE, spark)
    print(f"{args.items:,} items x {args.users:,} users, dim {dim} (rank-{args.factors} factors, {args.clusters} clusters), "
          f"{args.cores} cores, "
          f"spark.driver.memory {args.driver_memory}; work dir {work}", flush=True)
    rows, counts, starts = [], {}, {}
    try:
        for name in ("inputs", "build_index", "rank"):
            memory.reset()
            started = time.perf_counter()
            if name == "inputs":
                write_inputs(spark, ctx, args, dim, spec.version)
            else:
                counts[name] = run_stage(name, settings, RUN_DATE, ctx=ctx).counts
            seconds = time.perf_counter() - started
            rows.append((name, seconds, dict(memory.peak)))
            starts[name] = dict(memory.start)
            print(f"  {name}: {seconds:.1f}s {counts.get(name, '')}; peak RSS GiB "
                  + ", ".join(f"{k} {gib(v)}" for k, v in memory.peak.items()), flush=True)
        manifest = index_build.read_manifest(ctx.index_path())
    finally:
        spark.stop()
        memory.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'stage':<13}{'wall s':>9}{'driver py GiB':>15}{'JVM GiB':>9}{'worker max GiB':>16}"
          f"{'workers GiB':>13}{'tree GiB':>10}")
    for name, seconds, peak in rows:
        print(f"{name:<13}{seconds:>9.1f}{gib(peak['driver_python']):>15}{gib(peak['jvm']):>9}"
              f"{gib(peak['python_worker_max']):>16}{gib(peak['python_workers_sum']):>13}{gib(peak['tree']):>10}")
    check = manifest["self_check"]
    print(f"\nindex: {manifest['type']} nlist={manifest.get('nlist')} nprobe={manifest.get('nprobe')} "
          f"pq_m={manifest.get('pq_m')} shards={manifest.get('shards')}; self-check recall@10 "
          f"{check['recall_at_10']:.3f} (min {check['min_recall']}); rank: {counts['rank'].get('users_ranked')} users, "
          f"{counts['rank'].get('recs_rows')} rows, similar {counts['rank'].get('similar_rows')}")

    print_plan(settings, args, dim, {name: peak for name, _, peak in rows}, starts, manifest.get("shards"))

    # Extrapolation: core-seconds per item (build) and per user (rank); the IVF scan per
    # query grows with items / nlist * nprobe, nlist ~ sqrt(items): x sqrt(item ratio).
    wall = {name: seconds for name, seconds, _ in rows}
    if args.json:
        Path(args.json).write_text(json.dumps({"items": args.items, "users": args.users, "cores": args.cores,
                                               "dim": dim, "wall": wall, "peaks": {n: p for n, _, p in rows}, "starts": starts,
                                               "manifest": {k: manifest.get(k) for k in ("type", "nlist", "nprobe",
                                                                                          "pq_m", "shards")},
                                               "self_check": check}, indent=1))
    per_item = wall["build_index"] * args.cores / args.items
    per_user = wall["rank"] * args.cores / args.users
    basis = "average over the whole run (fixed costs included: an upper estimate)"
    if args.smaller:
        small = json.loads(Path(args.smaller).read_text())
        if small["items"] < args.items and small["users"] < args.users:
            per_item = (wall["build_index"] - small["wall"]["build_index"]) * args.cores / (args.items - small["items"])
            per_user = (wall["rank"] - small["wall"]["rank"]) * args.cores / (args.users - small["users"])
            basis = f"marginal cost between {small['items']:,} x {small['users']:,} and this run"
    # The IVF scan per query is nprobe x items / nlist (nlist as the pipeline picks it, capped
    # by index.train_sample): the rank's per-user cost grows at most by that ratio.
    def list_length(n: int) -> float:
        return n / max(1, index_build.choose_nlist(n, settings.index.nlist, settings.index.train_sample))

    scan_ratio = list_length(args.target_items) / list_length(args.items)
    build_cs = per_item * args.target_items
    rank_low, rank_high = per_user * args.target_users, per_user * args.target_users * scan_ratio
    print(f"\nextrapolated to {args.target_items:,} items x {args.target_users:,} users ({basis}; rank: per user, "
          f"up to x {scan_ratio:.1f} for the longer inverted lists scanned per query):")
    print(f"{'stage':<13}{'core-ms / unit':>16}{'core-hours':>20}{'hours on 64 cores':>20}  model")
    print(f"{'build_index':<13}{per_item * 1e3:>16.3f}{build_cs / 3600:>20.1f}{build_cs / 3600 / 64:>20.2f}"
          f"  per item x {args.target_items:,}")
    print(f"{'rank':<13}{per_user * 1e3:>16.3f}{f'{rank_low / 3600:.0f} - {rank_high / 3600:.0f}':>20}"
          f"{f'{rank_low / 3600 / 64:.1f} - {rank_high / 3600 / 64:.1f}':>20}  per user x {args.target_users:,}"
          f" (x 1 .. x {scan_ratio:.1f})")
    for n in (args.items, args.target_items):
        try:
            chosen = index_build.choose_spec(n, dim, settings.index)
            print(f"index at {n:,} items x {dim}: {chosen.type} (nlist={chosen.nlist}, pq_m={chosen.pq_m or '-'}), "
                  f"about {chosen.estimated_mb / 1024:.2f} GiB per loaded copy (index.build.estimate_mb)")
        except Exception as error:  # over index.memory_budget_mb: say so
            print(f"index at {n:,} items x {dim}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
