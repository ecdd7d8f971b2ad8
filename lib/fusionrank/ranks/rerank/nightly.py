"""The rank stage's training of the re-ranker (driver) and the extra user columns the
rank pass needs for it.

Training (`train_nightly`): the training events (a seeded user sample above
`rerank.max_events`) come to the driver as integer arrays keyed by the night's
index positions. Labels are the last `rerank.label_days` days of training (or the
split `rerank.label_split` names); features come from the events before them: item
stats, profiles (the same weights and decay as build_profiles, over the index's
vectors) and the index's own ANN search (of the profile and, with
`profiles.interests` > 1, of each interest vector, as the rank pass does). A
bounded sample of labelled users trains LightGBM LambdaRank with early stopping on
a user slice. The artifact (model,
feature list, item stats from ALL training events, for applying) goes to
`Layout.reranker(run_date)`; its version is recorded in model_version.

Too few labels: the stage says so and uses the newest earlier artifact trained on
the same index model version, else retrieval order (the counts name which). A model
whose nDCG@10 does not beat retrieval order's by `rerank.min_valid_gain` is saved
marked `rejected` (the report shows it), never reused, and the night ranks in
retrieval order. `rerank.guard` says on what: `backtest` (a model trained one label
split earlier, scored on the night's labelled set) or `slice` (the night's own
early-stopping users)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from fusionrank.core import uri as uris
from fusionrank.core.catalog import layout
from fusionrank.core.context import RunContext
from fusionrank.profiles import interests as multi
from fusionrank.ranks.rerank import apply as rerank_apply
from fusionrank.ranks.rerank import features as fx
from fusionrank.ranks.rerank import ranker as rk
from fusionrank.storage import fs

log = logging.getLogger("fusionrank.rank")


def user_columns(events: DataFrame, recent: int) -> DataFrame:
    """(user_id, recent_item_ids, type_mix): the newest `recent` distinct items (ties
    by item id) and the share of each event type of fx.EVENT_TYPES."""
    items = events.where(F.col("item_id").isNotNull()).groupBy("user_id", "item_id").agg(
        F.max("event_ts").alias("_ts"))
    ranked = items.withColumn("_n", F.row_number().over(
        Window.partitionBy("user_id").orderBy(F.col("_ts").desc(), F.col("item_id").desc())))
    recent_df = (ranked.where(F.col("_n") <= recent).groupBy("user_id")
                 .agg(F.sort_array(F.collect_list(F.struct("_n", "item_id"))).alias("_r"))
                 .select("user_id", F.col("_r.item_id").alias("recent_item_ids")))
    total = F.count("*")
    mix = events.groupBy("user_id").agg(F.array(*[
        (F.sum(F.when(F.col("event_type") == t, 1).otherwise(0)) / total).cast("float")
        for t in fx.EVENT_TYPES]).alias("type_mix"))
    return recent_df.join(mix, "user_id", "outer")


def _collect_events(ctx: RunContext, index, cap: int, seed: int) -> tuple[fx.Events, int, int]:
    events = ctx.training_events().select(
        "user_id", "item_id", "event_type", F.col("event_ts").cast("long").alias("ts"), "value", "session_id")
    n = events.count()
    if n > cap:  # a seeded hash sample of users keeps whole histories
        share = cap / n
        events = events.where((F.abs(F.xxhash64(F.col("user_id"), F.lit(seed))) % 1_000_000) < share * 1_000_000)
    pdf = events.toPandas()
    kind = pdf["event_type"].map(fx.TYPE_CODE)
    pdf = pdf[kind.notna()]
    kind = kind[kind.notna()]
    user = pd.factorize(pdf["user_id"], sort=True)[0]
    session = pd.factorize(pdf["session_id"], sort=True)[0]  # null: -1
    item = index.position_of(pdf["item_id"].fillna("\x00").to_numpy(dtype=object))
    ev = fx.Events(user.astype(np.int64), item.astype(np.int64), pdf["ts"].to_numpy(np.int64),
                   kind.to_numpy(np.int8), pdf["value"].to_numpy(np.float64, na_value=np.nan), session.astype(np.int64))
    return ev, n, len(pdf)


def _item_attributes(ctx: RunContext, index) -> dict:
    catalog = ctx.for_date("catalog_clean").select(
        "item_id", "category", "brand", "price", F.col("updated_at").cast("double").alias("updated")).toPandas()
    pos = index.position_of(catalog["item_id"].to_numpy(dtype=object))
    catalog, pos = catalog[pos >= 0], pos[pos >= 0]
    n = int(index.index.ntotal)
    out = {}
    for name in ("category", "brand"):
        codes = pd.factorize(catalog[name], sort=True)[0]
        col = np.full(n, -1, np.int64)
        col[pos] = codes
        out[name] = col
    for name, source in (("price", "price"), ("updated_ts", "updated")):
        col = np.full(n, np.nan)
        col[pos] = catalog[source].to_numpy(np.float64, na_value=np.nan)
        out[name] = col
    return out


def profile_weights(profiles_cfg):
    """Per-event weights as profiles.build.event_weight (numpy): type weight x rating
    factor x 2^(-age / half-life), age from the user's last event (or `as_of`)."""
    table = np.array([float(profiles_cfg.event_weights.get(t, 0.0)) for t in fx.EVENT_TYPES])

    def weights(ev: fx.Events) -> np.ndarray:
        w = table[ev.kind.astype(np.int64)]
        rating = ev.kind == fx.TYPE_CODE["rating"]
        value = np.nan_to_num(ev.value[rating], nan=profiles_cfg.rating_offset + profiles_cfg.rating_scale)
        w[rating] *= np.maximum(value - profiles_cfg.rating_offset, 0) / profiles_cfg.rating_scale
        if profiles_cfg.half_life_days:
            last = np.full(int(ev.user.max(initial=-1)) + 1, -np.inf)
            np.maximum.at(last, ev.user, ev.ts.astype(float))
            age = np.maximum(last[ev.user] - ev.ts, 0) / fx.DAY
            w = w * 2.0 ** (-age / profiles_cfg.half_life_days)
        return w

    return weights


