"""The re-ranker's pure parts (ranks/rerank): stats, candidates, features, labels, training."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrank.ranks.rerank import features as fx
from fusionrank.ranks.rerank import ranker as rk

DAY = 86_400


def _events(rows):
    """rows: (user, item, day, type[, value[, session]])"""
    return fx.Events(
        user=np.array([r[0] for r in rows], np.int64), item=np.array([r[1] for r in rows], np.int64),
        ts=np.array([int(r[2] * DAY) for r in rows], np.int64),
        kind=np.array([fx.TYPE_CODE[r[3]] for r in rows], np.int8),
        value=np.array([r[4] if len(r) > 4 and r[4] is not None else np.nan for r in rows]),
        session=np.array([r[5] if len(r) > 5 else -1 for r in rows], np.int64))


def test_item_stats_counts_only_before_the_cutoff():
    ev = _events([(0, 0, 1, "view"), (1, 0, 2, "view"), (0, 1, 25, "purchase"), (1, 1, 29, "view"),
                  (2, 2, 40, "view")])  # day 40 is after the cutoff
    stats = fx.item_stats(ev, 3, cutoff=30 * DAY, category=np.array([0, 0, 1]))
    assert stats.pop_pct[2] == 0.0  # its only event is after the cutoff
    assert stats.trend[1] > stats.trend[0]  # item 1's events are in the last 7 days
    assert stats.purchase_rate[1] > stats.purchase_rate[0]
    # users 0 and 1 both had items 0 and 1: each is the other's top co-occurrence
    assert stats.cooc_items[0, 0] == 1 and stats.cooc_counts[0, 0] == 2
    assert stats.cooc_items[1, 0] == 0
    assert stats.trending[0, 0] == 1  # category 0's 7-day top item
    assert stats.trending[1, 0] == -1  # nothing of category 1 before the cutoff


def test_query_ctr_counts_engagement_in_search_sessions():
    ev = _events([(0, -1, 1, "search", None, 7), (0, 0, 1, "view", None, 7), (0, 0, 1, "click", None, 7),
                  (0, 1, 1, "view", None, 8), (0, 1, 1, "click", None, 8)])
    stats = fx.item_stats(ev, 2, cutoff=10 * DAY)
    assert stats.query_ctr[0] > 0 and stats.query_ctr[1] == 0


def test_popularity_within_the_category_counts_distinct_users():
    # category 0: item 0 has users 0, 1, 2 (user 0 twice), item 1 has user 0; item 2 alone in category 1
    ev = _events([(0, 0, 1, "view"), (0, 0, 2, "click"), (1, 0, 1, "view"), (2, 0, 1, "view"),
                  (0, 1, 1, "view"), (1, 2, 1, "view"), (3, 3, 1, "view")])
    stats = fx.item_stats(ev, 4, cutoff=5 * DAY, category=np.array([0, 0, 1, -1]))
    np.testing.assert_allclose(stats.pop_in_category, [0.75, 0.25, 1.0, 0.0])
    # stats saved before the field existed load with zeros
    old = {k: v for k, v in stats.to_arrays().items() if k != "pop_in_category"}
    assert np.all(fx.ItemStats.from_arrays(old).pop_in_category == 0)


def test_item_stats_round_trip():
    ev = _events([(0, 0, 1, "view"), (0, 1, 2, "click")])
    stats = fx.item_stats(ev, 2, cutoff=5 * DAY, brand=np.array([3, -1]), price=np.array([10.0, np.nan]))
    back = fx.ItemStats.from_arrays(stats.to_arrays())
    assert back.n_brands == 4 and back.cutoff == stats.cutoff
    np.testing.assert_array_equal(back.cooc_items, stats.cooc_items)
    with pytest.raises(ValueError, match="missing arrays"):
        fx.ItemStats.from_arrays({"_meta": np.zeros(3)})


def _batch(n_items=6):
    # user 0 saw items 0, 1 (1 most recent); user 1 saw item 3
    ev = _events([(0, 0, 1, "view"), (0, 1, 2, "purchase"), (1, 3, 2, "view"),
                  (2, 1, 1, "view"), (2, 2, 1, "view"), (3, 1, 1, "view"), (3, 2, 1, "click"), (3, 4, 1, "view")])
    stats = fx.item_stats(ev, n_items, cutoff=3 * DAY, category=np.array([0, 0, 0, 1, 1, 1]),
                          price=np.array([10, 12, 11, 100, 90, 95.0]))
    vecs = np.eye(n_items, dtype=np.float32)
    vecs[2] = [0.9, 0.1, 0, 0, 0, 0]  # item 2 looks like item 0
    users = np.array([0, 1])
    weights = lambda e: np.ones(len(e))  # noqa: E731
    prof = np.stack([vecs[0] + vecs[1], vecs[3]])
    ub = fx.user_batch_from_events(ev, users, prof, weights, max_history=4, recent=2)
    return ev, stats, vecs, ub


def test_user_batch_and_candidates_union_without_seen_items():
    ev, stats, vecs, ub = _batch()
    assert ub.recent[0].tolist() == [1, 0]  # newest first
    ann = np.array([[0, 2, 5], [3, 4, -1]])  # item 0 was seen by user 0, item 3 by user 1
    cand, flags = fx.candidates(ann, ub, stats, n_cooc=5, n_trend=5)
    row0 = [c for c in cand[0].tolist() if c >= 0]
    assert 0 not in row0 and 1 not in row0  # seen
    assert row0[:2] == [2, 5]  # ANN order first
    assert 4 in row0  # co-occurs with item 1 (user 3)
    f = dict(zip(cand[0].tolist(), flags[0].tolist()))
    assert f[2] & fx.FROM_ANN and f[2] & fx.FROM_COOC  # both sources
    assert 3 not in cand[1].tolist()


def test_features_attention_reason_and_affinities():
    ev, stats, vecs, ub = _batch()
    cand = np.array([[2, 5, -1], [4, 2, -1]])
    flags = np.full(cand.shape, fx.FROM_ANN)
    out = fx.compute_features(cand, flags, ub, stats, lambda p: vecs[p])
    col = {n: i for i, n in enumerate(out.names)}
    v = out.values
    assert v.shape == (2, 3, len(out.names))
    assert out.reason[0, 0] == 0  # item 2 is most like history item 0
    assert out.reason[0, 2] == -1  # padding
    assert v[0, 0, col["max_history_similarity"]] > 0.9
    assert v[0, 0, col["category_share"]] == pytest.approx(1.0)
    assert v[0, 1, col["category_share"]] == 0.0
    share_x_pop = v[..., col["category_share_x_pop_in_category"]]
    np.testing.assert_allclose(share_x_pop, v[..., col["category_share"]] * v[..., col["pop_in_category"]])
    assert v[0, 0, col["pop_in_category"]] > 0  # item 2 has users in category 0
    # price: item 5 (95) is far above user 0's band (10-12), item 2 (11) inside it
    assert v[0, 1, col["abs_price_vs_user"]] > 5 * v[0, 0, col["abs_price_vs_user"]]
    assert v[0, 0, col["retrieval_rank"]] == 0.0
    assert np.all(v[:, 2] == 0)


def test_relative_features_do_not_move_with_the_volume_behind_them():
    """A night with every user twice (counts doubled) and profiles three times as long
    gives the same *_rel features: training features come from fewer events than the
    rank pass's, and the trees' thresholds must hold on both."""
    ev, stats, vecs, ub = _batch()
    twice = _events([(u + k * 10, i, d / DAY, fx.EVENT_TYPES[t]) for k in (0, 1)
                     for u, i, d, t in zip(ev.user, ev.item, ev.ts, ev.kind)])
    stats2 = fx.item_stats(twice, 6, cutoff=3 * DAY, category=np.array([0, 0, 0, 1, 1, 1]),
                           price=np.array([10, 12, 11, 100, 90, 95.0]))
    assert stats2.cooc_counts.max() == 2 * stats.cooc_counts.max()
    cand = np.array([[2, 5, 4], [4, 2, -1]])
    flags = np.full(cand.shape, fx.FROM_ANN)
    one = fx.compute_features(cand, flags, ub, stats, lambda p: vecs[p])
    ub.profile = ub.profile * 3
    more = fx.compute_features(cand, flags, ub, stats2, lambda p: vecs[p])
    rel = [j for j, n in enumerate(one.names) if n.endswith("_rel")]
    assert {one.names[j] for j in rel} >= {fx.RETRIEVAL_SCORE, "cooc_recent_rel", "cooc_history_cosine_rel"}
    assert one.values[0, :, one.names.index("cooc_recent_rel")].max() == 1.0  # the user's best is 1
    np.testing.assert_allclose(more.values[..., rel], one.values[..., rel], rtol=1e-6)
    np.testing.assert_array_equal(more.values[1, 2], 0)  # padding stays 0


def test_a_users_candidates_do_not_depend_on_the_batch():
    """The search fetches candidates plus the batch's longest seen list; `ann_limit`
    keeps each user's first unseen results, whoever else is in the batch."""
    ev, stats, vecs, ub = _batch()
    ann = np.array([[0, 2, 5, 4, 3], [3, 4, 2, 5, 0]])  # user 0 saw 0 (and 1), user 1 saw 3
    cand, _ = fx.candidates(ann, ub, stats, n_cooc=0, n_trend=0, ann_limit=2)
    assert [c for c in cand[0] if c >= 0] == [2, 5] and [c for c in cand[1] if c >= 0] == [4, 2]
    deeper, _ = fx.candidates(ann[:, :3], ub, stats, n_cooc=0, n_trend=0, ann_limit=2)
    np.testing.assert_array_equal(deeper, cand)  # a shallower search with enough unseen results: the same
    everything, _ = fx.candidates(ann, ub, stats, n_cooc=0, n_trend=0)
    assert (everything[0] >= 0).sum() == 4  # without the limit, every unseen result


