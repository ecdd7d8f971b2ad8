"""Unit tests for the vector maths: encoding.fuse / l2_normalize, ranking.top_unseen /
pick_reasons, profiles.pool_user (pure numpy/pandas) and profiles.event_weight /
weighted_history (Spark)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from fusionrank.vectors.fusion import fuse, l2_normalize
from fusionrank.profiles.build import pool_user
from fusionrank.ranks.users import pick_reasons, top_unseen


# -- encoding.fuse ---------------------------------------------------------------------
@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(5, 3)).astype(np.float32)
    image = rng.normal(size=(5, 4)).astype(np.float32)
    return text, image


def test_l2_normalize_unit_rows_and_zero_row():
    m = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    out = l2_normalize(m)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], rtol=1e-6)


def test_fuse_concatenates_and_has_unit_norm(parts):
    text, image = parts
    fused = fuse([(text, 1.0), (image, 1.0)])
    assert fused.shape == (5, 7)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-5)
    # equal weights: each block carries half of the squared norm, in its own direction
    np.testing.assert_allclose(np.linalg.norm(fused[:, :3], axis=1), np.sqrt(0.5), rtol=1e-5)
    np.testing.assert_allclose(fused[:, :3] * np.sqrt(2), l2_normalize(text), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused[:, 3:] * np.sqrt(2), l2_normalize(image), rtol=1e-5, atol=1e-6)


def test_fuse_single_part_is_l2_normalised(parts):
    text, _ = parts
    np.testing.assert_allclose(fuse([(text, 3.0)]), l2_normalize(text), rtol=1e-5, atol=1e-6)


def test_fuse_weights_change_the_balance(parts):
    text, image = parts
    fused = fuse([(text, 2.0), (image, 1.0)])
    text_norm = np.linalg.norm(fused[:, :3], axis=1)
    image_norm = np.linalg.norm(fused[:, 3:], axis=1)
    # blocks of norm 2 and 1 before the final normalisation: 2/sqrt(5) and 1/sqrt(5)
    np.testing.assert_allclose(text_norm, 2 / np.sqrt(5), rtol=1e-5)
    np.testing.assert_allclose(image_norm, 1 / np.sqrt(5), rtol=1e-5)
    # a zero weight removes the modality
    muted = fuse([(text, 0.0), (image, 1.0)])
    assert np.all(muted[:, :3] == 0)
    np.testing.assert_allclose(muted[:, 3:], l2_normalize(image), rtol=1e-5, atol=1e-6)


def test_fuse_zero_rows_stay_zero_not_nan(parts):
    text, image = parts
    text, image = text.copy(), image.copy()
    text[0] = 0.0
    image[0] = 0.0  # row 0: nothing at all
    text[1] = 0.0  # row 1: image only
    fused = fuse([(text, 1.0), (image, 1.0)])
    assert not np.isnan(fused).any()
    assert np.all(fused[0] == 0.0)
    assert np.all(fused[1, :3] == 0.0)
    np.testing.assert_allclose(fused[1, 3:], l2_normalize(image[1:2])[0], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fused[1:], axis=1), 1.0, rtol=1e-5)


def test_fuse_skips_missing_modality_and_needs_one(parts):
    text, _ = parts
    fused = fuse([(text, 1.0), (None, 1.0)])
    assert fused.shape == (5, 3)
    with pytest.raises(ValueError):
        fuse([(None, 1.0)])


# -- ranking.top_unseen ---------------------------------------------------------------------
def test_top_unseen_skips_seen_and_none_and_stops_at_k():
    ids = np.array(["a", "b", None, "c", "d", "e"], dtype=object)
    scores = np.array([0.9, 0.8, 0.75, 0.7, 0.6, 0.5], dtype=np.float32)
    got = top_unseen(ids, scores, {"b", "zzz"}, 3)
    assert [item for item, _ in got] == ["a", "c", "d"]
    assert [s for _, s in got] == pytest.approx([0.9, 0.7, 0.6])
    assert all(type(s) is float for _, s in got)


def test_top_unseen_fewer_than_k_available():
    ids = np.array(["a", "b", None], dtype=object)
    scores = np.array([0.3, 0.2, 0.0])
    assert top_unseen(ids, scores, {"a"}, 10) == [("b", pytest.approx(0.2))]
    assert top_unseen(ids, scores, {"a", "b"}, 10) == []
    assert top_unseen(np.array([], dtype=object), np.array([]), set(), 5) == []


# -- ranking.pick_reasons ---------------------------------------------------------------------
def test_pick_reasons_argmax_of_weight_times_similarity():
    history_vecs = np.array([[1.0, 0.0], [0.8, 0.6]], dtype=np.float32)
    history_ids = ["h1", "h2"]
    weights = np.array([1.0, 2.0], dtype=np.float32)
    candidates = np.array(
        [
            [1.0, 0.0],  # sims (1.0, 0.8)  x weights -> (1.0, 1.6): h2, though h1 is more similar
            [0.6, -0.8],  # sims (0.6, 0.0)  x weights -> (0.6, 0.0): h1
            [0.0, 1.0],  # sims (0.0, 0.6)  x weights -> (0.0, 1.2): h2
        ],
        dtype=np.float32,
    )
    assert pick_reasons(candidates, history_vecs, history_ids, weights) == ["h2", "h1", "h2"]
    # with equal weights the most similar history item wins
    equal = np.array([1.0, 1.0], dtype=np.float32)
    assert pick_reasons(candidates, history_vecs, history_ids, equal) == ["h1", "h1", "h2"]


def test_pick_reasons_empty_history_gives_none():
    candidates = np.eye(3, dtype=np.float32)
    got = pick_reasons(candidates, np.zeros((0, 3), dtype=np.float32), [], np.zeros(0, dtype=np.float32))
    assert got == [None, None, None]
    assert pick_reasons(np.zeros((0, 3)), np.eye(3), ["a", "b", "c"], np.ones(3)) == []


# -- profiles.pool_user ----------------------------------------------------------------------------
def _history_frame() -> pd.DataFrame:
    ts = pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-03", "2024-01-02"])
    return pd.DataFrame(
        {
            "user_id": ["u1"] * 4,
            # ties on weight 1.0 (c, b) and 0.5 (d only); heaviest is a
            "item_id": ["c", "a", "b", "d"],
            "weight": [1.0, 2.0, 1.0, 0.5],
            "last_ts": ts,
            "rec_vec": [
                np.array([0.0, 0.0, 1.0], dtype=np.float32),
                np.array([1.0, 0.0, 0.0], dtype=np.float32),
                np.array([0.0, 1.0, 0.0], dtype=np.float32),
                np.array([0.6, 0.8, 0.0], dtype=np.float32),
            ],
        }
    )


def test_pool_user_profile_is_normalised_weighted_sum():
    out = pool_user(_history_frame(), max_history=10)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["user_id"] == "u1"
    # 2*[1,0,0] + 1*[0,1,0] + 1*[0,0,1] + 0.5*[0.6,0.8,0] = [2.3, 1.4, 1.0]
    summed = np.array([2.3, 1.4, 1.0])
    np.testing.assert_allclose(row["profile_vec"], summed / np.linalg.norm(summed), rtol=1e-6)
    assert row["profile_vec"].dtype == np.float32
    assert np.linalg.norm(row["profile_vec"]) == pytest.approx(1.0, rel=1e-6)
    assert row["history_len"] == 4
    assert row["last_event_ts"] == pd.Timestamp("2024-01-05")


def test_pool_user_behaviour_part_is_a_plain_sum_content_part_normalised():
    # behaviour_dim=1: the first component is the linear autoencoder's user code
    # (weighted sum, magnitude kept), the rest is the content profile (unit length).
    row = pool_user(_history_frame(), max_history=10, behaviour_dim=1).iloc[0]
    assert row["profile_vec"][0] == pytest.approx(2.3, rel=1e-6)
    np.testing.assert_allclose(row["profile_vec"][1:], np.array([1.4, 1.0]) / np.linalg.norm([1.4, 1.0]), rtol=1e-6)


def test_pool_user_same_bits_whatever_the_row_order():
    frame = _history_frame()
    a = pool_user(frame, max_history=10, behaviour_dim=2).iloc[0]
    b = pool_user(frame.iloc[::-1].reset_index(drop=True), max_history=10, behaviour_dim=2).iloc[0]
    assert a["profile_vec"].tobytes() == b["profile_vec"].tobytes()
    assert a["history_item_ids"] == b["history_item_ids"]


def test_pool_user_history_heaviest_first_ties_by_item_id():
    row = pool_user(_history_frame(), max_history=10).iloc[0]
    assert row["history_item_ids"] == ["a", "b", "c", "d"]
    np.testing.assert_allclose(row["history_weights"], [2.0, 1.0, 1.0, 0.5])
    assert row["history_weights"].dtype == np.float32


def test_pool_user_max_history_cuts_the_list_not_the_profile():
    full = pool_user(_history_frame(), max_history=10).iloc[0]
    cut = pool_user(_history_frame(), max_history=2).iloc[0]
    assert cut["history_item_ids"] == ["a", "b"]
    np.testing.assert_allclose(cut["history_weights"], [2.0, 1.0])
    assert cut["history_len"] == 4
    np.testing.assert_allclose(cut["profile_vec"], full["profile_vec"])