def _profiles(ub: fx.UserBatch, index, behaviour_dim: int, vectors: np.ndarray | None = None) -> np.ndarray:
    """Weighted sums of the history vectors, content part L2-normalised (pool_user)."""
    vec = rerank_apply.history_vectors(index, ub) if vectors is None else vectors
    return multi.pool(vec, np.where(ub.hist >= 0, ub.hist_w, 0), behaviour_dim)


def _batches(ev: fx.Events, users: np.ndarray, index, stats: fx.ItemStats, cfg, behaviour_dim: int, weights,
             size: int = 128, interests: int = 1):
    grouped = fx.EventsByUser(ev)
    for start in range(0, len(users), size):
        u = users[start:start + size]
        ub = fx.user_batch_from_events(grouped, u, np.zeros((len(u), 1), np.float32), weights, cfg.history, cfg.recent)
        vectors = rerank_apply.history_vectors(index, ub)
        ub.profile = _profiles(ub, index, behaviour_dim, vectors)
        extra = rerank_apply.with_interests(index, ub, behaviour_dim, interests, cfg.interest_candidates, vectors)
        # the full history (not only the `history` heaviest) is seen
        cand, flags = fx.candidates(rerank_apply.search_candidates(index, ub, cfg.candidates), ub, stats, cfg.cooc_candidates,
                                    cfg.trending_candidates, interest=extra, ann_limit=cfg.candidates)
        yield u, cand, fx.compute_features(cand, flags, ub, stats, index.reconstruct, behaviour_dim)


