"""The ranking space: `rec_vec`, the one vector the ANN index holds and user profiles
are built in.

rec_vec = e_j ⊕ c·fused_j: the behaviour part carries the collaborative score with
its magnitude (which is what makes it good), the content part (the normalised fused
vector, weighted by `rank.content_weight`) lets items nobody interacted with still be
retrieved and lets a text query be matched against the same index (its behaviour
part zero; see ModelSpec.to_ranking_space).
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