def test_grades_and_label_matrix():
    ev = _events([(0, 1, 1, "view"), (0, 1, 1, "purchase"), (0, 2, 1, "click"), (1, 2, 1, "rating", 4.0),
                  (1, 3, 1, "search")])
    u, i, g = rk.grades(ev)
    assert dict(zip(zip(u.tolist(), i.tolist()), g.tolist())) == {(0, 1): 4, (0, 2): 2, (1, 2): 4}
    labels = rk.label_matrix(np.array([[1, 2, 5], [2, -1, 3]]), np.array([0, 1]), u, i, g)
    assert labels.tolist() == [[4, 2, 0], [4, 0, 0]]


def test_label_split_modes():
    ev = _events([(0, j, j, "view") for j in range(10)] + [(1, j, j, "view") for j in range(5)])
    last = rk.label_split(ev, "user_last", fraction=0.2)
    assert ev.item[last & (ev.user == 0)].tolist() == [8, 9] and ev.item[last & (ev.user == 1)].tolist() == [4]
    days = rk.label_split(ev, "days", label_days=2)
    assert sorted(ev.item[days].tolist()) == [8, 9]
    rnd = rk.label_split(ev, "random", fraction=0.2, seed=3)
    assert rnd.sum() == 3 and np.array_equal(rnd, rk.label_split(ev, "random", fraction=0.2, seed=3))
    with pytest.raises(ValueError, match="label_split"):
        rk.label_split(ev, "weekly")


