"""Integer-array helpers shared by the rank pass and the re-ranker (numpy only)."""

from __future__ import annotations

import numpy as np


def unique_in_range(values: np.ndarray, bound: int, index_dtype=np.intp) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(values, return_inverse=True)` for integers in [0, bound) (unchecked),
    with a presence table of `bound` flags instead of a sort: faster where the values
    are dense in their range. The inverse is `index_dtype` (int32 halves the lookup
    table; only the slots of present values are ever written or read)."""
    present = np.zeros(bound, dtype=bool)
    present[values] = True
    distinct = np.flatnonzero(present)
    lookup = np.empty(bound, dtype=index_dtype)
    lookup[distinct] = np.arange(len(distinct), dtype=index_dtype)
    return distinct, np.take(lookup, values)
