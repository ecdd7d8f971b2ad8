"""Speed of fusionrank's `rank` stage against Spark ALS `recommendForAllUsers(k)`.

Synthetic clustered factors (dim 64) for U users x I items, k=100, in one run:

  (a) Spark ALS recommendForAllUsers(k) over an ALSModel holding exactly these factors
      (a 1-iteration model is saved, its userFactors/itemFactors Parquet replaced by
      ours, and the model loaded back); the output is forced with a no-op write;
  (b) FAISS exact search (IndexFlatIP) of all users in one process;
  (c) the same search over fusionrank's built index (the artifact itself) in one process;
  (d) fusionrank's real stages through pipeline.run_stage: build_index (timed on its own)
      and rank (Spark, index loading, seen-item filtering, reasons, writing
      recs_user_topk as Delta), from item_embeddings / user_profiles Delta tables.

  (d1, d2) with --breakdown: the rank pass built up in steps, each its own Spark job
      (breakdown_ladder), beside the wall time of the stage's own calls.

  (e) with --rerank: the same rank stage with the learned second stage on
      (rerank.enabled: trained on the driver from events_clean, applied in the rank pass).
      The users' histories then become real training events (each user's items drawn
      from its own cluster, popular items more often, over the 30 days before the
      hold-out) and the catalog gets categories, brands, prices and ages, so the
      ranker has features and labels; (d) runs on the same tables (its seen-item
      filter then removes the history from the lists, so its recall@100 is below (c)'s).

recs_item_similar is skipped (rank.write_similar: false) unless --with-similar, in which
case the rank stage includes it. Recall@100 is measured against (b) on all users for
(c) and on --recall-users sampled users for (d), read back from recs_user_topk.

    python bench/rank_vs_als.py --users 50000 --items 20000
    python bench/rank_vs_als.py --skip-als --breakdown --rank-runs 3   # the stage 3 times: min / median
    python bench/rank_vs_als.py --users 200000 --items 100000 --rerank  # (e): with the re-ranker
    python bench/rank_vs_als.py --skip-als --rerank --rerank-conf '{"candidates": 50}'  # other rerank settings
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
RUN_DATE = dt.date(2026, 1, 15)


def clustered_factors(n: int, dim: int, centres: np.ndarray, rng, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, each one's cluster)."""
    cluster = rng.integers(0, len(centres), n)
    vectors = centres[cluster] + spread * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), cluster


def vector_column(vectors: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32)),
                                    pa.array(vectors.ravel(), pa.float32()))


def write_parquet(table: pa.Table, folder: Path) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=64 * 1024)
    return str(folder)