def _synthetic_ranking(n_users=300, width=40, seed=0):
    """Features where the label follows feature 1, while 'retrieval_score' (feature 0)
    is only loosely related: a model must learn to beat retrieval order."""
    rng = np.random.RandomState(seed)
    values = rng.standard_normal((n_users, width, 3)).astype(np.float32)
    truth = values[..., 1] + 0.3 * values[..., 0]
    labels = np.zeros((n_users, width), np.int32)
    best = np.argsort(-truth, axis=1)[:, :3]
    np.put_along_axis(labels, best, 2, 1)
    cand = np.tile(np.arange(width), (n_users, 1))
    return values, labels, cand, [fx.RETRIEVAL_SCORE, "signal", "noise"]


@pytest.mark.parametrize("folds", [1, 5])
def test_train_ranker_beats_retrieval_order_and_is_deterministic(tmp_path, folds):
    values, labels, cand, names = _synthetic_ranking()
    cfg = rk.RankerConfig(num_rounds=60, min_data_in_leaf=20, num_threads=1, folds=folds)
    model = rk.train_ranker(values, labels, cand, names, cfg)
    assert model.params.get("folds", 1) == folds
    # folds: every labelled user trains and is scored out of fold; else a fifth is held out
    assert model.n_users == (300 if folds > 1 else 240)
    assert model.valid_ndcg > model.valid_ndcg_retrieval + 0.2
    assert next(iter(model.gains())) == "signal"
    again = rk.train_ranker(values, labels, cand, names, cfg)
    np.testing.assert_array_equal(model.score(values[:5]), again.score(values[:5]))
    model.save(tmp_path / "m")
    loaded = rk.load_ranker(tmp_path / "m")
    np.testing.assert_allclose(loaded.score(values[:5]), model.score(values[:5]), rtol=1e-6)
    top, scores, _ = rk.rerank_order(loaded.score(values[:2]), cand[:2], 5)
    assert top.shape == (2, 5) and np.all(np.diff(scores, axis=1) <= 0)
    # only the valid entries are predicted: the same values there, 0 on the padding
    valid = np.random.RandomState(1).rand(5, values.shape[1]) < 0.7
    partial = model.score(values[:5], valid)
    np.testing.assert_array_equal(partial[valid], model.score(values[:5])[valid])
    assert np.all(partial[~valid] == 0)
    assert np.all(model.score(values[:5], np.zeros((5, values.shape[1]), bool)) == 0)


