"""The learned second stage: LightGBM LambdaRank over `features.compute_features`.

Labels come from a split carved out of the *training* events (`label_split`):
``days`` (the last `label_days` days of training, the pipeline's default),
``user_last`` (each user's last fraction of events) or ``random`` (a per-user random
fraction, for the Recommenders protocol); features are built from the events before
the labels only. A label is graded by event type (purchase 4 > add_to_cart 3 >
click 2 > view 1) or a rating's value (rounded, 1..5); the strongest event of a
(user, item) counts.

Training is deterministic: fixed seed, `deterministic=True`, fixed thread count,
row-wise histograms; users are sampled with a seeded generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionrank.ranks.rerank.features import GRADE, RETRIEVAL_SCORE, TYPE_CODE, Events

LABEL_GAIN = (0.0, 1.0, 1.5, 2.0, 3.0, 3.5)  # by grade 0..5
MODEL_FILE = "reranker.txt"
META_FILE = "reranker.json"
STATS_FILE = "reranker_stats.npz"


def label_split(events: Events, mode: str, label_days: float = 7.0, fraction: float = 0.2,
                seed: int = 0) -> np.ndarray:
    """Boolean mask of the events that become labels (the rest give the features)."""
    n = len(events)
    if n == 0:
        return np.zeros(0, bool)
    if mode == "days":
        return events.ts >= events.ts.max() - label_days * 86_400.0 + 1
    rows = events.item >= 0
    mask = np.zeros(n, bool)
    idx = np.flatnonzero(rows)
    user = events.user[idx]
    if mode == "user_last":
        order = idx[np.lexsort((events.item[idx], events.ts[idx], user))]
    elif mode == "random":
        rng = np.random.RandomState(seed)
        order = idx[np.lexsort((rng.permutation(len(idx)), user))]
    else:
        raise ValueError(f"rerank.label_split must be days, user_last or random, got {mode!r}")
    u = events.user[order]
    starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(u)])
    nth = np.arange(len(u)) - np.repeat(starts, sizes)
    cut = np.repeat(sizes - np.round(sizes * fraction).astype(np.int64), sizes)
    if mode == "user_last":
        mask[order[nth >= cut]] = True
    else:
        mask[order[nth >= cut]] = True
    return mask


def grades(events: Events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, grade) with the strongest grade per (user, item); grade > 0 only."""
    ok = events.item >= 0
    ev = events.take(ok)
    g = GRADE[ev.kind.astype(np.int64)].astype(np.float64)
    rating = ev.kind == TYPE_CODE["rating"]
    g[rating] = np.clip(np.round(np.nan_to_num(ev.value[rating], nan=1.0)), 1, 5)
    keep = g > 0
    user, item, g = ev.user[keep], ev.item[keep], g[keep]
    if len(user) == 0:
        return user, item, g.astype(np.int32)
    m = int(item.max()) + 1
    key = user.astype(np.int64) * m + item
    uniq, inv = np.unique(key, return_inverse=True)
    best = np.zeros(len(uniq))
    np.maximum.at(best, inv, g)
    return uniq // m, uniq % m, best.astype(np.int32)


def label_matrix(cand: np.ndarray, users: np.ndarray, label_user: np.ndarray, label_item: np.ndarray,
                 label_grade: np.ndarray) -> np.ndarray:
    """(U, W) grade of each candidate of `users` (codes) from the label triples (0: none)."""
    n_users, width = cand.shape
    m = int(max(cand.max(initial=0), label_item.max(initial=0))) + 1
    order = np.argsort(users, kind="stable")
    su = users[order]
    at = np.searchsorted(su, label_user)
    ok = (at < len(su)) & (su[np.minimum(at, len(su) - 1)] == label_user)
    rows = order[at[ok]]
    key = rows.astype(np.int64) * m + label_item[ok]
    sort = np.argsort(key)
    key, vals = key[sort], label_grade[ok][sort]
    ckey = np.arange(n_users, dtype=np.int64)[:, None] * m + np.maximum(cand, 0)
    found = np.searchsorted(key, ckey)
    hit = (found < len(key)) & (key[np.minimum(found, len(key) - 1)] == ckey) & (cand >= 0)
    return np.where(hit, vals[np.minimum(found, len(key) - 1)], 0).astype(np.int32)


