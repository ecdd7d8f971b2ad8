"""Retrieval + learned re-ranker against TopPop, EASE and retrieval alone: one table.

Datasets and splits (every row of the table measured in this one run):
  ml-random   MovieLens-100k, Recommenders protocol: per-user random 75/25, seeds 42, 43, 44
  ml-temporal MovieLens-100k, each user's last 20% of events held out
  shop        the synthetic shop (`fusionrank.raw.synth.generate`, 20k items x 20k users,
              60 days, seeds 1 and 2 or --shop-seeds), the last 14 days held out; relevant = items a user
              interacted with in the hold-out and not in training; purchase-only nDCG@10
              counts only the purchased ones. Scored on a seeded sample of 3,000 of the
              users (validation and test alike), the ranker trained on up to 10,000 (as
              rerank.max_train_users) of those with validation labels: the 2-core
              budget; every model sees all events and all items.

Hyperparameters, all of them, are chosen on a validation split carved from the
TRAINING events with the same protocol as the test split (a per-user random 25% /
each user's last 20% / the last 14 days of training): retrieval's (LAE rank, l2,
profile half-life), EASE's lambda and the ranker's (leaves, learning rate; rounds by
early stopping on a user slice of that validation split). The ranker is trained on
features from training-minus-validation and labels from the validation events; at
test time its features come from the whole training split. The test split is
looked at once, for the table.

"retrieval + re-ranker" is what the stage serves: the ranker blended with retrieval
order (z(model) + w z(retrieval score) per user, w from rerank.retrieval_blends, 0: the
model alone), unless its guard (rerank.guard: backtest) rejects it, then retrieval
order. The backtest trains a model one split earlier (features from inner2, labels
from val2, carved from the inner events as val from train) and scores it, at each
blend weight, and retrieval order on the ranker's own training set, which goes
through the same feature shift as the test; the best weight is served.
"re-ranker, never rejected" is the ranker alone (w = 0) whatever the guard says.

Retrieval is today's ranking space computed in-process with numpy (not Spark, to
fit a 2-core machine): the low-rank linear autoencoder of vectors/behaviour.py
(exact eigendecomposition for MovieLens, the same randomized eigensolver for the
shop) and decayed weighted-sum profiles as profiles/build.py; the content part of
the ranking space (weight 0.05, MiniLM) is left out. The re-ranker's text feature
uses a hashed bag of words of title and description instead of MiniLM (same
reason). EASE on the shop is fitted on the 8,000 most interacted training items
(a dense 20k x 20k inverse does not fit the budget); the others score 0 for it.

--interests N (profiles.interests): each user's history is also clustered into up to N
interest vectors (fusionrank.profiles.interests), each retrieving its own
--interest-candidates unseen items (rerank.interest_candidates) for the re-ranker;
"retrieval only" stays the single profile's list.

Usage: python bench/rerank_quality.py [--quick] [--shop-dir DIR] [--shop-seeds 1,2,3,4] [--jobs 2] [--interests 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from fusionrank.core.config import RerankConfig  # noqa: E402
from fusionrank.profiles import interests as multi  # noqa: E402
from fusionrank.ranks.rerank import features as fx  # noqa: E402
from fusionrank.ranks.rerank import ranker as rk  # noqa: E402

K = 10
DAY = 86_400.0
EVENT_WEIGHTS = {"view": 0.25, "click": 0.5, "add_to_cart": 1.5, "purchase": 3.0, "rating": 1.0, "search": 0.0}
RATING_OFFSET, RATING_SCALE = -7.0, 10.0
CANDIDATES = 200
_STAGE = RerankConfig()  # the stage's defaults, owned by the config
BLENDS = tuple(_STAGE.retrieval_blends)
# Fold models summed up to this many labelled users, as the stage (rerank.folds, rerank.fold_max_users)
FOLDS = dict(folds=_STAGE.folds, fold_max_users=_STAGE.fold_max_users)


# -- data ---------------------------------------------------------------------------------------
class Data:
    def __init__(self, events_path: Path, catalog_path: Path):
        rows = [json.loads(line) for line in open(events_path)]
        catalog = [json.loads(line) for line in open(catalog_path)]
        self.item_ids = [c["item_id"] for c in catalog]
        item_code = {x: i for i, x in enumerate(self.item_ids)}
        users = sorted({r["user_id"] for r in rows})
        user_code = {u: i for i, u in enumerate(users)}
        sessions: dict[str, int] = {}
        self.events = fx.Events(
            user=np.array([user_code[r["user_id"]] for r in rows], np.int64),
            item=np.array([item_code.get(r["item_id"], -1) if r["item_id"] else -1 for r in rows], np.int64),
            ts=np.array([int(r["event_ts"]) for r in rows], np.int64),
            kind=np.array([fx.TYPE_CODE[r["event_type"]] for r in rows], np.int8),
            value=np.array([np.nan if r.get("value") is None else float(r["value"]) for r in rows]),
            session=np.array([sessions.setdefault(r["session_id"], len(sessions)) if r.get("session_id") else -1
                              for r in rows], np.int64))
        self.n_users, self.n_items = len(users), len(self.item_ids)
        cats = sorted({c["category"] for c in catalog if c.get("category")})
        brands = sorted({c["brand"] for c in catalog if c.get("brand")})
        self.category = np.array([cats.index(c["category"]) if c.get("category") else -1 for c in catalog])
        self.brand = np.array([brands.index(c["brand"]) if c.get("brand") else -1 for c in catalog])
        self.price = np.array([c["price"] if c.get("price") else np.nan for c in catalog], float)
        self.updated = np.array([dt.datetime.fromisoformat(c["updated_at"].replace("Z", "+00:00")).timestamp()
                                 if c.get("updated_at") else np.nan for c in catalog])
        self.text = hashed_text([f"{c.get('title') or ''} {c.get('description') or ''}" for c in catalog])


def hashed_text(texts: list[str], dim: int = 256) -> np.ndarray:
    out = np.zeros((len(texts), dim), np.float32)
    for i, text in enumerate(texts):
        for token in "".join(ch.lower() if ch.isalnum() else " " for ch in text).split():
            out[i, zlib.crc32(token.encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def event_weights(ev: fx.Events) -> np.ndarray:
    table = np.array([EVENT_WEIGHTS[t] for t in fx.EVENT_TYPES])
    w = table[ev.kind.astype(np.int64)]
    rating = ev.kind == fx.TYPE_CODE["rating"]
    w[rating] *= np.maximum(np.nan_to_num(ev.value[rating], nan=0.0) - RATING_OFFSET, 0) / RATING_SCALE
    return w


# -- splits: (train mask, test mask) over events ---------------------------------------------------
def split(ev: fx.Events, mode: str, seed: int = 42, holdout_days: float = 14) -> np.ndarray:
    """Mask of the held-out events."""
    if mode == "random":
        return rk.label_split(ev, "random", fraction=0.25, seed=seed)
    if mode == "user_last":
        return rk.label_split(ev, "user_last", fraction=0.2)
    return rk.label_split(ev, "days", label_days=holdout_days)


def relevant(train: fx.Events, test: fx.Events, purchase_only: bool = False) -> dict[int, set[int]]:
    seen = set(zip(train.user.tolist(), train.item.tolist()))
    known = set(train.user.tolist())
    out: dict[int, set[int]] = {}
    mask = test.item >= 0
    if purchase_only:
        mask &= test.kind == fx.TYPE_CODE["purchase"]
    for u, i in zip(test.user[mask].tolist(), test.item[mask].tolist()):
        if u in known and (u, i) not in seen:
            out.setdefault(u, set()).add(i)
    return out


def score_lists(recs: dict[int, np.ndarray], rel: dict[int, set[int]]) -> dict[str, float]:
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    nd, rc = [], []
    for u, items in rel.items():
        got = recs.get(u, np.zeros(0, np.int64))[:K]
        hits = np.array([g in items for g in got], float)
        ideal = disc[:min(len(items), K)].sum()
        nd.append(float((hits * disc[:len(hits)]).sum() / ideal))
        rc.append(float(hits.sum() / len(items)))
    return {"ndcg": float(np.mean(nd)), "recall": float(np.mean(rc)), "users": len(rel)}


# -- baselines ---------------------------------------------------------------------------------
def interaction_matrix(ev: fx.Events, n_users: int, n_items: int, weights: np.ndarray | None = None):
    import scipy.sparse as sp

    ok = ev.item >= 0
    w = np.ones(ok.sum()) if weights is None else weights[ok]
    x = sp.csr_matrix((w, (ev.user[ok], ev.item[ok])), shape=(n_users, n_items))
    x.sum_duplicates()
    return x


def top_unseen(scores: np.ndarray, users: np.ndarray, seen, k: int = K) -> dict[int, np.ndarray]:
    s = scores.copy()
    sub = seen[users]
    s[sub.nonzero()] = -np.inf
    top = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    return {int(u): top[i] for i, u in enumerate(users)}


def toppop(train: fx.Events, n_users, n_items, users):
    x = interaction_matrix(train, n_users, n_items)
    x.data[:] = 1
    pop = np.asarray(x.sum(axis=0)).ravel()
    out = {}
    for start in range(0, len(users), 1024):
        u = users[start:start + 1024]
        out.update(top_unseen(np.tile(pop, (len(u), 1)), u, x))
    return out


class Ease:
    def __init__(self, train: fx.Events, n_users: int, n_items: int, max_items: int = 8000):
        x = interaction_matrix(train, n_users, n_items)
        x.data[:] = 1
        self.x = x.tocsr()
        pop = np.asarray(x.sum(axis=0)).ravel()
        self.items = np.sort(np.argsort(-pop, kind="stable")[:max_items])
        xs = self.x[:, self.items]
        self.gram = (xs.T @ xs).toarray().astype(np.float64)
        self.xs = xs

    def recs(self, lam: float, users: np.ndarray) -> dict[int, np.ndarray]:
        import scipy.linalg.lapack as lapack

        # (XᵀX + λI)⁻¹ through its Cholesky factor (a third of a general inverse's work)
        g = (self.gram + lam * np.eye(len(self.items))).astype(np.float32)
        factor, info = lapack.spotrf(g, lower=0)
        inv, info2 = lapack.spotri(factor, lower=0)
        if info or info2:
            raise RuntimeError(f"EASE: Cholesky failed ({info}, {info2})")
        inv = np.triu(inv) + np.triu(inv, 1).T
        b = -inv / np.diag(inv)
        np.fill_diagonal(b, 0.0)
        out = {}
        for start in range(0, len(users), 1024):
            u = users[start:start + 1024]
            s = np.zeros((len(u), self.x.shape[1]))
            s[:, self.items] = self.xs[u] @ b
            s[:, np.setdiff1d(np.arange(self.x.shape[1]), self.items)] = -1e9
            out.update(top_unseen(s, u, self.x))
        return out


# -- retrieval: LAE + weighted-sum profiles --------------------------------------------------------
class Lae:
    """Eigenvectors of the weighted Gram XᵀX (exact below 5,000 items, randomized above)."""

    def __init__(self, train: fx.Events, n_users: int, n_items: int, max_rank: int, seed: int = 42):
        self.x = interaction_matrix(train, n_users, n_items, event_weights(train)).tocsr()
        self.n_users, self.n_items = n_users, n_items
        if n_items <= 5000:
            import scipy.linalg

            gram = (self.x.T @ self.x).toarray()
            vals, vecs = scipy.linalg.eigh(gram, subset_by_index=[max(n_items - max_rank, 0), n_items - 1])
            order = np.argsort(-vals)[:max_rank]
        else:
            rng = np.random.default_rng(seed)
            z = rng.standard_normal((n_items, max_rank + 44))
            for _ in range(3):
                z, _ = np.linalg.qr(self.x.T @ (self.x @ z))
            y = self.x @ z
            vals, small = np.linalg.eigh(y.T @ y)
            vecs = z @ small
            order = np.argsort(-vals)[:max_rank]
        self.vals, self.vecs = vals[order], vecs[:, order]
        self.train = train

    def item_vectors(self, rank: int, l2: float) -> np.ndarray:
        lam = np.maximum(self.vals[:rank], 0)
        return (self.vecs[:, :rank] * np.sqrt(lam / (lam + l2))).astype(np.float32)

    def profiles(self, half_life: float | None) -> "object":
        ev = self.train
        w = event_weights(ev)
        if half_life:
            last = np.zeros(self.n_users)
            np.maximum.at(last, ev.user, ev.ts.astype(float))
            w = w * 2.0 ** (-(last[ev.user] - ev.ts) / DAY / half_life)
        return interaction_matrix(ev, self.n_users, self.n_items, w).tocsr()


def retrieval_topn(profile_x, vectors: np.ndarray, seen, users: np.ndarray, n: int):
    """(users, n) top unseen positions by profile · vector, and the profiles."""
    prof = np.asarray(profile_x[users] @ vectors, np.float32)
    out = np.zeros((len(users), n), np.int64)
    for start in range(0, len(users), 2048):
        s = prof[start:start + 2048] @ vectors.T
        sub = seen[users[start:start + 2048]]
        s[sub.nonzero()] = -np.inf
        top = np.argpartition(-s, n, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        out[start:start + 2048] = np.take_along_axis(top, order, 1)
    return out, prof


def exact_search(vectors: np.ndarray):
    """search(queries, k) -> (scores, positions), best first, as LoadedIndex.search."""
    def search(queries, k):
        s = queries @ vectors.T
        k = min(k, s.shape[1])
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        return np.take_along_axis(s, top, 1), top
    return search


# -- one dataset split ----------------------------------------------------------------------------
class Split:
    """Everything the re-ranker needs of a (train, target) pair."""

    def __init__(self, data: Data, train: fx.Events, lae: Lae, rank: int, l2: float, half_life, users,
                 interests: int = 1, interest_candidates: int = 50):
        self.data, self.train = data, train
        self.interests, self.interest_candidates = interests, interest_candidates
        self.vectors = lae.item_vectors(rank, l2)
        self.profile_x = lae.profiles(half_life)
        seen = interaction_matrix(train, data.n_users, data.n_items)
        self.seen = seen.tocsr()
        self.users = users
        self.ann, self.prof = retrieval_topn(self.profile_x, self.vectors, self.seen, users, CANDIDATES)
        self.stats = fx.item_stats(train, data.n_items, float(train.ts.max()) + 1, data.category, data.brand,
                                   data.price, data.updated)

    def batches(self, size: int = 512):
        tv = self.data.text
        grouped = fx.EventsByUser(self.train)  # as nightly._batches: each batch takes its users' rows
        for start in range(0, len(self.users), size):
            u = self.users[start:start + size]
            ub = fx.user_batch_from_events(grouped, u, self.prof[start:start + size], event_weights,
                                           text_vectors=tv)
            extra = None
            if self.interests > 1:  # as apply.with_interests: the space is all behaviour (plain sums)
                hist_vectors = self.vectors[np.maximum(ub.hist, 0)]
                ub.interests = multi.interest_vectors(ub.hist, ub.hist_w, hist_vectors, self.vectors.shape[1],
                                                      self.interests)
                extra = fx.interest_ann(exact_search(self.vectors), ub, self.interest_candidates, len(self.vectors))
            cand, flags = fx.candidates(self.ann[start:start + size], ub, self.stats, interest=extra)
            feats = fx.compute_features(cand, flags, ub, self.stats, lambda p: self.vectors[p],
                                        text=lambda p: tv[p])
            yield u, cand, feats


def featurize(sp: Split, label_ev: fx.Events | None):
    values, labels, cands, names = [], [], [], None
    lu, li, lg = rk.grades(label_ev) if label_ev is not None else (None, None, None)
    width = 0
    for u, cand, feats in sp.batches():
        values.append(feats.values)
        cands.append(cand)
        names = feats.names
        width = max(width, cand.shape[1])
        if label_ev is not None:
            labels.append(rk.label_matrix(cand, u, lu, li, lg))
    def pad(arrs, fill):
        out = []
        for a in arrs:
            extra = width - a.shape[1]
            if extra:
                shape = list(a.shape)
                shape[1] = extra
                a = np.concatenate([a, np.full(shape, fill, a.dtype)], axis=1)
            out.append(a)
        return np.concatenate(out)
    return (pad(values, 0), pad(labels, 0) if labels else None, pad(cands, -1), names)


def pick_retrieval(data: Data, inner: fx.Events, v_users: np.ndarray, val_rel: dict, ranks, l2s, half_lives):
    """(the LAE of `inner`, rank, l2, half-life): retrieval's hyperparameters with the
    best nDCG@10 on the validation users."""
    lae = Lae(inner, data.n_users, data.n_items, max(ranks))
    seen = interaction_matrix(inner, data.n_users, data.n_items).tocsr()
    best = None
    for rank in ranks:
        for l2 in l2s:
            vecs = lae.item_vectors(rank, l2)
            for hl in half_lives:
                top, _ = retrieval_topn(lae.profiles(hl), vecs, seen, v_users, K)
                s = score_lists({int(u): top[i] for i, u in enumerate(v_users)}, val_rel)["ndcg"]
                if best is None or s > best[0]:
                    best = (s, rank, l2, hl)
    return (lae, *best[1:])


def earlier_split(inner: fx.Events, val_mode: str, seed: int, max_users: int):
    """(inner2, val2, labelled users): the backtest's split, carved from `inner` as val
    was from training, and a seeded sample of at most `max_users` of its users."""
    v2mask = split(inner, val_mode, seed=seed + 2000)
    inner2, val2 = inner.take(~v2mask), inner.take(v2mask)
    users = np.array(sorted(relevant(inner2, val2)), np.int64)
    if len(users) > max_users:
        users = np.sort(np.random.RandomState(seed + 3).choice(users, max_users, False))
    return inner2, val2, users


def run_dataset(name: str, data: Data, test_mask: np.ndarray, val_mode: str, ranks, l2s, half_lives, lams,
                leaves_grid, max_train_users: int, seed: int = 42, max_eval_users: int = 0, interests: int = 1,
                interest_candidates: int = 50, log=print):
    started = time.perf_counter()
    ev = data.events
    train, test = ev.take(~test_mask), ev.take(test_mask)
    vmask = split(train, val_mode, seed=seed + 1000)
    inner, val = train.take(~vmask), train.take(vmask)
    val_rel = relevant(inner, val)
    v_users = np.array(sorted(val_rel), np.int64)
    labelled_users = v_users  # the ranker trains on a sample of all of them, not only the scored ones
    if max_eval_users and len(v_users) > max_eval_users:  # a seeded sample of users is scored
        v_users = np.sort(np.random.RandomState(seed + 1).choice(v_users, max_eval_users, replace=False))
        val_rel = {int(u): val_rel[int(u)] for u in v_users}

    lae_inner, rank, l2, hl = pick_retrieval(data, inner, v_users, val_rel, ranks, l2s, half_lives)
    # EASE lambda on validation
    ease_inner = Ease(inner, data.n_users, data.n_items)
    lam = max(lams, key=lambda lm: score_lists(ease_inner.recs(lm, v_users), val_rel)["ndcg"])
    del ease_inner

    # ranker: features from inner, labels from val
    rng = np.random.RandomState(seed)
    t_users = labelled_users if len(labelled_users) <= max_train_users else \
        np.sort(rng.choice(labelled_users, max_train_users, False))
    multi_args = dict(interests=interests, interest_candidates=interest_candidates)
    sp = Split(data, inner, lae_inner, rank, l2, hl, t_users, **multi_args)
    values, labels, cands, names = featurize(sp, val)
    best_model = None
    for leaves, lr in leaves_grid:
        model = rk.train_ranker(values, labels, cands, names,
                                rk.RankerConfig(num_leaves=leaves, learning_rate=lr, seed=seed, **FOLDS))
        if best_model is None or model.valid_ndcg > best_model.valid_ndcg:
            best_model = model
    model = best_model
    # The stage's guard (rerank.guard: backtest): a model trained one split earlier
    # (features from inner2, labels val2, carved from inner as val from train) scored on
    # the training set above goes through the same feature shift as the test.
    inner2, val2, b_users = earlier_split(inner, val_mode, seed, max_train_users)
    sp2 = Split(data, inner2, Lae(inner2, data.n_users, data.n_items, rank), rank, l2, hl, b_users, **multi_args)
    v2, l2_, c2, _ = featurize(sp2, val2)
    early = rk.train_ranker(v2, l2_, c2, names, rk.RankerConfig(num_leaves=model.params["num_leaves"],
                                                                learning_rate=model.params["learning_rate"], seed=seed,
                                                                **FOLDS))
    del v2, l2_, c2, sp2
    # The blend weight of retrieval order (rerank.retrieval_blends) is the backtest's best, as in the stage.
    early_scores, early_retrieval = early.score(values, cands >= 0), values[..., names.index(fx.RETRIEVAL_SCORE)]
    by_blend = {w: rk.ndcg_at(rk.blend(early_scores, early_retrieval, cands >= 0, w), labels, cands >= 0, K)
                for w in BLENDS}
    weight = max(by_blend, key=lambda w: (by_blend[w], -w))
    backtest = (by_blend[weight], rk.ndcg_at(early_retrieval, labels, cands >= 0, K))
    del values, labels, cands, sp, lae_inner

    # test
    rel = relevant(train, test)
    rel_buy = relevant(train, test, purchase_only=True)
    users = np.array(sorted(set(rel) | set(rel_buy)), np.int64)
    if max_eval_users and len(users) > max_eval_users:
        users = np.sort(np.random.RandomState(seed + 2).choice(users, max_eval_users, replace=False))
        rel = {u: rel[u] for u in users.tolist() if u in rel}
        rel_buy = {u: rel_buy[u] for u in users.tolist() if u in rel_buy}
    lae = Lae(train, data.n_users, data.n_items, max(ranks))
    sp = Split(data, train, lae, rank, l2, hl, users, **multi_args)
    retrieval = {int(u): sp.ann[i, :K] for i, u in enumerate(users)}
    unguarded, blended = {}, {}
    r_col = names.index(fx.RETRIEVAL_SCORE)
    for u, cand, feats in sp.batches():
        scores = model.score(feats.values, cand >= 0)
        top, _, _ = rk.rerank_order(scores, cand, K)
        unguarded.update({int(x): top[i] for i, x in enumerate(u)})
        top, _, _ = rk.rerank_order(rk.blend(scores, feats.values[..., r_col], cand >= 0, weight), cand, K)
        blended.update({int(x): top[i] for i, x in enumerate(u)})
    # As the nightly stage: a model (blended at the backtest's weight) that does not beat
    # retrieval order on the backtest (rerank.min_valid_gain 0) is rejected and the
    # night ranks in retrieval order.
    rejected = not backtest[0] > backtest[1]
    reranked = retrieval if rejected else blended
    ease = Ease(train, data.n_users, data.n_items).recs(lam, users)
    pop = toppop(train, data.n_users, data.n_items, users)
    rows = {}
    for label, recs in (("TopPop", pop), (f"EASE", ease), ("retrieval only", retrieval),
                        ("retrieval + re-ranker", reranked), ("re-ranker, never rejected", unguarded)):
        rows[label] = {**score_lists(recs, rel), "buy_ndcg": score_lists(recs, rel_buy)["ndcg"] if rel_buy else None}
    info = {"interests": interests, "lae_rank": rank, "lae_l2": l2, "half_life": hl, "ease_lambda": lam,
            "ranker_leaves": model.params["num_leaves"], "ranker_lr": model.params["learning_rate"],
            "ranker_rounds": model.best_iteration,
            "ranker_folds": model.params.get("fold_rounds", 1), "ranker_valid_ndcg": round(model.valid_ndcg, 4),
            "retrieval_valid_ndcg_on_slice": round(model.valid_ndcg_retrieval, 4), "ranker_rejected": rejected,
            "backtest_ndcg": round(backtest[0], 4), "backtest_ndcg_retrieval": round(backtest[1], 4),
            "retrieval_blend": weight, "backtest_by_blend": {str(w): round(v, 4) for w, v in by_blend.items()},
            "train_users": model.n_users, "seconds": round(time.perf_counter() - started, 1),
            "top_gain": list(model.gains())[:6]}
    log(f"  {name}: {json.dumps(info)}", flush=True)
    log(f"  {name} rows: {json.dumps({m: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for m, r in rows.items()})}",
        flush=True)
    return rows, info


_DATA: dict = {}


def _task(task):
    dataset, label, (kind, path), mode, seed, grid = task
    if (kind, path) not in _DATA:
        folder = Path(path)
        _DATA[(kind, path)] = Data(folder / "events.jsonl", folder / "catalog.jsonl")
    data = _DATA[(kind, path)]
    print(f"{label}: {len(data.events):,} events, {data.n_users} users, {data.n_items} items", flush=True)
    return run_dataset(label, data, split(data.events, mode, seed=seed), mode, seed=seed, **grid)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=ROOT / "data" / "raw" / "movielens-100k")
    parser.add_argument("--shop-dir", type=Path, default=Path("/tmp/fr-rerank-shop"))
    parser.add_argument("--shop-items", type=int, default=20000)
    parser.add_argument("--shop-users", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="smaller grids, one ML seed, a 4k x 4k shop")
    parser.add_argument("--only", default="", help="comma list of ml-random, ml-temporal, shop")
    parser.add_argument("--jobs", type=int, default=1, help="datasets run in this many processes")
    parser.add_argument("--train-users", type=int, default=0,
                        help="users the shop's ranker trains on (default 10,000 as rerank.max_train_users; MovieLens: all)")
    parser.add_argument("--shop-seeds", default="1,2", help="comma list of synthetic shop seeds")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--interests", type=int, default=1,
                        help="interest vectors per user for the re-ranker's candidates (profiles.interests)")
    parser.add_argument("--interest-candidates", type=int, default=50,
                        help="unseen candidates per interest vector (rerank.interest_candidates)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    only = set(filter(None, args.only.split(",")))
    from fusionrank.raw.adapters import fetch_movielens_100k

    results: dict[str, list] = {}
    ml_grid = dict(ranks=[64, 128, 256], l2s=[100.0, 300.0, 1000.0], half_lives=[None, 30.0],
                   lams=[100.0, 300.0, 500.0, 1000.0], leaves_grid=[(15, 0.05), (63, 0.05)], max_train_users=5000)
    shop_grid = dict(ranks=[256], l2s=[30.0, 100.0, 300.0], half_lives=[None, 30.0],
                     lams=[100.0, 500.0, 2000.0], leaves_grid=[(15, 0.05), (63, 0.05)], max_train_users=10000,
                     max_eval_users=3000)
    if args.quick:
        ml_grid.update(ranks=[64, 256], l2s=[300.0], half_lives=[None], lams=[500.0], leaves_grid=[(31, 0.05)])
        shop_grid.update(ranks=[128], l2s=[100.0], half_lives=[30.0], lams=[500.0], leaves_grid=[(31, 0.05)],
                         max_train_users=2000, max_eval_users=2000)
    if args.train_users:
        shop_grid["max_train_users"] = args.train_users
    for grid in (ml_grid, shop_grid):
        grid.update(interests=args.interests, interest_candidates=args.interest_candidates)
    # (dataset, label, data source, split mode, seed, grid): independent tasks, run in
    # `--jobs` processes (each loads its own data).
    tasks = []
    if not only or only & {"ml-random", "ml-temporal"}:
        fetch_movielens_100k(args.movielens)
        if not only or "ml-random" in only:
            for seed in ([42] if args.quick else [42, 43, 44]):
                tasks.append(("ml-random", f"ml-random seed {seed}", ("ml", str(args.movielens)), "random", seed,
                              ml_grid))
        if not only or "ml-temporal" in only:
            tasks.append(("ml-temporal", "ml-temporal", ("ml", str(args.movielens)), "user_last", 42, ml_grid))
    if not only or "shop" in only:
        from fusionrank.raw.synth import generate

        items, users = (4000, 4000) if args.quick else (args.shop_items, args.shop_users)
        for seed in ([1] if args.quick else [int(x) for x in args.shop_seeds.split(",")]):
            folder = args.shop_dir / f"items{items}-users{users}-seed{seed}"
            if not (folder / "synth.json").exists():
                generate(folder, items=items, users=users, days=60, seed=seed, images="none")
            tasks.insert(0, ("shop", f"shop seed {seed}", ("shop", str(folder)), "days", seed, shop_grid))
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            outputs = pool.map(_task, tasks, chunksize=1)
    else:
        outputs = [_task(t) for t in tasks]
    for (dataset, *_), out in sorted(zip(tasks, outputs), key=lambda t: t[0][1]):
        results.setdefault(dataset, []).append(out)
    order = ["ml-random", "ml-temporal", "shop"]
    results = {d: results[d] for d in order if d in results}

    print()
    if args.interests > 1:
        print(f"The re-ranker's candidates include {args.interest_candidates} per interest vector, up to "
              f"{args.interests} per user (profiles.interests).")
    print("All hyperparameters (LAE rank/l2/half-life, EASE lambda, ranker leaves/learning rate/rounds) were chosen "
          "on a validation split carved from the training events only; the test split was scored once.")
    print(f"| dataset | method | nDCG@{K} | spread | Recall@{K} | purchase nDCG@{K} | vs retrieval |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for dataset, runs in results.items():
        for method in ("TopPop", "EASE", "retrieval only", "retrieval + re-ranker", "re-ranker, never rejected"):
            nd = np.array([r[method]["ndcg"] for r, _ in runs])
            rc = np.array([r[method]["recall"] for r, _ in runs])
            buy = [r[method]["buy_ndcg"] for r, _ in runs if r[method]["buy_ndcg"] is not None]
            base = np.mean([r["retrieval only"]["ndcg"] for r, _ in runs])
            spread = f"{nd.min():.4f}-{nd.max():.4f}" if len(nd) > 1 else "-"
            buy_s = f"{np.mean(buy):.4f}" if dataset == "shop" and buy else "-"
            print(f"| {dataset} (x{len(runs)}) | {method} | {nd.mean():.4f} | {spread} | {rc.mean():.4f} | {buy_s} | "
                  f"{(nd.mean() / base - 1) * 100:+.1f}% |")
            summary[f"{dataset}/{method}"] = {"ndcg": nd.tolist(), "recall": rc.tolist(), "buy_ndcg": buy}
    for dataset, runs in results.items():
        per_seed = [(r["retrieval + re-ranker"]["ndcg"], r["EASE"]["ndcg"], r["retrieval only"]["ndcg"])
                    for r, _ in runs]
        print(f"{dataset} per seed (re-ranker as served / EASE / retrieval): "
              + ", ".join(f"{a:.4f}/{b:.4f}/{c:.4f}" for a, b, c in per_seed))
    for dataset, runs in results.items():
        print(f"{dataset}: re-ranker rejected by the backtest guard in {sum(i['ranker_rejected'] for _, i in runs)} "
              f"of {len(runs)} runs")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "info": {d: [i for _, i in runs]
                                                                        for d, runs in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