def test_fold_models_are_summed_into_one_booster_only_for_small_label_sets():
    import lightgbm as lgb

    values, labels, cand, names = _synthetic_ranking(n_users=200)
    cfg = rk.RankerConfig(num_rounds=40, early_stopping=10, min_data_in_leaf=20, num_threads=1, folds=4)
    model = rk.train_ranker(values, labels, cand, names, cfg)
    rounds = model.params["fold_rounds"]
    assert model.params["folds"] == 4 and len(rounds) == 4 and model.best_iteration == sum(rounds)
    assert model.booster.num_trees() == sum(rounds)
    # the summed booster's score is the sum of the fold models' (refitted alike)
    flat = values.reshape(-1, 3)
    has = np.flatnonzero((labels > 0).any(axis=1))
    slices = np.array_split(np.random.RandomState(cfg.seed).permutation(has), 4)
    total = np.zeros(len(flat))
    for f, held in enumerate(slices):
        out = np.setdiff1d(has, held)
        booster, best, _ = rk._fit(values[out], labels[out], cand[out], values[held], labels[held], cand[held],
                                   names, cfg, cfg.seed + f)
        assert best == rounds[f]
        total += booster.predict(flat, num_iteration=best)
    np.testing.assert_allclose(model.booster.predict(flat), total, rtol=1e-9, atol=1e-9)
    contrib = model.booster.predict(flat[:20], pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(axis=1), total[:20], rtol=1e-9, atol=1e-9)
    reloaded = lgb.Booster(model_str=model.booster.model_to_string())
    np.testing.assert_allclose(reloaded.predict(flat[:50]), total[:50], rtol=1e-9, atol=1e-9)
    # above fold_max_users: one model, early-stopped on a slice
    single = rk.train_ranker(values, labels, cand, names,
                             rk.RankerConfig(num_rounds=40, early_stopping=10, min_data_in_leaf=20, num_threads=1,
                                             folds=4, fold_max_users=199))
    assert "folds" not in single.params and single.booster.num_trees() >= single.best_iteration


def test_compiled_trees_score_as_lightgbm_does_and_compile_once_per_model(tmp_path):
    values, labels, cand, names = _synthetic_ranking()
    cfg = rk.RankerConfig(num_rounds=40, early_stopping=10, min_data_in_leaf=20, num_threads=1, folds=5)
    model = rk.train_ranker(values, labels, cand, names, cfg)  # the fold models, summed
    model.save(tmp_path / "m")
    loaded = rk.load_ranker(tmp_path / "m")
    cache = tmp_path / "cache"
    loaded.compiled = rk.compile_trees(tmp_path / "m" / rk.MODEL_FILE, cache)
    valid = np.random.RandomState(2).rand(*cand.shape) < 0.8
    native, plain = loaded.score(values, valid), model.score(values, valid)
    assert np.abs(native - plain).max() < 1e-5 and np.abs(plain).max() > 0.1
    np.testing.assert_array_equal(rk.rerank_order(native, np.where(valid, cand, -1), 10)[0],
                                  rk.rerank_order(plain, np.where(valid, cand, -1), 10)[0])
    # cached per model: a second load compiles nothing, another model gets its own file
    built = sorted(cache.glob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    again = rk.compile_trees(tmp_path / "m" / rk.MODEL_FILE, cache)
    assert built[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.predict(values[:3].reshape(-1, 3).astype(np.float64)),
                                  loaded.compiled.predict(values[:3].reshape(-1, 3).astype(np.float64)))
    other = rk.train_ranker(values, labels, cand, names, rk.RankerConfig(num_rounds=5, min_data_in_leaf=20,
                                                                         num_threads=1, folds=1))
    other.save(tmp_path / "other")
    compiled_other = rk.compile_trees(tmp_path / "other" / rk.MODEL_FILE, cache)
    assert len(list(cache.glob("*.so"))) == 2
    np.testing.assert_allclose(compiled_other.predict(values[:3].reshape(-1, 3).astype(np.float64)),
                               other.booster.predict(values[:3].reshape(-1, 3), num_iteration=other.best_iteration),
                               atol=1e-9)


def test_too_few_labels_is_a_clear_error(tmp_path):
    values, labels, cand, names = _synthetic_ranking(n_users=5)
    with pytest.raises(ValueError, match="too few labels"):
        rk.train_ranker(values, labels, cand, names, rk.RankerConfig())
    with pytest.raises(FileNotFoundError, match="incomplete"):
        rk.load_ranker(tmp_path)


def _brute_search(vecs):
    """An exact inner-product search over `vecs`, as LoadedIndex.search answers."""
    def search(queries, k):
        scores = queries @ vecs.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), order
    return search


