"""The ranking space: `rec_vec`, the one vector the ANN index holds and user profiles
are built in.

rec_vec = e_j ⊕ c·fused_j: the behaviour part carries the collaborative score with
its magnitude (which is what makes it good), the content part (the normalised fused
vector, weighted by `rank.content_weight`) lets items nobody interacted with still be
retrieved and lets a text query be matched against the same index (its behaviour
part zero; see ModelSpec.to_ranking_space).

With `rank.content: text_image` the content part is ModelSpec.content_vectors
(w_t·text ⊕ w_i·image, optionally reduced to `rank.space_dim`): fused_vec holds the
behaviour part again, which would otherwise be in rec_vec twice.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from fusionrank.core.catalog import INDEX_VECTOR, VECTOR


def rec_vectors(items: DataFrame, behaviour_dim: int, content_weight: float) -> DataFrame:
    """Adds `rec_vec` = behaviour_vec (zeros when missing) ⊕ content_weight · fused_vec."""
    weight = float(content_weight)

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            out = []
            for behaviour, fused in zip(pdf["behaviour_vec"], pdf["fused_vec"]):
                if fused is None:
                    out.append(None)
                    continue
                b = np.zeros(behaviour_dim, dtype=np.float32) if behaviour is None else np.asarray(behaviour, np.float32)
                out.append(np.concatenate([b, weight * np.asarray(fused, np.float32)]))
            pdf = pdf.copy()
            pdf[INDEX_VECTOR] = out
            yield pdf

    schema = T.StructType(items.schema.fields + [T.StructField(INDEX_VECTOR, VECTOR)])
    return items.mapInPandas(body, schema)


def rec_vectors_for(items: DataFrame, spec) -> DataFrame:
    """`rec_vec` as `spec` (a ModelSpec) defines the ranking space: `rec_vectors` for
    content "fused", else behaviour_vec ⊕ content_weight · spec.content_vectors(text, image)."""
    if spec.content == "fused":
        return rec_vectors(items, spec.behaviour_dim, spec.content_weight)
    weight, behaviour_dim = np.float32(spec.content_weight), spec.behaviour_dim

    def stack(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
        present = np.array([v is not None for v in column], dtype=bool)
        out = np.zeros((len(column), dim), dtype=np.float32)
        if present.any():
            out[present] = np.stack([np.asarray(v, np.float32) for v, p in zip(column, present) if p])
        return out, present

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            pdf = pdf.copy()
            if len(pdf) == 0:
                pdf[INDEX_VECTOR] = []
                yield pdf
                continue
            text, _ = stack(pdf["text_vec"], spec.text_dim)
            image = stack(pdf["image_vec"], spec.image_dim)[0] if spec.image_dim else None
            content = weight * spec.content_vectors(text, image)
            behaviour = stack(pdf["behaviour_vec"], behaviour_dim)[0]
            joined = np.concatenate([behaviour, content], axis=1)
            pdf[INDEX_VECTOR] = [None if f is None else row for f, row in zip(pdf["fused_vec"], joined)]
            yield pdf

    schema = T.StructType(items.schema.fields + [T.StructField(INDEX_VECTOR, VECTOR)])
    return items.mapInPandas(body, schema)