def recall_at(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean |got_u ∩ truth_u| / |truth_u| over rows (positions; -1 ignored)."""
    hits = sum(len(set(g[g >= 0].tolist()) & set(t.tolist())) for g, t in zip(got, truth))
    return hits / float(truth.size)


def als_seconds(spark, users: np.ndarray, items: np.ndarray, k: int, work: Path) -> float:
    from pyspark.ml.recommendation import ALS, ALSModel

    tiny = spark.createDataFrame([(0, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0)], "user int, item int, rating float")
    model = ALS(rank=users.shape[1], maxIter=1, userCol="user", itemCol="item", ratingCol="rating", seed=1).fit(tiny)
    path = work / "als_model"
    model.write().overwrite().save(str(path))
    # The saved model's factor tables, replaced by ours (same schema: id int, features array<float>).
    for name, vectors in (("userFactors", users), ("itemFactors", items)):
        write_parquet(pa.table({"id": pa.array(np.arange(len(vectors), dtype=np.int32)),
                                "features": vector_column(vectors)}), path / name)
    model = ALSModel.load(str(path))
    assert model.userFactors.count() == len(users) and model.itemFactors.count() == len(items)
    started = time.perf_counter()
    model.recommendForAllUsers(k).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - started


def behaviour(user_cluster: np.ndarray, item_cluster: np.ndarray, history: int, rng) -> np.ndarray:
    """(users, history) item numbers: 80% from the user's own cluster, popular items
    (a Zipf-like weight per item) more often, 20% anywhere; distinct per user."""
    n_items = len(item_cluster)
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.7
    hist = rng.integers(0, n_items, size=(len(user_cluster), history))
    own = rng.random(size=hist.shape) < 0.8
    for c in np.unique(user_cluster):
        members = np.flatnonzero(item_cluster == c)
        rows = np.flatnonzero(user_cluster == c)
        if len(members) == 0 or len(rows) == 0:
            continue
        p = popularity[members] / popularity[members].sum()
        picks = members[rng.choice(len(members), size=(len(rows), history), p=p)]
        hist[rows] = np.where(own[rows], picks, hist[rows])
    hist.sort(axis=1)  # repeats of an item: keep one, fill with a random other
    dup = np.zeros_like(hist, dtype=bool)
    dup[:, 1:] = hist[:, 1:] == hist[:, :-1]
    hist[dup] = rng.integers(0, n_items, size=int(dup.sum()))
    return rng.permuted(hist, axis=1)


def write_tables(spark, store, users: np.ndarray, items: np.ndarray, work: Path, history: int, seed: int,
                 clusters: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """The stage's input tables. With `clusters` (user's, item's) the histories are
    events_clean rows and the catalog has attributes (the re-ranker's inputs)."""
    from pyspark.sql import functions as F

    from fusionrank.core import catalog as schemas

    rng = np.random.default_rng(seed)
    item_ids = pa.array([f"i{i:07d}" for i in range(len(items))])
    user_ids = pa.array([f"u{u:07d}" for u in range(len(users))])

    def load(table: pa.Table, name: str, schema):
        df = spark.read.parquet(write_parquet(table, work / "src" / name))
        df = df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                         for f in schema.fields])
        store.write(df, name, partition_by=["run_date"] if "run_date" in schema.fieldNames() else ["event_date"],
                    replace={"run_date": RUN_DATE} if "run_date" in schema.fieldNames() else None)

    n_items, n_users = len(items), len(users)
    catalog = {"item_id": item_ids, "title": pa.array([f"item {i}" for i in range(n_items)]),
               "content_hash": item_ids, "run_date": pa.array([RUN_DATE] * n_items)}
    if clusters is not None:
        item_cluster = clusters[1]
        catalog.update({
            "category": pa.array([f"c{c // 16} > c{c}" for c in item_cluster]),
            "brand": pa.array([f"b{b}" for b in rng.integers(0, 2000, n_items)]),
            "price": pa.array(np.round(np.exp(rng.normal(3.5, 0.8, n_items)), 2)),
            "updated_at": pa.array(((dt.datetime(2025, 12, 31, tzinfo=dt.timezone.utc).timestamp()
                                     - rng.integers(0, 365 * 86400, n_items)) * 1_000_000).astype(np.int64),
                                   pa.int64()).cast(pa.timestamp("us", tz="UTC"))})
    load(pa.table(catalog), "catalog_clean", schemas.CATALOG_CLEAN)
    load(pa.table({"item_id": item_ids, "content_hash": item_ids, "model_version": pa.array(["bench"] * n_items),
                   "fused_vec": vector_column(items), "rec_vec": vector_column(items),  # whichever the index reads
                   "run_date": pa.array([RUN_DATE] * n_items)}),
         "item_embeddings", schemas.ITEM_EMBEDDINGS)
    hist = rng.integers(0, n_items, size=(n_users, history)) if clusters is None else \
        behaviour(clusters[0], clusters[1], history, rng)
    hist_offsets = pa.array(np.arange(0, n_users * history + 1, history, dtype=np.int32))
    load(pa.table({"user_id": user_ids, "run_date": pa.array([RUN_DATE] * n_users), "profile_vec": vector_column(users),
                   "history_len": pa.array(np.full(n_users, history, dtype=np.int32)),
                   "history_item_ids": pa.ListArray.from_arrays(hist_offsets, item_ids.take(pa.array(hist.ravel()))),
                   "history_weights": pa.ListArray.from_arrays(
                       hist_offsets, pa.array(rng.uniform(0.5, 2, n_users * history).astype(np.float32)))}),
         "user_profiles", schemas.USER_PROFILES)
    if clusters is None:
        # One training event of a user without a profile: the stage's seen-item join runs, and
        # no ranked user has seen items, so its lists compare with ALS's unfiltered ones.
        when = dt.datetime(2025, 12, 1, tzinfo=dt.timezone.utc)
        load(pa.table({"user_id": ["nobody"], "event_type": ["view"], "item_id": ["i0000000"],
                       "event_ts": pa.array([when], pa.timestamp("us", tz="UTC")), "event_date": [when.date()]}),
             "events_clean", schemas.EVENTS_CLEAN)
        return
    # Every history item is an event of the 30 days before the hold-out (run date - 14 days).
    end = dt.datetime.combine(RUN_DATE, dt.time(), dt.timezone.utc) - dt.timedelta(days=15)
    seconds = (end.timestamp() - rng.uniform(0, 30 * 86400, n_users * history)).astype(np.int64)
    kinds = np.array(["view", "click", "add_to_cart", "purchase"])
    ts = pa.array(seconds * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    load(pa.table({"user_id": user_ids.take(pa.array(np.repeat(np.arange(n_users), history))),
                   "event_type": pa.array(kinds[rng.choice(4, n_users * history, p=[0.5, 0.3, 0.12, 0.08])]),
                   "item_id": item_ids.take(pa.array(hist.ravel())), "event_ts": ts,
                   "event_date": ts.cast(pa.date32())}),
         "events_clean", schemas.EVENTS_CLEAN)


class Spans:
    """Wall time of named driver-side calls during one stage run (wrapped in place)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._undo: list = []

    def wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)

    def rows(self, total: float) -> list[tuple[str, float]]:
        out = [("rank stage (run_stage, total)", total)]
        out += [(name, seconds) for name, seconds in self.seconds.items()]
        return out


def profile_rank_stage() -> Spans:
    """Time the rank stage's parts: the cold-start lists job, the executor job (search,
    seen join, reasons, Parquet), the commit, the Delta-log counts and query_topk."""
    from fusionrank.ranks import cold_start, stage
    from fusionrank.index import build as index_build
    from fusionrank.storage import store
    from fusionrank.pipeline import runner

    spans = Spans()
    spans.wrap(cold_start, "popular_lists", "cold_start.popular_lists (Spark job, collect)")
    spans.wrap(store.TableStore, "write", "TableStore.write recs_user_topk (job + commit)")
    spans.wrap(store.TableStore, "_write_batches", "  of which the executor job (seen join, search, reasons, Parquet)")
    spans.wrap(store.TableStore, "count_rows", "TableStore.count_rows (Delta log)")
    spans.wrap(stage, "write_query_topk", "write_query_topk (events scans, driver search, write_rows)")
    spans.wrap(stage, "read_manifest", "read_manifest")
    del index_build, runner
    return spans


def _search_only(batches, index_path: str, k: int, search_batch: int):
    """mapInArrow body: the rank pass's FAISS search and nothing else (one count out)."""
    from fusionrank.core.spark import task_cpus
    from fusionrank.index.build import arrow_vectors, load_index
    import faiss

    faiss.omp_set_num_threads(task_cpus())
    loaded = load_index(index_path)
    searched = 0
    for batch in batches:
        for start in range(0, batch.num_rows, search_batch):
            chunk = batch.slice(start, search_batch)
            loaded.search(arrow_vectors(chunk, "profile_vec", loaded.index.d), k)
            searched += chunk.num_rows
    yield pa.RecordBatch.from_pydict({"n": [searched]})