def test_interest_candidates_come_after_the_anns_before_cooccurrence():
    ev, stats, vecs, ub = _batch()
    ann = np.array([[2, 5, -1], [4, -1, -1]])
    interest = np.array([[5, 0, 3], [-1, 5, 2]])  # user 0: 5 also from ANN, 0 seen; user 1: 3 seen
    cand, flags = fx.candidates(ann, ub, stats, n_cooc=5, n_trend=5, interest=interest)
    row0 = [c for c in cand[0].tolist() if c >= 0]
    assert row0[:3] == [2, 5, 3] and 0 not in row0 and 1 not in row0
    f = dict(zip(cand[0].tolist(), flags[0].tolist()))
    assert f[5] & fx.FROM_ANN and f[5] & fx.FROM_INTEREST
    assert f[3] & fx.FROM_INTEREST and not f[3] & fx.FROM_ANN
    assert not f[2] & fx.FROM_INTEREST
    row1 = [c for c in cand[1].tolist() if c >= 0]
    assert row1[:3] == [4, 5, 2] and 3 not in row1
    # without interests: what candidates gave before them
    plain, plain_flags = fx.candidates(ann, ub, stats, n_cooc=5, n_trend=5)
    assert not (plain_flags & fx.FROM_INTEREST).any()
    assert set(plain[0].tolist()) <= set(cand[0].tolist())


def test_interest_ann_searches_each_interest_once_and_skips_seen_and_empty_rows():
    ev, stats, vecs, ub = _batch()
    ub.interests = np.zeros((2, 2, 6), np.float32)
    ub.interests[0, 0] = vecs[0] + 0.5 * vecs[2]   # nearest: 0 (seen), 2
    ub.interests[0, 1] = vecs[4] + 0.1 * vecs[5]   # nearest: 4, 5
    ub.interests[1, 0] = vecs[3] + 0.2 * vecs[4]   # nearest: 3 (seen), 4; user 1's second: none
    calls = []

    def search(queries, k):
        calls.append(len(queries))
        return _brute_search(vecs)(queries, k)

    out = fx.interest_ann(search, ub, per_interest=2, n_items=6)
    assert calls == [3]  # one search for the batch, zero rows left out
    assert out.shape == (2, 4)
    assert out[0, :2].tolist() == [2, 4] and out[0, 3] == 5  # interleaved by rank
    assert out[1, 0] == 4 and out[1, 1] == -1 and 3 not in out[1].tolist()
    assert fx.interest_ann(search, fx.UserBatch(**{**ub.__dict__, "interests": None}), 2, 6) is None


