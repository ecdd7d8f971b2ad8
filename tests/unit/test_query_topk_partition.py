"""query_topk on the executors: a partition's rows (each query with its engaged items
as arrays) unpack into the frames the search takes, in the driver's query order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusionrank.ranks.query_topk import TOPK_COLUMNS, TOPK_SCHEMA, unpack_queries


def test_unpack_queries_orders_queries_and_flattens_engagement():
    frame = pd.DataFrame({
        "query": ["red shoe", "blue hat", "zebra", "apple"],
        "searches": [5, 9, 5, 1],
        "engaged_items": [np.array(["i2", "i1"]), None, np.array([], dtype=object), np.array(["i9"])],
        "engaged_weights": [np.array([2.0, 1.5]), None, np.array([]), np.array([0.5])],
        "engaged_clicks": [np.array([1, 0]), None, np.array([]), np.array([3])],
    })
    queries, engagement = unpack_queries(frame)
    assert queries["query"].tolist() == ["blue hat", "red shoe", "zebra", "apple"]  # searches desc, then text
    assert queries["searches"].tolist() == [9, 5, 5, 1]
    assert engagement.to_dict("records") == [
        {"query": "red shoe", "item_id": "i2", "engagement": 2.0, "clicks": 1},
        {"query": "red shoe", "item_id": "i1", "engagement": 1.5, "clicks": 0},
        {"query": "apple", "item_id": "i9", "engagement": 0.5, "clicks": 3},
    ]


def test_executor_schema_is_the_tables_columns_but_run_date_and_version():
    assert TOPK_SCHEMA.fieldNames() == TOPK_COLUMNS
    assert "run_date" not in TOPK_COLUMNS and "model_version" not in TOPK_COLUMNS