@dataclass
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    num_rounds: int = 500
    early_stopping: int = 50
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.9
    lambdarank_truncation: int = 20
    seed: int = 42
    num_threads: int = 2
    eval_at: int = 10
    max_negatives: int = 100   # unlabelled candidates sampled per training user (0: all)
    # Up to fold_max_users labelled users: `folds` models, each early-stopped on a
    # different 1/folds of the users and trained on the rest, summed into one booster
    # (every user trains, the variance of a small label set averages out). Above: one
    # model with a valid_share slice.
    folds: int = 5
    fold_max_users: int = 5000


@dataclass
class TrainedRanker:
    booster: object
    names: list[str]
    best_iteration: int
    valid_ndcg: float
    valid_ndcg_retrieval: float
    n_users: int
    n_labels: int
    params: dict = field(default_factory=dict)
    # The same trees compiled to native code (`compile_trees`), used by score() when set.
    compiled: object = None

    def score(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(U, W, F) -> (U, W) scores; with `valid` (U, W), only those entries are
        predicted (padding, a tenth of a batch or more, scores 0)."""
        flat = values.reshape(-1, values.shape[-1])
        out = np.zeros(len(flat), np.float32)
        keep = slice(None) if valid is None or valid.all() else valid.ravel()
        rows = flat[keep]
        if len(rows):
            threads = self.params.get("num_threads", 1)
            if self.compiled is not None:
                out[keep] = self.compiled.predict(np.ascontiguousarray(rows, np.float64), n_jobs=threads)
            else:
                out[keep] = self.booster.predict(rows, num_iteration=self.best_iteration, num_threads=threads)
        return out.reshape(values.shape[:-1])

    def gains(self) -> dict[str, float]:
        g = self.booster.feature_importance("gain", iteration=self.best_iteration)
        return {n: float(v) for n, v in sorted(zip(self.names, g), key=lambda t: -t[1])}

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / MODEL_FILE), num_iteration=self.best_iteration)
        meta = {"features": self.names, "best_iteration": self.best_iteration, "valid_ndcg": self.valid_ndcg,
                "valid_ndcg_retrieval": self.valid_ndcg_retrieval, "n_users": self.n_users,
                "n_labels": self.n_labels, "params": self.params, **(extra or {})}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_ranker(folder: str | Path) -> TrainedRanker:
    import lightgbm as lgb

    folder = Path(folder)
    if not (folder / MODEL_FILE).exists() or not (folder / META_FILE).exists():
        raise FileNotFoundError(f"re-ranker artifact incomplete in {folder}: needs {MODEL_FILE} and {META_FILE}")
    meta = json.loads((folder / META_FILE).read_text())
    booster = lgb.Booster(model_file=str(folder / MODEL_FILE))
    if booster.num_feature() != len(meta["features"]):
        raise ValueError(f"{folder / MODEL_FILE}: {booster.num_feature()} features, {META_FILE} lists "
                         f"{len(meta['features'])}")
    return TrainedRanker(booster, meta["features"], 0, meta["valid_ndcg"], meta["valid_ndcg_retrieval"],
                         meta["n_users"], meta["n_labels"], meta.get("params", {}))


def compile_trees(model_file: str | Path, cache_dir: str | Path):
    """The trees of a saved model (`MODEL_FILE`: cut at its best iteration) compiled to
    native code by lleaves (LLVM): the rank pass's prediction, 8-10x faster than
    LightGBM's own on one core (bench/rank_vs_als.py --rerank). Its scores equal
    LightGBM's up to the order of a double sum (1e-15; scores are kept as float32).

    The shared object is cached in `cache_dir` under a hash of the model text, the
    compiler's versions and the host's CPU (it is built for that CPU), so each host
    compiles a night's model once (1-2 s per hundred trees); several Python workers
    racing write private files, the first rename wins. Raises ImportError without
    lleaves (the caller falls back to LightGBM's prediction)."""
    import hashlib
    import os
    import tempfile
    from importlib.metadata import version

    import lleaves
    import llvmlite.binding as llvm

    model_file = Path(model_file)
    built_for = f"lleaves {version('lleaves')} llvmlite {version('llvmlite')} {llvm.get_host_cpu_name()}"
    digest = hashlib.sha256(model_file.read_bytes() + built_for.encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"reranker-{digest}.so"
    model = lleaves.Model(model_file=str(model_file))
    if cached.exists():
        model.compile(cache=str(cached))
        return model
    cached.parent.mkdir(parents=True, exist_ok=True)
    handle, private = tempfile.mkstemp(prefix=f".{cached.name}-", suffix=".so", dir=cached.parent)
    os.close(handle)
    os.unlink(private)  # lleaves compiles when the cache file is absent, else loads it
    try:
        model.compile(cache=private)
        os.replace(private, cached)
    finally:
        if os.path.exists(private):
            os.unlink(private)
    return model


def _flatten(values: np.ndarray, labels: np.ndarray, cand: np.ndarray, max_negatives: int = 0, seed: int = 0):
    """Rows of the valid candidates of users with at least one positive label; with
    `max_negatives`, a seeded sample of that many unlabelled candidates per user
    (all positives kept)."""
    has = (labels > 0).any(axis=1)
    values, labels, cand = values[has], labels[has], cand[has]
    valid = cand >= 0
    if max_negatives:
        rng = np.random.RandomState(seed)
        noise = rng.random_sample(cand.shape)
        negative = valid & (labels == 0)
        noise = np.where(negative, noise, np.inf)
        nth = np.argsort(np.argsort(noise, axis=1, kind="stable"), axis=1, kind="stable")
        valid = (valid & (labels > 0)) | (negative & (nth < max_negatives))
    groups = valid.sum(axis=1)
    return values[valid], labels[valid], groups


def ndcg_at(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray, k: int, binary: bool = True) -> float:
    """Mean nDCG@k over rows with a positive label, candidates ranked by `scores`
    (ideal: the row's own positives among its candidates)."""
    has = ((labels > 0) & valid).any(axis=1)
    if not has.any():
        return 0.0
    s = np.where(valid, scores, -np.inf)[has]
    rel = ((labels > 0) if binary else (2.0 ** labels - 1))[has].astype(np.float64) * valid[has]
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.take_along_axis(rel, order, 1) * disc[:order.shape[1]]).sum(axis=1)
    ideal = (-np.sort(-rel, axis=1)[:, :k] * disc[:min(k, rel.shape[1])]).sum(axis=1)
    return float(np.mean(dcg / np.maximum(ideal, 1e-12)))


def train_ranker(values: np.ndarray, labels: np.ndarray, cand: np.ndarray, names: list[str],
                 cfg: RankerConfig, valid_share: float = 0.2, min_labels: int = 50) -> TrainedRanker:
    """LambdaRank on (U, W, F) features with (U, W) graded labels, early-stopped on
    seeded slices of users: one slice (`valid_share`) or, up to `cfg.fold_max_users`
    labelled users, each of `cfg.folds` folds in turn (the fold models summed into one
    booster; valid_ndcg is then out-of-fold over every labelled user). Raises
    ValueError when there are too few labelled users to train (the caller falls back)."""
    has = (labels > 0).any(axis=1)
    n_pos = int((labels > 0).sum())
    if has.sum() < 10 or n_pos < min_labels:
        raise ValueError(f"too few labels to train the re-ranker: {n_pos} labelled candidates of "
                         f"{int(has.sum())} users (need {min_labels} and 10 users)")
    rng = np.random.RandomState(cfg.seed)
    users = np.flatnonzero(has)
    folds = cfg.folds if 2 <= cfg.folds <= len(users) and len(users) <= cfg.fold_max_users else 1
    if folds == 1:
        slices = [rng.choice(users, max(1, int(round(valid_share * len(users)))), replace=False)]
    else:
        slices = np.array_split(rng.permutation(users), folds)
    boosters, rounds, params = [], [], None
    scores = np.zeros(labels.shape, np.float32)  # each slice's users, scored by the model that did not train on them
    is_valid = np.zeros(len(labels), bool)
    for f, held_out in enumerate(slices):
        fold_valid = np.zeros(len(labels), bool)
        fold_valid[held_out] = True
        booster, best, params = _fit(values[has & ~fold_valid], labels[has & ~fold_valid], cand[has & ~fold_valid],
                                     values[fold_valid], labels[fold_valid], cand[fold_valid], names, cfg, cfg.seed + f)
        boosters.append(booster)
        rounds.append(best)
        vv = cand[fold_valid] >= 0
        scores[fold_valid] = TrainedRanker(booster, names, best, 0.0, 0.0, 0, 0, params).score(values[fold_valid], vv)
        is_valid |= fold_valid
    if folds == 1:
        trained, booster, best = has & ~is_valid, boosters[0], rounds[0]
    else:  # every labelled user trained (in all folds but its own)
        trained, booster, best = has, sum_boosters(boosters, rounds), int(sum(rounds))
        params = {**params, "seed": cfg.seed, "folds": folds, "fold_rounds": rounds}
    model = TrainedRanker(booster, names, best, 0.0, 0.0, int(trained.sum()), int((labels[trained] > 0).sum()), params)
    vv = cand[is_valid] >= 0
    model.valid_ndcg = ndcg_at(scores[is_valid], labels[is_valid], vv, cfg.eval_at)
    model.valid_ndcg_retrieval = ndcg_at(values[is_valid][..., names.index(RETRIEVAL_SCORE)], labels[is_valid],
                                         vv, cfg.eval_at)
    return model


def _fit(train_values, train_labels, train_cand, valid_values, valid_labels, valid_cand, names: list[str],
         cfg: RankerConfig, seed: int):
    """(booster, its early-stopped round count, params) of one LambdaRank fit."""
    import lightgbm as lgb

    xt, yt, gt = _flatten(train_values, train_labels, train_cand, cfg.max_negatives, seed)
    xv, yv, gv = _flatten(valid_values, valid_labels, valid_cand)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [cfg.eval_at],
              "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate,
              "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": cfg.feature_fraction,
              "lambdarank_truncation_level": cfg.lambdarank_truncation, "seed": seed,
              # graded but gently (a view is already a hit): purchase 3 > cart 2 > click 1.5 > view 1
              "label_gain": list(LABEL_GAIN),
              "deterministic": True, "force_row_wise": True, "num_threads": cfg.num_threads, "verbose": -1}
    dtrain = lgb.Dataset(xt, yt, group=gt, feature_name=names, free_raw_data=False)
    dvalid = lgb.Dataset(xv, yv, group=gv, reference=dtrain, free_raw_data=False)
    booster = lgb.train(params, dtrain, num_boost_round=cfg.num_rounds, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    return booster, int(booster.best_iteration or cfg.num_rounds), params


def sum_boosters(boosters: list, rounds: list[int]):
    """One LightGBM booster whose score is the sum of `boosters`' (each cut at its
    `rounds`): their trees, renumbered, under the first one's header. A sum ranks as
    the mean does, and its feature contributions (pred_contrib) and gains stay exact."""
    import lightgbm as lgb

    header, tail, trees = None, None, []
    for booster, n in zip(boosters, rounds):
        text = booster.model_to_string(num_iteration=n)
        head, rest = text.split("\nTree=", 1)
        body, end = rest.split("\nend of trees", 1)
        if header is None:
            header, tail = head, "\nend of trees" + end
        for block in ("Tree=" + body).split("\nTree="):
            trees.append(block.split("\n", 1)[1])  # drop its "Tree=N" line
    # tree_sizes (byte sizes for a parallel load) no longer hold: without it the model loads sequentially
    header = "\n".join(line for line in header.split("\n") if not line.startswith("tree_sizes="))
    return lgb.Booster(model_str=header + "\n" + "".join(f"\nTree={i}\n{t}" for i, t in enumerate(trees)) + tail)


def blend(scores: np.ndarray, retrieval: np.ndarray, valid: np.ndarray, weight: float) -> np.ndarray:
    """z(scores) + weight * z(retrieval), z standardising each row over its valid
    candidates; weight 0 returns `scores` itself (the model alone)."""
    if weight == 0:
        return scores

    def z(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        n = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        mean = np.where(valid, a, 0).sum(axis=1, keepdims=True) / n
        sd = np.sqrt(np.where(valid, (a - mean) ** 2, 0).sum(axis=1, keepdims=True) / n)
        return (a - mean) / np.where(sd > 0, sd, 1.0)

    return (z(scores) + weight * z(retrieval)).astype(np.float32)


def rerank_order(scores: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, k) positions (-1 pad) and their scores, best first, ties by candidate order."""
    s = np.where(cand >= 0, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(cand, order, 1)
    top_s = np.take_along_axis(s, order, 1)
    return np.where(np.isfinite(top_s), top, -1), np.where(np.isfinite(top_s), top_s, 0), order
