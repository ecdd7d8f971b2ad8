"""The ranking space without a duplicated behaviour part (rank.content: text_image) and
with a reduced content part (rank.space_dim): ModelSpec stays the one owner of the
dims, the query side and the text read-back."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrank.vectors.fusion import l2_normalize
from fusionrank.vectors.spec import ModelSpec


def make_spec(content="fused", space=None, text=12, image=8, behaviour=6):
    return ModelSpec(version="v", text_path="/nowhere", text_digest="d", text_dim=text, text_max_length=16,
                     text_dtype="float32", text_batch_size=4, image={"backend": "x"} if image else None,
                     image_dim=image, behaviour_dim=behaviour, weights=(1.0, 0.5, 0.7),
                     projection=("identity", text + image + behaviour), content_weight=0.2,
                     content=content, space_projection=space)


def test_dims_without_the_duplicated_behaviour_part():
    assert make_spec().ranking_dim == 6 + (12 + 8 + 6)
    assert make_spec("text_image").ranking_dim == 6 + 12 + 8
    assert make_spec("text_image", ("random_orthogonal", 20, 10, 3)).ranking_dim == 6 + 10


@pytest.mark.parametrize("space", [None, ("random_orthogonal", 20, 20, 3)])
def test_query_matches_an_items_text_part_exactly(space):
    spec = make_spec("text_image", space)
    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(5, 12)), rng.normal(size=(5, 8))
    items = np.concatenate([rng.normal(size=(5, 6)), spec.content_weight * spec.content_vectors(text, image)], axis=1)
    queries = spec.to_ranking_space(spec.query_content(text))
    assert queries.shape == (5, spec.ranking_dim)
    assert np.allclose(queries[:, :6], 0)  # the index score is the content similarity alone
    expected = l2_normalize(text) @ l2_normalize(text).T
    got = l2_normalize(spec.text_part(items)) @ l2_normalize(text).T
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_reduced_space_keeps_text_similarity_order_roughly():
    spec = make_spec("text_image", ("random_orthogonal", 20, 16, 3))
    rng = np.random.default_rng(1)
    text = rng.normal(size=(40, 12))
    content = spec.content_vectors(text, None)
    assert content.shape == (40, 16)
    np.testing.assert_allclose(np.linalg.norm(content, axis=1), 1.0, atol=1e-5)
    query = spec.query_content(text[:1])
    scores = (content @ query.T).ravel()
    assert int(np.argmax(scores)) == 0  # an item's own text is its best match


def test_round_trip_and_old_manifests():
    spec = make_spec("text_image", ("random_orthogonal", 20, 10, 3))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    old = make_spec().to_dict()
    del old["content"], old["space_projection"]  # a manifest written before these existed
    assert ModelSpec.from_dict(old).content == "fused" and ModelSpec.from_dict(old).ranking_dim == 32


def test_fused_content_is_unchanged():
    spec = make_spec()
    text = np.random.default_rng(2).normal(size=(3, 12))
    np.testing.assert_allclose(spec.query_content(text), spec.query_vectors(text))