def train_nightly(ctx: RunContext, index, behaviour_dim: int) -> tuple[str | None, dict]:
    """(artifact folder to apply or None, counts for the stage record)."""
    cfg = ctx.settings.rerank
    out = layout(ctx.settings).reranker(ctx.run_date)
    version = index.manifest.get("model_version")
    ev, total_events, used = _collect_events(ctx, index, cfg.max_events, cfg.seed)
    counts: dict = {"rerank_events": int(used), "rerank_events_total": int(total_events)}
    attrs = _item_attributes(ctx, index)
    n_items = int(index.index.ntotal)
    weights = profile_weights(ctx.settings.profiles)
    interests = ctx.settings.profiles.interests
    try:
        if len(ev) == 0:
            raise ValueError("too few labels to train the re-ranker: no training events")
        # The night's model, the backtest's model (one label split earlier) and the
        # serving stats are independent: built side by side on the driver's cores
        # (numpy and LightGBM release the GIL; each result is what it is alone).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerank-train") as pool:
            night = pool.submit(_train_on, ev, cfg, index, n_items, attrs, behaviour_dim, weights, interests)
            earlier = (pool.submit(_earlier_model, ev, cfg, index, n_items, attrs, behaviour_dim, weights, interests)
                       if cfg.guard == "backtest" else None)
            serving_stats = pool.submit(fx.item_stats, ev, n_items, float(ev.ts.max()) + 1, **attrs)
            model, (values, labels, cands) = night.result()
            backtest = None
            if earlier is not None:
                try:
                    backtest = _backtest(earlier.result(), cfg, values, labels, cands)
                except ValueError as err:  # too little history for a split earlier: judge on the slice
                    if "too few labels" not in str(err):
                        raise
                    log.warning("rank: no re-ranker backtest (%s); judging it on its validation slice", err)
                    counts["rerank_backtest"] = f"skipped: {err}"
            apply_stats = serving_stats.result()
    except ValueError as err:
        if "too few labels" not in str(err):
            raise
        fallback = _last_good(ctx, version, behaviour_dim)
        log.warning("rank: %s; %s", err, f"using the re-ranker of {fallback}" if fallback else
                    "ranking in retrieval order")
        counts.update({"rerank": "fallback" if fallback else "off", "rerank_reason": str(err)})
        return (str(fallback) if fallback else None), counts
    weight = 0.0  # of retrieval order in the served score (rk.blend): the backtest's best
    if backtest is None:
        judged, against = model.valid_ndcg, model.valid_ndcg_retrieval
    else:
        by_weight, against = backtest
        weight = max(by_weight, key=lambda w: (by_weight[w], -w))  # ties: the least blended
        judged = by_weight[weight]
        counts.update({"rerank_backtest_ndcg": round(judged, 4), "rerank_backtest_ndcg_retrieval": round(against, 4),
                       "rerank_retrieval_blend": weight,
                       "rerank_backtest_by_blend": ", ".join(f"{w:g}: {v:.4f}" for w, v in by_weight.items())})
    too_few_users = model.n_users < cfg.min_serve_users
    rejected = too_few_users or not judged > against * (1 + cfg.min_valid_gain)
    digest = hashlib.sha256(model.booster.model_to_string(num_iteration=model.best_iteration).encode()).hexdigest()[:12]
    # Written on the driver's disk, then published under storage.root (any filesystem).
    staging = tempfile.mkdtemp(prefix="fusionrank-reranker-")
    model.save(staging, extra={
        "candidates": cfg.candidates, "cooc_candidates": cfg.cooc_candidates,
        "trending_candidates": cfg.trending_candidates, "history": cfg.history, "recent": cfg.recent,
        "interests": interests, "interest_candidates": cfg.interest_candidates,
        "behaviour_dim": behaviour_dim, "index_model_version": version, "run_date": str(ctx.run_date),
        "label_split": cfg.label_split, "label_days": cfg.label_days, "version": f"lgbm-{digest}",
        "rejected": rejected, "guard": cfg.guard,
        "backtest_ndcg": None if backtest is None else round(judged, 4),
        "backtest_ndcg_retrieval": None if backtest is None else round(against, 4),
        "retrieval_blend": weight,
        "top_gain": dict(list(model.gains().items())[:10])})
    np.savez(f"{staging}/{rk.STATS_FILE}", **apply_stats.to_arrays())
    try:
        if uris.is_local(out):
            sibling = f"{uris.local_path(out)}.tmp"
            shutil.rmtree(sibling, ignore_errors=True)
            shutil.move(staging, sibling)  # beside `out`, so the swap is two renames
            staging = sibling
        fs.publish_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts.update({"rerank": "trained", "rerank_version": f"lgbm-{digest}", "rerank_users": model.n_users,
                   "rerank_labels": model.n_labels, "rerank_rounds": model.best_iteration,
                   "rerank_folds": model.params.get("folds", 1),
                   "rerank_valid_ndcg": round(model.valid_ndcg, 4),
                   "rerank_valid_ndcg_retrieval": round(model.valid_ndcg_retrieval, 4)})
    log.info("rank: re-ranker %s trained on %d users (validation nDCG@10 %.4f vs retrieval order %.4f)",
             digest, model.n_users, model.valid_ndcg, model.valid_ndcg_retrieval)
    if rejected:
        what = "validation" if backtest is None else "backtest"
        reason = (f"trained on {model.n_users} labelled users, fewer than rerank.min_serve_users "
                  f"{cfg.min_serve_users}: too few to trust its {what}") if too_few_users else \
            (f"{what} nDCG@10 {judged:.4f} does not beat retrieval order's {against:.4f} by "
             f"rerank.min_valid_gain {cfg.min_valid_gain:g}")
        log.warning("rank: re-ranker %s rejected: %s; ranking in retrieval order", digest, reason)
        counts.update({"rerank": "rejected", "rerank_reason": reason})
        return None, counts
    return str(out), counts