def test_interest_features_are_always_there():
    ev, stats, vecs, ub = _batch()
    cand = np.array([[2, 5, -1], [4, 2, -1]])
    flags = np.array([[fx.FROM_ANN, fx.FROM_INTEREST, 0], [fx.FROM_ANN | fx.FROM_INTEREST, fx.FROM_COOC, 0]])
    single = fx.compute_features(cand, flags, ub, stats, lambda p: vecs[p])
    col = {n: i for i, n in enumerate(single.names)}
    assert single.names[-2:] == ["from_interest", "max_interest_score_rel"]
    v = single.values
    assert v[0, :, col["from_interest"]].tolist() == [0, 1, 0] and v[1, 0, col["from_interest"]] == 1
    # one interest: the profile's score
    np.testing.assert_array_equal(v[..., col["max_interest_score_rel"]], v[..., col[fx.RETRIEVAL_SCORE]])
    ub.interests = np.zeros((2, 2, 6), np.float32)
    ub.interests[0, 0], ub.interests[0, 1] = vecs[5] * 2, vecs[0]
    ub.profile = ub.profile * 2
    multi = fx.compute_features(cand, flags, ub, stats, lambda p: vecs[p])
    # over the profile's best candidate score (user 0: item 2's 2 x 1.0)
    assert multi.values[0, 1, col["max_interest_score_rel"]] == pytest.approx(1.0)  # item 5, its interest's 2.0
    assert multi.values[0, 0, col["max_interest_score_rel"]] == pytest.approx(0.45)  # item 2, item 0's 0.9
    assert np.all(multi.values[1, :, col["max_interest_score_rel"]] == 0)  # user 1 has no interest vectors
    np.testing.assert_array_equal(multi.values[..., :-1], single.values[..., :-1])


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A flat index of 240 items in 12 clusters and 90 users who each like 3 clusters
    (30 days of events; the last 7 are the labels)."""
    from fusionrank.core.config import IndexConfig
    from fusionrank.index import build as index_build

    rng = np.random.default_rng(7)
    n_items, dim, n_clusters = 240, 16, 12
    cluster = np.arange(n_items) % n_clusters
    centres = rng.normal(size=(n_clusters, dim))
    vecs = centres[cluster] + 0.4 * rng.normal(size=(n_items, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"i{i:03d}" for i in range(n_items)]
    built = index_build.build(iter([(ids, vecs)]), np.zeros((0, dim)), dim, n_items, IndexConfig(type="flat"),
                              tmp_path_factory.mktemp("interests") / "idx", "v", "d")
    index = index_build.load_index(built.path)
    rows = []
    for u in range(90):
        liked = rng.choice(n_clusters, 3, replace=False)
        for _ in range(24):
            c = liked[rng.integers(0, 3)]
            item = int(c + n_clusters * min(int(rng.exponential(4)), n_items // n_clusters - 1))
            rows.append((u, item, float(rng.uniform(0, 30)), ["view", "click", "purchase"][rng.integers(0, 3)]))
    return index, _events(rows), {"category": cluster}


def _train_shop(shop, tmp_path, interests):
    from fusionrank.core.config import ProfilesConfig, RerankConfig
    from fusionrank.ranks.rerank import nightly

    index, ev, attrs = shop
    cfg = RerankConfig(candidates=20, interest_candidates=8, cooc_candidates=10, trending_candidates=5,
                       history=20, recent=3, min_labels=10, guard="slice")
    weights = nightly.profile_weights(ProfilesConfig())
    values, labels, cands, names = nightly._labelled_set(ev, cfg, 1, index, index.index.ntotal, attrs, 0, weights,
                                                         interests)
    model = rk.train_ranker(values, labels, cands, names,
                            rk.RankerConfig(num_rounds=10, min_data_in_leaf=5, num_threads=1), min_labels=10)
    folder = tmp_path / f"reranker-{interests}"
    model.save(folder, extra={"candidates": cfg.candidates, "cooc_candidates": cfg.cooc_candidates,
                              "trending_candidates": cfg.trending_candidates, "history": cfg.history,
                              "recent": cfg.recent, "interests": interests,
                              "interest_candidates": cfg.interest_candidates, "behaviour_dim": 0})
    np.savez(folder / rk.STATS_FILE, **fx.item_stats(ev, index.index.ntotal, float(ev.ts.max()) + 1,
                                                     **attrs).to_arrays())
    return values, cands, names, folder, cfg, weights


def test_training_with_interests_adds_their_candidates_and_nothing_else(shop, tmp_path):
    v1, c1, names, _, _, _ = _train_shop(shop, tmp_path, 1)
    v3, c3, names3, _, _, _ = _train_shop(shop, tmp_path, 3)
    assert names == names3
    col = {n: i for i, n in enumerate(names)}
    assert np.all(v1[..., col["from_interest"]] == 0)
    np.testing.assert_array_equal(v1[..., col["max_interest_score_rel"]], v1[..., col[fx.RETRIEVAL_SCORE]])
    assert v3[..., col["from_interest"]].sum() > len(c3)  # several per user
    for a, b in zip(c1, c3):  # the same users: every candidate of interests 1 is still there
        assert set(a[a >= 0].tolist()) <= set(b[b >= 0].tolist())
    assert (v3[..., col["max_interest_score_rel"]] >= v3[..., col[fx.RETRIEVAL_SCORE]] - 1e-5).mean() > 0.5


def _rank_pass_chunk(shop, cfg, weights, users):
    """The rank pass's columns for `users` of the shop, and their ANN positions
    searched as the rank pass does (candidates plus the batch's longest seen list)."""
    import pyarrow as pa

    from fusionrank.ranks.rerank import nightly

    index, ev, _ = shop
    ub = fx.user_batch_from_events(ev, users, np.zeros((len(users), 1), np.float32), weights, cfg.history,
                                   cfg.recent)
    ub.profile = nightly._profiles(ub, index, 0)
    hist_ids = [[index.ids[p] for p in row if p >= 0] for row in ub.hist]
    seen = [[] for _ in users]
    for r, p in zip(ub.seen_rows, ub.seen_items):
        seen[r].append(index.ids[p])
    chunk = pa.RecordBatch.from_pydict({
        "user_id": [f"u{u}" for u in users], "profile_vec": ub.profile.tolist(), "history_item_ids": hist_ids,
        "history_weights": [[float(w) for w in row if w > 0] for row in ub.hist_w], "seen": seen,
        "recent_item_ids": [[index.ids[p] for p in row if p >= 0] for row in ub.recent],
        "type_mix": ub.type_mix.tolist()})
    _, positions = index.search(ub.profile, cfg.candidates + max(len(s) for s in seen))
    return chunk, positions.astype(np.int64), seen


def test_show_users_contributions_add_up_to_the_rank_pass_score(shop, tmp_path):
    """explain (fusionrank show user) computes one user's features over the candidate
    list the rank pass scored: every feature's contribution plus the bias is the score
    the rank pass gave the item."""
    from fusionrank.ranks.rerank import apply

    index, _, _ = shop
    _, _, _, folder, cfg, weights = _train_shop(shop, tmp_path, 3)
    rr = apply.load_reranker(str(folder))
    chunk, positions, _ = _rank_pass_chunk(shop, cfg, weights, np.arange(30))
    scores, top, _ = apply.rerank_chunk(index, rr, chunk, positions, rows_per_pass=8)
    n_features = len(rr.model.names)
    bias = rr.model.booster.predict(np.zeros((1, n_features)), pred_contrib=True)[0, -1]
    for u in (0, 7, 29):
        served = top[u][top[u] >= 0]
        picked = [0, 5, len(served) - 1]  # first, middle, last of the list
        explained = apply.explain(index, rr, chunk.slice(u, 1), [index.ids[served[j]] for j in picked],
                                  top=n_features)
        for j in picked:
            contributions = explained[index.ids[served[j]]]
            assert len(contributions) == n_features
            assert sum(c for _, c in contributions) + bias == pytest.approx(float(scores[u][j]), abs=1e-4)


def test_rank_pass_applies_a_model_trained_with_interests(shop, tmp_path):
    import pyarrow as pa

    from fusionrank.ranks.rerank import apply

    index, _, _ = shop
    _, _, _, folder, cfg, weights = _train_shop(shop, tmp_path, 3)
    rr = apply.load_reranker(str(folder))
    assert rr.meta["interests"] == 3
    users = np.arange(40)
    chunk, positions, seen = _rank_pass_chunk(shop, cfg, weights, users)
    scores, top, (flags, cooc_item) = apply.rerank_chunk(index, rr, chunk, positions, rows_per_pass=16)
    assert top.shape == flags.shape and (flags & fx.FROM_INTEREST).any()
    only_interest = (flags & fx.FROM_INTEREST > 0) & (flags & fx.FROM_ANN == 0)
    assert only_interest.any()
    for u in range(len(users)):
        row = top[u][top[u] >= 0]
        assert not set(index.ids[row]) & set(seen[u]) and len(set(row.tolist())) == len(row)
        assert np.all(np.diff(scores[u][top[u] >= 0]) <= 0)
    # an interest's candidate keeps its history-item reason, whatever else found it
    pick = np.array([fx.FROM_INTEREST | fx.FROM_TREND, fx.FROM_TREND, fx.FROM_INTEREST | fx.FROM_COOC])
    text, ids = apply.source_reasons(index, pa.array(["similar to A", "similar to B", "similar to C"]),
                                     pa.array(["a", "b", "c"]), pick, np.array([-1, -1, 5]))
    assert text.to_pylist() == ["similar to A", "trending in your categories", "similar to C"]
    assert ids.to_pylist() == ["a", None, "c"]


def test_the_rank_pass_orders_alike_with_compiled_trees_and_with_lightgbm(shop, tmp_path):
    from fusionrank.ranks.rerank import apply

    index, _, _ = shop
    _, _, _, folder, cfg, weights = _train_shop(shop, tmp_path, 1)
    chunk, positions, _ = _rank_pass_chunk(shop, cfg, weights, np.arange(40))
    plain = apply.load_reranker(str(folder), compiled=False)
    assert plain.model.compiled is None
    by_lightgbm = apply.rerank_chunk(index, plain, chunk, positions, rows_per_pass=16)
    native = apply.load_reranker(str(folder))
    assert native.model.compiled is not None
    compiled = apply.rerank_chunk(index, native, chunk, positions, rows_per_pass=16)
    np.testing.assert_array_equal(compiled[1], by_lightgbm[1])
    np.testing.assert_allclose(compiled[0], by_lightgbm[0], atol=1e-5)


def test_without_lleaves_the_rank_pass_says_so_and_predicts_through_lightgbm(shop, tmp_path, monkeypatch, caplog):
    import logging
    import sys

    from fusionrank.ranks.rerank import apply

    _, _, _, folder, _, _ = _train_shop(shop, tmp_path, 1)
    monkeypatch.setitem(sys.modules, "lleaves", None)  # as where it is not installed
    with caplog.at_level(logging.WARNING, logger="fusionrank.rank"):
        rr = apply.load_reranker(str(folder))
    assert rr.model.compiled is None
    assert "re-ranker not compiled (ModuleNotFoundError" in caplog.text and "lleaves" in caplog.text


def test_blend_standardises_each_user_over_its_valid_candidates():
    model = np.array([[3.0, 1.0, 2.0, 99.0], [0.2, 0.1, 0.3, 0.0]], np.float32)
    retrieval = np.array([[0.1, 0.9, 0.6, -9.0], [0.5, 0.6, 0.1, 0.0]], np.float32)
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    assert rk.blend(model, retrieval, valid, 0.0) is model  # weight 0: the model alone
    mixed = rk.blend(model, retrieval, valid, 1.0)
    # user 0: the padded candidate's huge score does not move the others' standardisation
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    np.testing.assert_allclose(mixed[0, :3], z(model[0, :3].astype(np.float64)) + z(retrieval[0, :3]), rtol=1e-5)
    top, _, _ = rk.rerank_order(mixed, np.array([[0, 1, 2, -1], [0, 1, 2, 3]]), 3)
    assert top[0].tolist() == [2, 0, 1]  # second for both orders, first blended; then the model breaks the tie
    heavy = rk.blend(model, retrieval, valid, 100.0)  # a large weight is retrieval order
    assert np.argsort(-heavy[1]).tolist()[:3] == np.argsort(-retrieval[1]).tolist()[:3]
    constant = rk.blend(np.ones((1, 3), np.float32), retrieval[:1, :3], valid[:1, :3], 1.0)
    assert np.isfinite(constant).all()  # a flat row (sd 0) stays finite


def test_retrieval_blends_must_be_non_negative(tmp_path):
    from tests.conftest import make_settings

    assert make_settings(tmp_path, rerank={"retrieval_blends": [1, 0, 1]}).rerank.retrieval_blends == [0.0, 1.0]
    with pytest.raises(Exception, match="retrieval_blends"):
        make_settings(tmp_path, rerank={"retrieval_blends": [-1.0]})


def test_user_batches_from_grouped_events_are_the_same():
    """EventsByUser (the training loop's per-user index) gives exactly the batch a scan
    of every event gives, whatever the users' order and with unknown users."""
    rng = np.random.RandomState(3)
    n = 400
    ev = fx.Events(user=rng.randint(0, 30, n).astype(np.int64), item=rng.randint(-1, 25, n).astype(np.int64),
                   ts=rng.randint(0, 40 * DAY, n).astype(np.int64), kind=rng.randint(0, 5, n).astype(np.int8),
                   value=rng.uniform(1, 5, n))
    weights = lambda e: 1.0 + e.value  # noqa: E731  (non-integer sums: order-sensitive)
    grouped = fx.EventsByUser(ev)
    for users in (np.array([3, 1, 17, 99, 0]), np.arange(30), np.array([99])):
        prof = np.zeros((len(users), 2), np.float32)
        plain = fx.user_batch_from_events(ev, users, prof, weights, max_history=6, recent=3)
        fast = fx.user_batch_from_events(grouped, users, prof, weights, max_history=6, recent=3)
        for name in ("hist", "hist_w", "recent", "type_mix", "seen_rows", "seen_items"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name), err_msg=name)


