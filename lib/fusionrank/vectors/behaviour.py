"""Behaviour vectors: item vectors learned from the logs.

Default method `lae`, a low-rank linear autoencoder (low-rank EASE): with X the
users x items matrix of interaction weights and G = XᵀX = V Λ Vᵀ, the item-item
model B = V_r diag(λ/(λ+l2)) V_rᵀ keeps the top-r eigenvectors of the Gram matrix
and shrinks them like EASE's ridge penalty. Split symmetrically, every item gets
e_j = V_r[j] · sqrt(λ/(λ+l2)), and a user's score for item j is
(Σ_i x_ui e_i) · e_j: the profile is the weighted sum of the history's item
vectors, so an inner-product ANN index over e answers it exactly.

G is never formed (it is items x items). The top eigenvectors come from a
randomized eigensolver whose every step is a Spark job over the events:
Z ← Xᵀ(X Z) (two joins and grouped sums), Cholesky-QR re-orthonormalisation from
a width x width Gram summed over partitions, and finally the small eigenproblem
of (XQ)ᵀ(XQ). The driver only ever holds width x width matrices; the item
vectors stay in DataFrames. Sums are ordered (rows sorted by key inside each
group), so reruns give the same bits.

`als` (`behaviour_vectors`: Spark ALS implicit item factors) remains available.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import VECTOR

_WORK_VECTOR = T.ArrayType(T.DoubleType())


def _as_matrix(series: pd.Series, width: int) -> np.ndarray:
    if len(series) == 0:
        return np.zeros((0, width))
    return np.stack(series.map(np.asarray).tolist()).astype(np.float64, copy=False)


def _random_start(items: DataFrame, width: int, seed: int) -> DataFrame:
    """(item_id, vec): a Gaussian start vector per item, seeded by the item id."""

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            vecs = [
                np.random.default_rng([seed, zlib.crc32(item.encode("utf-8"))]).standard_normal(width)
                for item in pdf["item_id"]
            ]
            yield pd.DataFrame({"item_id": pdf["item_id"], "vec": vecs})

    return items.mapInPandas(body, T.StructType([T.StructField("item_id", T.StringType()),
                                                 T.StructField("vec", _WORK_VECTOR)]))


def _grouped_sum(rows: DataFrame, key: str, other: str, width: int, buckets: int) -> DataFrame:
    """(key, vec) = Σ weight · vec over `rows` (key, other, weight, vec), summed on the executors.

    Grouping is by a hash bucket of the key (one Python call per bucket, not per
    key); inside a bucket rows are sorted by (key, other) so the float sums are
    the same on every rerun whatever order the shuffle delivered them in.
    """

    def body(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values([key, other], kind="stable")
        keys = pdf[key].to_numpy()
        weighted = _as_matrix(pdf["vec"], width) * pdf["weight"].to_numpy(dtype=np.float64)[:, None]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=int)
        sums = np.add.reduceat(weighted, starts, axis=0) if len(keys) else np.zeros((0, width))
        return pd.DataFrame({key: keys[starts], "vec": list(sums)})

    schema = T.StructType([T.StructField(key, T.StringType()), T.StructField("vec", _WORK_VECTOR)])
    return (rows.withColumn("_bucket", F.pmod(F.hash(key), F.lit(buckets)))
            .groupBy("_bucket").applyInPandas(body, schema))


def _gram(vectors: DataFrame, width: int) -> np.ndarray:
    """Σ vᵀv over all rows: partial sums per partition, added on the driver (width² each)."""

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        total = np.zeros((width, width))
        for pdf in batches:
            m = _as_matrix(pdf["vec"], width)
            total += m.T @ m
        yield pd.DataFrame({"gram": [total.ravel()]})

    parts = vectors.select("vec").mapInPandas(body, T.StructType([T.StructField("gram", _WORK_VECTOR)])).collect()
    return np.sum([np.asarray(p["gram"]) for p in parts], axis=0).reshape(width, width)


def _times(vectors: DataFrame, key: str, matrix: np.ndarray, out_type=_WORK_VECTOR) -> DataFrame:
    """(key, vec @ matrix) for every row; `matrix` is small (width x width)."""
    spark = vectors.sparkSession
    shared = spark.sparkContext.broadcast(matrix)

    def body(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        m = shared.value
        for pdf in batches:
            out = _as_matrix(pdf["vec"], m.shape[0]) @ m
            yield pd.DataFrame({key: pdf[key], "vec": list(out)})

    return vectors.mapInPandas(body, T.StructType([T.StructField(key, T.StringType()), T.StructField("vec", out_type)]))


def _orthonormalise(vectors: DataFrame, key: str, width: int) -> DataFrame:
    """Cholesky-QR, twice (CholeskyQR2) for accuracy: columns of the result are orthonormal."""
    for _ in range(2):
        gram = _gram(vectors, width)
        lower = np.linalg.cholesky(gram + 1e-10 * np.trace(gram) / width * np.eye(width))
        vectors = _materialise(_times(vectors, key, np.linalg.inv(lower).T))
    return vectors


def _materialise(frame: DataFrame) -> DataFrame:
    """Compute now and cut the lineage: every power step builds on the previous one,
    and without the cut the query plans (and their planning time) grow with each
    step. Local checkpoints live in the executors' block managers."""
    return frame.localCheckpoint(eager=True)