def _ranker_config(cfg, seed: int) -> rk.RankerConfig:
    return rk.RankerConfig(num_leaves=cfg.num_leaves, learning_rate=cfg.learning_rate, num_rounds=cfg.num_rounds,
                           early_stopping=cfg.early_stopping, seed=seed, num_threads=cfg.num_threads,
                           folds=cfg.folds, fold_max_users=cfg.fold_max_users)


def _labelled_set(ev: fx.Events, cfg, seed: int, index, n_items: int, attrs: dict, behaviour_dim: int, weights,
                  interests: int = 1):
    """(values, labels, cands, names) of `ev` split by `cfg.label_split`: features from
    the events before the labels, for a bounded seeded sample of labelled users."""
    is_label = rk.label_split(ev, cfg.label_split, cfg.label_days, cfg.label_fraction, seed)
    before, labels_ev = ev.take(~is_label), ev.take(is_label)
    if len(before) == 0:
        raise ValueError("too few labels to train the re-ranker: no events before the labels")
    cutoff = float(labels_ev.ts.min()) if len(labels_ev) else float(ev.ts.max()) + 1
    stats = fx.item_stats(before, n_items, cutoff if cfg.label_split == "days" else float(before.ts.max()) + 1,
                          **attrs)
    lu, li, lg = rk.grades(labels_ev)
    with_history = np.unique(before.user[before.item >= 0])
    users = np.intersect1d(np.unique(lu), with_history)
    if len(users) > cfg.max_train_users:
        users = np.sort(np.random.RandomState(seed).choice(users, cfg.max_train_users, replace=False))
    values, labels, cands, names = [], [], [], None
    width = 0
    for u, cand, feats in _batches(before, users, index, stats, cfg, behaviour_dim, weights, interests=interests):
        values.append(feats.values)
        cands.append(cand)
        labels.append(rk.label_matrix(cand, u, lu, li, lg))
        names, width = feats.names, max(width, cand.shape[1])
    if not values:
        raise ValueError("too few labels to train the re-ranker: no labelled user with earlier history")
    return _pad(values, width, 0), _pad(labels, width, 0), _pad(cands, width, -1), names


def _train_on(ev: fx.Events, cfg, index, n_items: int, attrs: dict, behaviour_dim: int, weights,
              interests: int = 1):
    """(the night's model, its labelled set (values, labels, cands))."""
    values, labels, cands, names = _labelled_set(ev, cfg, cfg.seed, index, n_items, attrs, behaviour_dim, weights,
                                                 interests)
    model = rk.train_ranker(values, labels, cands, names, _ranker_config(cfg, cfg.seed), min_labels=cfg.min_labels)
    return model, (values, labels, cands)