def test_history_knn_is_computed_once_per_batch_and_stats():
    ev, stats, vecs, ub = _batch()
    first = fx.history_knn(ub, stats)
    assert fx.history_knn(ub, stats) is first
    other = fx.item_stats(ev, 6, cutoff=2 * DAY)  # other stats: recomputed
    assert fx.history_knn(ub, other) is not first


def test_top_per_row_keeps_what_a_full_sort_would():
    rng = np.random.RandomState(5)
    rows = np.sort(rng.randint(0, 6, 300))
    items = np.concatenate([rng.permutation(1000)[:n] for n in np.bincount(rows, minlength=6)])
    vals = rng.randint(0, 4, 300).astype(np.float64)  # many ties at the cut
    for count in (1, 3, 40, 500):
        got_rows, got_items = fx._top_per_row(rows, items, vals, 6, count)
        order = np.lexsort((items, -vals, rows))
        full = fx.pad_lists(rows[order], items[order], 6, count)
        np.testing.assert_array_equal(fx.pad_lists(got_rows, got_items, 6, count), full)
        assert len(got_rows) < len(rows) or count >= 300  # the partition dropped what cannot make the cut


def test_candidate_slots_place_a_sparse_triple_on_the_matrix():
    cand = np.array([[4, 0, -1], [0, 7, 2]])
    slots = fx._CandidateSlots(cand, 10)
    got = slots.scatter(np.array([0, 0, 1, 1]), np.array([0, 7, 2, 0]), np.array([1.5, 9.0, 2.5, 3.0]))
    # item 7 is not a candidate of row 0; the padding (-1) never takes item 0's value
    np.testing.assert_array_equal(got, [[0, 1.5, 0], [3.0, 0, 2.5]])
    np.testing.assert_array_equal(slots.scatter(np.zeros(0, int), np.zeros(0, int), np.zeros(0)), np.zeros((2, 3)))


@pytest.mark.parametrize("n_keys, bound", [(40, 1000), (5000, 1000), (200_000, 12_800_000), (500_000, 12_800_000), (0, 100)])
def test_sums_by_key_match_a_sort_whichever_way_they_are_found(n_keys, bound):
    rng = np.random.default_rng(n_keys)
    key = (rng.zipf(1.3, n_keys) - 1) % bound
    vals = rng.random(n_keys).astype(np.float32)
    uniq, sums = fx._sums_by_key(key, vals, bound)
    expect, inverse = np.unique(key, return_inverse=True)
    assert np.array_equal(uniq, expect)
    assert np.array_equal(sums, np.bincount(inverse, weights=vals, minlength=len(expect)))  # bit for bit