def _count_only(batches, produce):
    """mapInArrow body: `produce`'s batches, counted (no rows back to Spark, no files)."""
    rows = 0
    for batch in produce(batches):
        rows += batch.num_rows
    yield pa.RecordBatch.from_pydict({"n": [rows]})


def breakdown_ladder(ctx, settings) -> list[tuple[str, float]]:
    """The rank pass built up in steps, each a separate Spark job over user_profiles
    (warm Python workers, index loaded): (d1) the feed and the FAISS search only;
    (d2) the whole rank pass (seen removal, ids, reasons) but no files; the stage (d)
    adds the seen-items join, cold-start users, the Parquet writers and the commit.
    The steps' seen lists are null: so are the stage's without --rerank (the events
    table then holds one event of a user without a profile)."""
    from functools import partial

    from pyspark.sql import functions as F

    from fusionrank.ranks import users as ranking

    cfg = settings.rank
    profiles = ctx.for_date("user_profiles").select(
        "user_id", "profile_vec", "history_item_ids", "history_weights", F.lit(None).cast("array<string>").alias("seen"))
    batches = ranking.rank_batches(profiles, ctx.index_path(), cfg, cfg.user_partitions)  # the stage's feed
    out = []
    started = time.perf_counter()
    batches.frame.mapInArrow(partial(_search_only, index_path=ctx.index_path(), k=cfg.k,
                                     search_batch=cfg.search_batch), "n long").write.format("noop").mode("overwrite").save()
    out.append(("(d1) Spark feed + FAISS search only (no seen, reasons, files)", time.perf_counter() - started))
    started = time.perf_counter()
    batches.frame.mapInArrow(partial(_count_only, produce=batches.produce), "n long") \
        .write.format("noop").mode("overwrite").save()
    out.append(("(d2) + seen removal, ids, reasons (the rank pass, no files)", time.perf_counter() - started))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--spread", type=float, default=0.35, help="noise around the cluster centres")
    parser.add_argument("--index-type", default="ivf_flat")
    parser.add_argument("--nlist", type=int, default=0, help="0: fusionrank's choice from the item count")
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--history", type=int, default=10, help="history items per user (for reasons)")
    parser.add_argument("--recall-users", type=int, default=2000)
    parser.add_argument("--with-similar", action="store_true", help="rank stage also writes recs_item_similar")
    parser.add_argument("--skip-als", action="store_true")
    parser.add_argument("--rerank", action="store_true",
                        help="also run the rank stage with the re-ranker (e); histories become training events")
    parser.add_argument("--rerank-conf", default="{}",
                        help="with --rerank: JSON of rerank settings over the config's, e.g. "
                             "'{\"candidates\": 50, \"max_train_users\": 2500}'")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the stage's parts and the rank pass built up in steps (d1, d2)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    parser.add_argument("--rank-runs", type=int, default=1,
                        help="run the rank stage this many times in the same session (later runs are warm: "
                             "Python workers and the index already loaded); report min and median")
    args = parser.parse_args(argv)

    import faiss

    from fusionrank.index import build as index_mod
    from fusionrank.core.config import load_config
    from fusionrank.core.context import make_context
    from fusionrank.pipeline import run_stage
    from fusionrank.core.spark import get_session

    work = Path(args.work or tempfile.mkdtemp(prefix="rank_vs_als-"))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim))
    items, item_cluster = clustered_factors(args.items, args.dim, centres, rng, args.spread)
    users, user_cluster = clustered_factors(args.users, args.dim, centres, rng, args.spread)
    overrides = {
        "spark": {"master": f"local[{args.cores}]", "ui_enabled": False, "driver_memory": "6g",
                  "conf": {"spark.sql.shuffle.partitions": str(args.cores),
                           "spark.sql.execution.arrow.maxRecordsPerBatch": "4096"}},
        "storage": {"root": str(work / "warehouse")},
        "index": {"type": args.index_type, "nlist": args.nlist, "nprobe": args.nprobe, "flat_max_items": 0,
                  "self_check_k": args.k},
        "rank": {"k": args.k, "max_candidates": args.k + 100, "write_similar": args.with_similar},
        "rerank": {"enabled": False},
    }
    settings = load_config(ROOT / "conf" / "local.yaml", overrides=overrides)
    spark = get_session(settings)
    ctx = make_context(settings, RUN_DATE, spark)
    print(f"{args.users} users x {args.items} items, dim {args.dim}, k={args.k}, {args.cores} cores, "
          f"{args.clusters} clusters; work dir {work}", flush=True)
    rows = []
    try:
        als = None
        if not args.skip_als:
            als = als_seconds(spark, users, items, args.k, work)
            rows.append(("(a) Spark ALS recommendForAllUsers", als, 1.0))
            print(f"  ALS done in {als:.1f}s", flush=True)

        faiss.omp_set_num_threads(args.cores)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(items)
        started = time.perf_counter()
        _, truth = exact.search(users, args.k)
        flat_s = time.perf_counter() - started
        rows.append(("(b) FAISS exact, one process", flat_s, 1.0))

        write_tables(spark, ctx.store, users, items, work, args.history, seed=1,
                     clusters=(user_cluster, item_cluster) if args.rerank else None)
        built = run_stage("build_index", settings, RUN_DATE, ctx=ctx)
        manifest = index_mod.read_manifest(ctx.index_path())
        print(f"  build_index {built.seconds:.1f}s: {built.counts}", flush=True)

        ann = faiss.read_index(str(Path(ctx.index_path()) / index_mod.INDEX_FILE))
        if "nprobe" in manifest:
            faiss.extract_index_ivf(ann).nprobe = manifest["nprobe"]
        faiss.omp_set_num_threads(args.cores)
        started = time.perf_counter()
        _, got = ann.search(users, args.k)
        ivf_s = time.perf_counter() - started
        item_numbers = np.array([int(i[1:]) for i in pq.read_table(
            Path(ctx.index_path()) / index_mod.IDS_FILE).column("item_id").to_pylist()])
        ivf_recall = recall_at(np.where(got >= 0, item_numbers[np.maximum(got, 0)], -1), truth)
        rows.append((f"(c) FAISS {manifest['type']} (the built index), one process", ivf_s, ivf_recall))

        runs = []  # (stage result, its breakdown or None), one per --rank-runs
        for _ in range(max(1, args.rank_runs)):
            run_spans = profile_rank_stage() if args.breakdown else None
            result = run_stage("rank", settings, RUN_DATE, ctx=ctx)
            if run_spans is not None:
                run_spans.restore()
            runs.append((result, run_spans))
        rank_seconds = sorted(r.seconds for r, _ in runs)
        # The middle run by time stands for the stage (its breakdown is printed).
        ranked, spans = sorted(runs, key=lambda r: r[0].seconds)[(len(runs) - 1) // 2]
        if args.breakdown:
            ladder = breakdown_ladder(ctx, settings)
        sample = np.sort(np.random.default_rng(2).choice(args.users, min(args.recall_users, args.users), replace=False))

        def stage_recall(run_ctx) -> float:
            wanted = [f"u{u:07d}" for u in sample]
            recs = (run_ctx.store.read("recs_user_topk", where={"run_date": RUN_DATE}).where(
                __import__("pyspark.sql.functions", fromlist=["col"]).col("user_id").isin(wanted))
                .select("user_id", "item_id").toPandas())
            by_user = recs.groupby("user_id")["item_id"].apply(lambda s: {int(i[1:]) for i in s}).to_dict()
            return sum(len(by_user.get(f"u{u:07d}", set()) & set(truth[u])) for u in sample) / float(len(sample) * args.k)

        rows.append((f"(d) fusionrank rank stage{' (+ similar items)' if args.with_similar else ''}", ranked.seconds,
                     stage_recall(ctx)))
        if args.breakdown:
            rows += [(name, seconds, float("nan")) for name, seconds in ladder]
        if args.rerank:
            from fusionrank.ranks.rerank import nightly

            rerank_settings = load_config(ROOT / "conf" / "local.yaml", overrides={
                **overrides, "rerank": {**json.loads(args.rerank_conf), "enabled": True, "num_threads": args.cores}})
            rerank_ctx = make_context(rerank_settings, RUN_DATE, spark)
            training = Spans()
            training.wrap(nightly, "train_nightly", "train")
            try:
                reranked = run_stage("rank", rerank_settings, RUN_DATE, ctx=rerank_ctx)
            finally:
                training.restore()
            counts = {k: v for k, v in reranked.counts.items() if k.startswith("rerank")}
            print(f"  rank with the re-ranker {reranked.seconds:.1f}s (training on the driver "
                  f"{training.seconds['train']:.1f}s): {counts}", flush=True)
            applied = "applied" if counts.get("rerank") == "trained" else f"NOT applied: {counts.get('rerank')}"
            rows.append((f"(e) rank stage + re-ranker ({applied})", reranked.seconds, stage_recall(rerank_ctx)))
            rows.append(("(e1)   of which training the re-ranker (driver)", training.seconds["train"], float("nan")))
    finally:
        spark.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    if len(runs) > 1:
        print(f"\nrank stage, {len(runs)} runs (first cold, then warm): "
              + " ".join(f"{r.seconds:.2f}" for r, _ in runs)
              + f" s; min {rank_seconds[0]:.2f}, median {float(np.median(rank_seconds)):.2f}; "
              f"warm min {min(r.seconds for r, _ in runs[1:]):.2f}. Below: the middle run (the faster middle one "
              "of an even count).")
    if spans is not None:
        print(f"\nrank stage breakdown (wall seconds of the driver's calls, nested ones listed under their caller; "
              f"load average {os.getloadavg()[0]:.1f})")
        for name, seconds in spans.rows(ranked.seconds):
            print(f"  {name:<62}{seconds:>8.2f}")
    base = als
    print()
    print(f"{'method':<58}{'seconds':>9}{'users/s':>11}{'vs ALS':>9}{'recall@100':>12}")
    for name, seconds, recall in rows:
        speed = f"{base / seconds:.1f}x" if base else "-"
        print(f"{name:<58}{seconds:>9.2f}{args.users / seconds:>11.0f}{speed:>9}{recall:>12.3f}")
    print(f"{'build_index stage (separately, not in (d))':<58}{built.seconds:>9.2f}"
          f"{'':>11}{'':>9}{manifest['self_check']['recall_at_k']:>12.3f}  (self-check recall@{manifest['self_check']['k']})")
    if args.rerank:
        print("(e)'s recall@100 is against the exact search of the profile: the re-ranker reorders "
              "a wider candidate set by other signals, so it is low by design; (d) and (e) remove seen items.")
    print(f"\nindex: {manifest['type']} nlist={manifest.get('nlist')} nprobe={manifest.get('nprobe')} "
          f"shards={manifest.get('shards')}; rank stage / in-process ANN search (d)/(c): {ranked.seconds / ivf_s:.1f}x; "
          f"recs_item_similar {'included' if args.with_similar else 'skipped (rank.write_similar: false)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
