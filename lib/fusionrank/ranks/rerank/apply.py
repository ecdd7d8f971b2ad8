"""The re-ranker inside the rank pass (executors): one batch of users' ANN results ->
the same matrices re-ordered by the model. Pure numpy/Arrow, no Spark.

The artifact (`ranker.MODEL_FILE`, `META_FILE`, `STATS_FILE`) is loaded once per
Python worker. Item stats are aligned to the index positions of the night's index
(the trainer built them from that index's ids)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusionrank.core import uri as uris
from fusionrank.index.build import arrow_vectors
from fusionrank.profiles import interests as multi
from fusionrank.ranks.rerank import features as fx
from fusionrank.ranks.rerank import ranker as rk
from fusionrank.storage import fs

log = logging.getLogger("fusionrank.rank")

_LOCK = threading.Lock()
_LOADED: dict = {}


@dataclass
class LoadedReranker:
    model: rk.TrainedRanker
    stats: fx.ItemStats
    meta: dict

    @property
    def candidates(self) -> int:
        return int(self.meta["candidates"])


def load_reranker(folder: str | Path, compiled: bool = True) -> LoadedReranker:
    """The re-ranker artifact at `folder` (a URI: copied once per host to local
    scratch, keyed by what is stored), loaded once per Python worker. `compiled`
    (rerank.compiled): its trees predict as native code (ranker.compile_trees, once
    per host), else through LightGBM; without lleaves it says so and uses LightGBM."""
    stored = str(folder)
    if not fs.exists(uris.join(stored, rk.META_FILE)):
        raise FileNotFoundError(f"no re-ranker at {stored} (missing {rk.META_FILE})")
    signature = fs.signature(stored)
    folder = Path(fs.local_copy(stored, "reranker-" + signature))
    meta_path = folder / rk.META_FILE
    key = (stored, signature, compiled)
    with _LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            meta = json.loads(meta_path.read_text())
            with np.load(folder / rk.STATS_FILE) as arrays:
                stats = fx.ItemStats.from_arrays(dict(arrays))
            model = rk.load_ranker(folder)
            model.params["num_threads"] = 1  # inside a Spark task: one core
            if compiled:
                try:
                    model.compiled = rk.compile_trees(folder / rk.MODEL_FILE, fs.cache_root())
                except (ImportError, RuntimeError, OSError) as err:  # no lleaves, or LLVM failed here
                    log.warning("rank: re-ranker not compiled (%s: %s); predicting with LightGBM (the same "
                                "scores, slower)", type(err).__name__, err)
            loaded = LoadedReranker(model, stats, meta)
            _LOADED.clear()
            _LOADED[key] = loaded
    return loaded


def _lists(column: pa.Array, limit: int):
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return rows, values, lambda v, fill=-1: fx.pad_lists(rows, v, len(lengths), limit, fill)


def user_batch(index, chunk: pa.RecordBatch, history: int, recent: int) -> fx.UserBatch:
    """A UserBatch from the rank pass's columns: profile_vec, history_item_ids,
    history_weights, seen, recent_item_ids, type_mix."""
    n = chunk.num_rows
    profile = arrow_vectors(chunk, "profile_vec", index.index.d)
    rows, ids, pad = _lists(chunk.column("history_item_ids"), history)
    _, weights, _ = _lists(chunk.column("history_weights"), history)
    hist = pad(index.position_of(ids) if len(ids) else np.zeros(0, np.int64))
    hist_w = pad(np.asarray(weights, np.float32), 0.0)
    hist_w = np.where(hist >= 0, hist_w, 0.0).astype(np.float32)
    names = chunk.schema.names
    if "recent_item_ids" in names:
        _, rids, rpad = _lists(chunk.column("recent_item_ids"), recent)
        rec = rpad(index.position_of(rids) if len(rids) else np.zeros(0, np.int64))
    else:
        rec = np.full((n, 1), -1, np.int64)
    mix = np.zeros((n, len(fx.EVENT_TYPES)), np.float32)
    if "type_mix" in names:
        _, mvals, mpad = _lists(chunk.column("type_mix"), len(fx.EVENT_TYPES))
        mix = mpad(np.asarray(mvals, np.float32), 0.0)
    srows, sids, _ = _lists(chunk.column("seen"), None)
    spos = index.position_of(sids) if len(sids) else np.zeros(0, np.int64)
    return fx.UserBatch(profile=profile, hist=hist, hist_w=hist_w, recent=rec, type_mix=mix,
                        seen_rows=srows[spos >= 0], seen_items=spos[spos >= 0])


def history_vectors(index, users: fx.UserBatch) -> np.ndarray:
    """(U, H, d) the index's vectors of the users' history positions (padding: item 0's)."""
    return index.reconstruct(np.maximum(users.hist, 0).ravel()).reshape(users.hist.shape[0], users.hist.shape[1], -1)


def with_interests(index, users: fx.UserBatch, behaviour_dim: int, n_interests: int, per_interest: int,
                   vectors: np.ndarray | None = None) -> np.ndarray | None:
    """Sets `users.interests` (profiles.interests vectors from the history) and returns
    their ANN candidates (`fx.interest_ann`); None with one interest, which leaves the
    batch as it was. Training (nightly._batches) and the rank pass call it alike."""
    if n_interests <= 1 or per_interest <= 0:
        return None
    set_interests(index, users, behaviour_dim, n_interests, vectors)
    return fx.interest_ann(index.search, users, per_interest, int(index.index.ntotal))


def set_interests(index, users: fx.UserBatch, behaviour_dim: int, n_interests: int,
                  vectors: np.ndarray | None = None) -> None:
    if n_interests > 1:
        vectors = history_vectors(index, users) if vectors is None else vectors
        users.interests = multi.interest_vectors(users.hist, users.hist_w, vectors, behaviour_dim, n_interests)


def search_candidates(index, users: fx.UserBatch, candidates: int) -> np.ndarray:
    """(U, A) the index's results for the users' profiles, deep enough that each user
    has `candidates` unseen ones (fx.candidates keeps exactly those, `ann_limit`)."""
    seen_counts = np.bincount(users.seen_rows, minlength=users.n) if len(users.seen_rows) else np.zeros(users.n, int)
    fetch = min(int(index.index.ntotal), candidates + int(seen_counts.max(initial=0)))
    _, positions = index.search(users.profile, fetch)
    return np.where(positions >= 0, positions, -1).astype(np.int64)


def featurize(index, rr_meta: dict, stats: fx.ItemStats, ann: np.ndarray, users: fx.UserBatch,
              include: np.ndarray | None = None):
    """(candidates, source flags, features) of a batch. `include` (one user's
    positions): those its candidates lack are added, flagged as the index's."""
    # Artifacts saved before interests existed: one (the single profile).
    interest = with_interests(index, users, int(rr_meta["behaviour_dim"]), int(rr_meta.get("interests", 1)),
                              int(rr_meta.get("interest_candidates", 0)))
    cand, flags = fx.candidates(ann, users, stats, int(rr_meta["cooc_candidates"]),
                                int(rr_meta["trending_candidates"]), interest=interest,
                                ann_limit=int(rr_meta["candidates"]))
    if include is not None:
        keep = cand[0] >= 0
        missing = np.setdiff1d(include[include >= 0], cand[0][keep])
        cand = np.concatenate([cand[0][keep], missing])[None, :]
        flags = np.concatenate([flags[0][keep], np.full(len(missing), fx.FROM_ANN, flags.dtype)])[None, :]
    feats = fx.compute_features(cand, flags, users, stats, index.reconstruct, int(rr_meta["behaviour_dim"]))
    return cand, flags, feats


def rerank_chunk(index, rr: LoadedReranker, chunk: pa.RecordBatch, positions: np.ndarray, history: int = 50,
                 recent: int = 5, rows_per_pass: int = 128) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(scores, positions, (sources, co-occurring recent item)), each (n, W), best
    first by the model (-1 pad): the ANN results `positions` of the users in `chunk`
    re-ranked with the extra candidates. `rows_per_pass` users at a time bound the
    (users x candidates x dim) working set; they are taken in order of history length,
    as the attention features' arrays are as wide as a pass's longest history."""
    history = int(rr.meta.get("history", history))
    lengths = pc.fill_null(pc.list_value_length(chunk.column("history_item_ids")), 0).to_numpy(zero_copy_only=False)
    by_length = np.argsort(np.minimum(lengths, history), kind="stable")
    chunk, positions = chunk.take(pa.array(by_length)), positions[by_length]
    parts = []
    for start in range(0, chunk.num_rows, rows_per_pass):
        part = chunk.slice(start, rows_per_pass)
        users = user_batch(index, part, history, int(rr.meta.get("recent", recent)))
        ann = np.where(positions[start:start + rows_per_pass] >= 0, positions[start:start + rows_per_pass], -1)
        cand, flags, feats = featurize(index, rr.meta, rr.stats, ann.astype(np.int64), users)
        if feats.names != rr.model.names:
            raise ValueError(f"re-ranker expects features {rr.model.names}, the rank pass computes {feats.names}")
        scores = rr.model.score(feats.values, cand >= 0)
        weight = float(rr.meta.get("retrieval_blend", 0.0))  # older artifacts: the model alone
        if weight:
            scores = rk.blend(scores, feats.values[..., feats.names.index(fx.RETRIEVAL_SCORE)], cand >= 0, weight)
        top, scores, order = rk.rerank_order(scores, cand, cand.shape[1])
        parts.append((scores.astype(np.float32), top, np.take_along_axis(flags, order, 1),
                      np.take_along_axis(feats.cooc_reason, order, 1)))
    width = max(p[1].shape[1] for p in parts)

    restore = np.empty_like(by_length)
    restore[by_length] = np.arange(len(by_length))

    def cat(i, fill):  # in the chunk's own row order again
        return np.concatenate([np.pad(p[i], ((0, 0), (0, width - p[i].shape[1])), constant_values=fill)
                               for p in parts])[restore]

    return cat(0, 0.0), cat(1, -1), (cat(2, 0), cat(3, -1))


def source_reasons(index, text: pa.Array, reason_ids: pa.Array, flags: np.ndarray, cooc_item: np.ndarray):
    """Reasons of candidates the index did not retrieve: 'bought together with <recent
    item>' (co-occurrence) or 'trending in your categories' (no reason item). One an
    interest vector retrieved is the index's too: it keeps its history-item reason."""
    retrieved = (flags & (fx.FROM_ANN | fx.FROM_INTEREST)) > 0
    cooc = ~retrieved & ((flags & fx.FROM_COOC) > 0) & (cooc_item >= 0)
    trend = ~retrieved & ~cooc & ((flags & fx.FROM_TREND) > 0)
    if not (cooc.any() or trend.any()):
        return text, reason_ids
    safe = pa.array(np.maximum(cooc_item, 0))
    ids = index.ids_arrow.take(safe).cast(pa.string())
    titles = index.titles.take(safe) if index.titles is not None else pa.nulls(len(cooc_item), pa.string())
    together = pc.binary_join_element_wise("bought together with ", pc.coalesce(titles, ids), "")
    text = pc.if_else(pa.array(cooc), together, pc.if_else(pa.array(trend), "trending in your categories", text))
    reason_ids = pc.if_else(pa.array(cooc), ids, pc.if_else(pa.array(trend), pa.scalar(None, pa.string()),
                                                             reason_ids.cast(pa.string())))
    return text, reason_ids


def explain(index, rr: LoadedReranker, chunk: pa.RecordBatch, item_ids: list[str], top: int = 3) -> dict:
    """{item_id: [(feature, contribution)]}: the `top` features that moved each of one
    user's (`chunk`, one row) items most, by LightGBM's per-feature contributions.

    The features are computed over the user's whole candidate list, searched and built
    as the rank pass does, with any of `item_ids` it lacks added: retrieval_rank and the
    *_rel features depend on that list."""
    users = user_batch(index, chunk.slice(0, 1), int(rr.meta.get("history", 50)), int(rr.meta.get("recent", 5)))
    wanted = index.position_of(np.asarray(item_ids, dtype=object))
    cand, _, feats = featurize(index, rr.meta, rr.stats, search_candidates(index, users, rr.candidates), users,
                               include=wanted)
    column = {int(p): j for j, p in enumerate(cand[0])}
    found = [(item, column[int(p)]) for item, p in zip(item_ids, wanted) if p >= 0]
    if not found:
        return {}
    contrib = rr.model.booster.predict(feats.values[0][[j for _, j in found]], pred_contrib=True)[:, :-1]  # -1: bias
    out = {}
    for (item, _), c in zip(found, contrib):
        order = np.argsort(-np.abs(c), kind="stable")[:top]
        out[item] = [(feats.names[f], float(c[f])) for f in order]
    return out