def lae_item_vectors(history: DataFrame, cfg) -> DataFrame:
    """(item_id, behaviour_vec) from (user_id, item_id, weight) with weight > 0."""
    width = cfg.rank + cfg.oversample
    spark = history.sparkSession
    buckets = max(int(spark.conf.get("spark.sql.shuffle.partitions")), 1)
    events = _materialise(history.select("user_id", "item_id", F.col("weight").cast("double")))
    items = events.select("item_id").distinct()

    def by_users(item_vecs: DataFrame) -> DataFrame:  # X Z
        rows = events.join(item_vecs, "item_id")
        return _materialise(_grouped_sum(rows, "user_id", "item_id", width, buckets))

    def by_items(user_vecs: DataFrame) -> DataFrame:  # Xᵀ Y
        rows = events.join(user_vecs, "user_id")
        return _materialise(_grouped_sum(rows, "item_id", "user_id", width, buckets))

    basis = by_items(by_users(_random_start(items, width, cfg.seed)))
    for _ in range(cfg.power_iterations):
        basis = by_items(by_users(_orthonormalise(basis, "item_id", width)))
    basis = _orthonormalise(basis, "item_id", width)
    # Rayleigh-Ritz: eigenvectors of Qᵀ G Q = (XQ)ᵀ(XQ) give G's top eigenvectors.
    small = _gram(by_users(basis), width)
    values, vectors = np.linalg.eigh(small)
    top = np.argsort(-values, kind="stable")[: cfg.rank]
    values = np.maximum(values[top], 0.0)
    # Fix each eigenvector's sign so reruns agree even if a solver flips one.
    chosen = vectors[:, top] * np.sign(vectors[:, top].sum(axis=0) + 1e-300)
    projection = chosen * np.sqrt(values / (values + cfg.l2))
    result = _times(basis, "item_id", projection).select(
        "item_id", F.col("vec").cast(VECTOR).alias("behaviour_vec"))
    return _materialise(result)


def behaviour_vectors(history: DataFrame, cfg) -> DataFrame:
    """(item_id, behaviour_vec): ALS implicit item factors from (user_id, item_id, weight).

    Ids become dense integers with zipWithIndex over the sorted ids on the
    executors (ALS needs int ids; sorting makes the mapping, and so the seeded
    factors, the same on every rerun; nothing is collected to the driver).
    """
    from pyspark.ml.recommendation import ALS

    spark = history.sparkSession

    def dense_ids(column: str) -> DataFrame:
        distinct = history.select(column).distinct().orderBy(column)
        indexed = distinct.rdd.map(lambda r: r[0]).zipWithIndex()
        return spark.createDataFrame(indexed, f"{column} string, {column}_idx long").withColumn(
            f"{column}_idx", F.col(f"{column}_idx").cast("int")
        )

    users, items = dense_ids("user_id"), dense_ids("item_id")
    ratings = history.join(users, "user_id").join(items, "item_id").select("user_id_idx", "item_id_idx", "weight")
    als = ALS(
        rank=cfg.rank, maxIter=cfg.max_iter, regParam=cfg.reg_param, alpha=cfg.alpha, implicitPrefs=True,
        userCol="user_id_idx", itemCol="item_id_idx", ratingCol="weight", seed=cfg.seed,
        coldStartStrategy="drop", nonnegative=False,
    )
    model = als.fit(ratings)
    factors = model.itemFactors.select(F.col("id").alias("item_id_idx"), F.col("features").alias("behaviour_vec"))
    return factors.join(items, "item_id_idx").select("item_id", F.col("behaviour_vec").cast(VECTOR))
