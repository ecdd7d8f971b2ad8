"""rank's search mechanics: the vectorised batch search equals the per-user reference
(`top_unseen` + `pick_reasons`), and the Spark stage gives the same rows on any partitioning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from fusionrank.ranks import users as ranking
from fusionrank.core.config import RankConfig
from tests.unit.test_rank_search import loaded, loaded_path, users_batch  # noqa: F401,F811 (loaded: a fixture)


def test_spark_rank_is_the_same_on_any_partitioning(spark, loaded):
    batch = users_batch(loaded, n=60, seed=1)
    frame = spark.createDataFrame(pa.Table.from_batches([batch]).to_pandas())
    cfg = RankConfig(k=5, search_batch=16)
    path = str(loaded_path(loaded))
    one = ranking.rank_users(frame, path, cfg, partitions=1).toPandas()
    three = ranking.rank_users(frame.repartition(2), path, cfg, partitions=3).toPandas()
    key = ["user_id", "rank"]
    one, three = one.sort_values(key).reset_index(drop=True), three.sort_values(key).reset_index(drop=True)
    assert len(one) == 60 * 5  # 600 items: every user has 5 unseen
    assert one[["user_id", "rank", "item_id", "reason_item_id"]].equals(three[["user_id", "rank", "item_id", "reason_item_id"]])
    np.testing.assert_allclose(one["score"], three["score"], rtol=1e-5)


