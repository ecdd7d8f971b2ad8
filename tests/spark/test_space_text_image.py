"""rank.content text_image on Spark: rec_vec = behaviour ⊕ content_weight · the text and
image parts only (no second behaviour part), reduced to rank.space_dim when set;
items without a fused vector get none."""

from __future__ import annotations

import numpy as np
import pytest

from fusionrank.core.catalog import INDEX_VECTOR
from fusionrank.vectors.space import rec_vectors_for
from tests.unit.test_space_content import make_spec


@pytest.mark.parametrize("space", [None, ("random_orthogonal", 20, 10, 5)])
def test_rec_vectors_without_the_duplicated_behaviour_part(spark, space):
    spec = make_spec("text_image", space)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        text = rng.normal(size=12).astype(np.float32).tolist()
        image = None if i % 2 else rng.normal(size=8).astype(np.float32).tolist()
        behaviour = None if i == 3 else rng.normal(size=6).astype(np.float32).tolist()
        fused = None if i == 5 else [0.0] * 26
        rows.append((f"i{i}", text, image, behaviour, fused))
    ddl = "item_id string, text_vec array<float>, image_vec array<float>, behaviour_vec array<float>, fused_vec array<float>"
    got = {r.item_id: r[INDEX_VECTOR] for r in rec_vectors_for(spark.createDataFrame(rows, ddl), spec).collect()}
    for item, text, image, behaviour, fused in rows:
        if fused is None:
            assert got[item] is None
            continue
        content = spec.content_vectors(np.array([text]), None if image is None else np.array([image]))[0]
        expected = np.concatenate([np.zeros(6) if behaviour is None else behaviour, spec.content_weight * content])
        assert len(got[item]) == spec.ranking_dim
        np.testing.assert_allclose(got[item], expected, atol=1e-6)