def _earlier_model(ev: fx.Events, cfg, index, n_items: int, attrs: dict, behaviour_dim: int, weights,
                   interests: int = 1) -> rk.TrainedRanker:
    """The backtest's model: trained as the night's is, one label split earlier."""
    is_label = rk.label_split(ev, cfg.label_split, cfg.label_days, cfg.label_fraction, cfg.seed)
    earlier = ev.take(~is_label)
    v2, l2, c2, names = _labelled_set(earlier, cfg, cfg.seed + 1, index, n_items, attrs, behaviour_dim, weights,
                                      interests)
    return rk.train_ranker(v2, l2, c2, names, _ranker_config(cfg, cfg.seed), min_labels=cfg.min_labels)


def _backtest(model: rk.TrainedRanker, cfg, values: np.ndarray, labels: np.ndarray, cands: np.ndarray
              ) -> tuple[dict[float, float], float]:
    """({blend weight: nDCG@10 of `model` (`_earlier_model`: trained one label split
    earlier) on the night's own labelled set, blended with retrieval order at that
    weight}, retrieval order's nDCG@10). The night's model is trained on features from
    before its labels and applied to features from all of training; a model one split
    earlier scored on the night's set goes through that same shift, which a slice of
    the night's own users does not (on MovieLens' random split the slice favours the
    model while the shifted score, like the hold-out, favours retrieval order)."""
    valid = cands >= 0
    names = model.names
    scores, retrieval = model.score(values, valid), values[..., names.index(fx.RETRIEVAL_SCORE)]
    blends = {w: rk.ndcg_at(rk.blend(scores, retrieval, valid, w), labels, valid, 10) for w in cfg.retrieval_blends}
    return blends, rk.ndcg_at(retrieval, labels, valid, 10)


def _pad(arrays: list[np.ndarray], width: int, fill) -> np.ndarray:
    """The batches stacked along users, each padded to `width` columns with `fill`:
    one copy into the result (the features of 20k users run to gigabytes)."""
    rows = sum(len(a) for a in arrays)
    out = np.empty((rows, width) + arrays[0].shape[2:], arrays[0].dtype)
    start = 0
    for a in arrays:
        out[start:start + len(a), :a.shape[1]] = a
        out[start:start + len(a), a.shape[1]:] = fill
        start += len(a)
    return out


def _last_good(ctx: RunContext, version: str | None, behaviour_dim: int) -> str | None:
    """The newest earlier re-ranker trained on an index of the same model version, not
    rejected, and on the features the rank pass computes today (a model saved by an
    older release would stop the rank pass at its feature-name check)."""
    root = uris.parent(layout(ctx.settings).reranker(ctx.run_date))
    features = fx.feature_names(behaviour_dim, False, False)  # the rank pass has no per-modality vectors
    for name in sorted(fs.listdir(root), reverse=True):
        folder = uris.join(root, name)
        meta_uri = uris.join(folder, rk.META_FILE)
        if not name.startswith("run_date=") or name.split("=", 1)[1] >= str(ctx.run_date) or not fs.exists(meta_uri):
            continue
        meta = json.loads(fs.read_text(meta_uri))
        if meta.get("index_model_version") != version or meta.get("rejected"):
            continue
        if meta.get("features") != features:
            log.warning("rank: the re-ranker of %s has other features than this release computes; not reused", name)
            continue
        return folder
    return None


def model_version(index_version: str | None, folder: str | None) -> str | None:
    """model_version of the re-ranked rows: the index's, plus the ranker's."""
    if folder is None:
        return index_version
    meta = json.loads(fs.read_text(uris.join(str(folder), rk.META_FILE)))
    return f"{index_version}+{meta['version']}"


__all__ = ["train_nightly", "user_columns", "model_version", "profile_weights", "dt"]
