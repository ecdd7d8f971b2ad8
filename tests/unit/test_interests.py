"""Multi-interest profiles (profiles/interests.py): a weighted spherical k-means of
each user's history, vectorised over the batch."""

from __future__ import annotations

import numpy as np

from fusionrank.profiles import interests as multi


def _two_clusters(seed=0, dim=8, per_cluster=(6, 4)):
    """One user whose history is two tight clusters around orthogonal centres."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:2]
    vecs = np.concatenate([centres[c] + 0.05 * rng.normal(size=(n, dim)) for c, n in enumerate(per_cluster)])
    order = rng.permutation(len(vecs))  # clusters interleaved in the history
    vecs = vecs[order].astype(np.float32)
    labels = np.repeat([0, 1], per_cluster)[order]
    hist = np.arange(len(vecs))[None, :]
    weights = np.linspace(2.0, 1.0, len(vecs), dtype=np.float32)[None, :]
    return hist, weights, vecs[None], centres, labels


def test_two_separated_clusters_give_two_interests_near_their_centres():
    hist, weights, vecs, centres, labels = _two_clusters()
    out = multi.interest_vectors(hist, weights, vecs, behaviour_dim=0, n_interests=3)
    assert out.shape == (1, 3, 8)
    unit = out[0, :2] / np.linalg.norm(out[0, :2], axis=1, keepdims=True)
    cos = unit @ centres.T
    assert sorted(cos.argmax(axis=1).tolist()) == [0, 1] and cos.max(axis=1).min() > 0.97
    # the third: the k-means split one cluster, or nothing; never a copy of another
    third = out[0, 2]
    if np.abs(third).sum() > 0:
        assert ((third / np.linalg.norm(third)) @ unit.T < 0.9999).all()
    # the heavier interest comes first: cluster 0 has 6 items
    heavier = 0 if weights[0][labels == 0].sum() > weights[0][labels == 1].sum() else 1
    assert cos[0].argmax() == heavier


def test_each_interest_is_pooled_like_the_profile_from_its_items():
    hist, weights, vecs, centres, labels = _two_clusters()
    out = multi.interest_vectors(hist, weights, vecs, behaviour_dim=3, n_interests=2)
    for j in range(2):
        members = labels == (out[0, j] @ centres.T).argmax()
        expected = multi.pool(vecs[0][members][None], weights[0][members][None], 3)[0]
        np.testing.assert_allclose(out[0, j], expected, rtol=1e-5, atol=1e-6)
        assert abs(np.linalg.norm(out[0, j, 3:]) - 1) < 1e-5  # the content part is unit length


def test_one_interest_is_the_single_profile_and_short_histories_have_one():
    hist, weights, vecs, _, _ = _two_clusters()
    profile = multi.pool(vecs, np.where(hist >= 0, weights, 0), 2)
    np.testing.assert_array_equal(multi.interest_vectors(hist, weights, vecs, 2, 1)[:, 0], profile)
    # a batch: user 0 one item, user 1 none, user 2 the same item twice over (one distinct vector)
    dim = 8
    v = np.zeros((3, 3, dim), np.float32)
    v[0, 0] = v[2, 0] = v[2, 1] = np.eye(dim)[4]
    h = np.array([[7, -1, -1], [-1, -1, -1], [3, 5, -1]])
    w = np.array([[1.0, 0, 0], [0, 0, 0], [2.0, 1.0, 0]], np.float32)
    out = multi.interest_vectors(h, w, v, dim, 3)  # all behaviour: plain weighted sums
    np.testing.assert_allclose(out[0, 0], np.eye(dim)[4])
    np.testing.assert_allclose(out[2, 0], 3 * np.eye(dim)[4])  # the single profile
    assert np.all(out[0, 1:] == 0) and np.all(out[1] == 0) and np.all(out[2, 1:] == 0)


def test_batched_interests_are_deterministic_and_equal_per_user_runs():
    rng = np.random.default_rng(3)
    n_users, width, dim = 7, 12, 10
    vecs = rng.normal(size=(n_users, width, dim)).astype(np.float32)
    hist = np.where(rng.random((n_users, width)) < 0.8, np.arange(width), -1)
    weights = np.where(hist >= 0, rng.uniform(0.1, 3, (n_users, width)), 0).astype(np.float32)
    weights[:, 3] = weights[:, 4]  # ties
    out = multi.interest_vectors(hist, weights, vecs, 4, 3)
    np.testing.assert_array_equal(out, multi.interest_vectors(hist, weights, vecs, 4, 3))
    for u in range(n_users):
        alone = multi.interest_vectors(hist[u:u + 1], weights[u:u + 1], vecs[u:u + 1], 4, 3)
        np.testing.assert_allclose(alone[0], out[u], rtol=1e-5, atol=1e-6)
