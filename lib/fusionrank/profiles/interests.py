"""Multi-interest profiles (`profiles.interests`): a user's history split into up to N
clusters, each pooled like the single profile, so a user who likes two unrelated
things retrieves candidates near each instead of near their average.

Pure numpy over a batch of users (no per-user Python): the rank pass computes them on
the executors from the profile's history columns and the index's vectors, and the
re-ranker's trainer and bench on the driver from the same arrays. user_profiles keeps
its one vector.

The clustering is a weighted spherical k-means of the history's unit vectors,
deterministic (no random numbers, ties to the lower slot or interest):
- init: the heaviest item, then repeatedly the item with the largest weight x cosine
  distance to the nearest chosen centre (farthest-point, weighted so that a one-off
  light item far from everything does not become an interest of its own); no more
  centres once every item coincides with one (fewer distinct items than N: fewer
  interests, zero rows after them);
- `iterations` rounds of: each item to its most similar centre, each centre the
  normalised weighted sum of its items' unit vectors.
Each interest vector is then pooled from its items exactly as the single profile is
from all of them (`pool`): the behaviour part a plain weighted sum, the content part
L2-normalised. Interests are ordered by their share of the history weight, heaviest
first; with one interest the vector is the single profile.
"""

from __future__ import annotations

import numpy as np

# Cosine distance below which a candidate centre coincides with a chosen one.
_SAME = 1e-6


def pool(vectors: np.ndarray, weights: np.ndarray, behaviour_dim: int) -> np.ndarray:
    """(..., d) profiles: sum over axis -2 of `vectors` (..., H, d) x `weights` (..., H)
    (0 for padding), the content part (after `behaviour_dim`) L2-normalised."""
    return _normalise_content((vectors * weights[..., None]).sum(axis=-2), behaviour_dim)


def _normalise_content(summed: np.ndarray, behaviour_dim: int) -> np.ndarray:
    content = summed[..., behaviour_dim:]
    content /= np.maximum(np.linalg.norm(content, axis=-1, keepdims=True), 1e-12)
    return np.concatenate([summed[..., :behaviour_dim], content], axis=-1).astype(np.float32)


def interest_vectors(hist: np.ndarray, hist_w: np.ndarray, hist_vectors: np.ndarray, behaviour_dim: int,
                     n_interests: int, iterations: int = 5) -> np.ndarray:
    """(U, n_interests, d) interest vectors of users with history positions `hist`
    (U, H; -1 pad), weights `hist_w` (U, H) and the history's vectors (U, H, d); zero
    rows where a user has fewer interests (fewer distinct history vectors, or none)."""
    n_users, width, dim = hist_vectors.shape
    valid = (hist >= 0) & (hist_w > 0)
    weights = np.where(valid, hist_w, 0).astype(np.float32)
    if n_interests <= 1:
        return pool(hist_vectors, weights, behaviour_dim)[:, None, :]
    norms = np.linalg.norm(hist_vectors, axis=2, keepdims=True)
    unit = np.where(valid[..., None], hist_vectors / np.maximum(norms, 1e-12), 0).astype(np.float32)
    rows = np.arange(n_users)

    # Farthest-point init from the heaviest item.
    first = np.argmax(weights, axis=1)
    centres = np.zeros((n_users, n_interests, dim), np.float32)
    centres[:, 0] = unit[rows, first]
    active = np.zeros((n_users, n_interests), bool)
    active[:, 0] = valid.any(axis=1)
    distance = np.where(valid, 1.0 - np.einsum("uhd,ud->uh", unit, centres[:, 0]), 0.0)
    for j in range(1, n_interests):
        pick = np.argmax(weights * distance, axis=1)
        found = active[:, j - 1] & (distance[rows, pick] > _SAME)
        centres[:, j] = np.where(found[:, None], unit[rows, pick], 0)
        active[:, j] = found
        to_new = np.where(valid, 1.0 - np.einsum("uhd,ud->uh", unit, centres[:, j]), 0.0)
        distance = np.where(found[:, None], np.minimum(distance, to_new), distance)

    def assign(centres):
        similarity = np.einsum("uhd,und->uhn", unit, centres)
        similarity = np.where(active[:, None, :], similarity, -np.inf)
        member = np.argmax(similarity, axis=2)[..., None] == np.arange(n_interests)  # (U, H, N)
        return member & valid[..., None]

    for _ in range(iterations):
        member = assign(centres)
        summed = np.einsum("uhn,uh,uhd->und", member.astype(np.float32), weights, unit)
        norm = np.linalg.norm(summed, axis=2, keepdims=True)
        # A centre that lost all its items keeps its place (it may win some back).
        centres = np.where(norm > 0, summed / np.maximum(norm, 1e-12), centres).astype(np.float32)
    member = assign(centres)

    share = np.einsum("uhn,uh->un", member.astype(np.float32), weights)
    share = np.where(share > 0, share, -1.0)  # no items: no interest, sorted last
    order = np.argsort(-share, axis=1, kind="stable")
    member = np.take_along_axis(member, order[:, None, :], axis=2)
    has_items = np.take_along_axis(share, order, axis=1) > 0
    summed = np.einsum("uhn,uh,uhd->und", member.astype(np.float32), weights, hist_vectors.astype(np.float32))
    out = _normalise_content(summed, behaviour_dim)
    return np.where(has_items[..., None], out, 0).astype(np.float32)
