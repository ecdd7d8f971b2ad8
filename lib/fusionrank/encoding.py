"""encode_items: item vectors from the clean catalog and the logs.

* text: items whose `content_hash` and `model_version` match the latest earlier (or
  same date's) `item_embeddings` partition are carried over; only new or changed
  items go through the encoder, which runs inside `mapInPandas` on the executors
  with the model loaded once per Python worker (`fusionrank.models`).
* behaviour: Spark ALS (implicit feedback) item factors fitted on the training
  events, recomputed every night (they follow the logs, not the catalog).
* fused: H = normalise(w_t·v_text ⊕ w_b·v_behaviour), each part L2 normalised,
  a missing part zero, so items without history still get a vector.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.data.schemas import ITEM_EMBEDDINGS, VECTOR

ENCODED_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("content_hash", T.StringType(), False),
        T.StructField("text_vec", VECTOR),
        T.StructField("image_vec", VECTOR),
    ]
)

# item_embeddings without the columns added at write time.
FUSED_SCHEMA = T.StructType([f for f in ITEM_EMBEDDINGS.fields if f.name not in ("model_version", "run_date", "rec_vec")])


def item_text(title: Column, category: Column, brand: Column, description: Column) -> Column:
    """The text a product is encoded from: title first, it matters most."""
    return F.concat_ws(". ", title, category, brand, F.substring(description, 1, 2000))


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def fuse(parts: list[tuple[np.ndarray | None, float]]) -> np.ndarray:
    """H = (w_1 v_1 ⊕ w_2 v_2 ⊕ ...), each part L2 normalised, the result L2
    normalised.

    Every part is (matrix of shape (n, d_i), weight). An item missing a modality
    has a zero row in that matrix (see `_matrix`) and an all-zero row stays zero
    rather than becoming NaN. A part given as None is a modality that is not
    configured at all and takes no columns.
    """
    blocks = [l2_normalize(m) * np.float32(w) for m, w in parts if m is not None]
    if not blocks:
        raise ValueError("fuse needs at least one modality")
    return l2_normalize(np.concatenate(blocks, axis=1))


def encode_partition(
    batches: Iterator[pd.DataFrame],
    model_path: str,
    batch_size: int,
    max_length: int,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: runs on executors, one model per Python worker."""
    from fusionrank.models import get_text_encoder, set_torch_threads
    from fusionrank.spark import task_cpus

    set_torch_threads(task_cpus())
    encoder = get_text_encoder(model_path)
    for pdf in batches:
        if pdf.empty:
            continue
        text = encoder.encode(pdf["text"].fillna("").tolist(), batch_size=batch_size, max_length=max_length)
        yield pd.DataFrame(
            {
                "item_id": pdf["item_id"].values,
                "content_hash": pdf["content_hash"].values,
                "text_vec": list(text),
                "image_vec": [None] * len(pdf),
            }
        )


def _matrix(column: pd.Series, dim: int) -> np.ndarray | None:
    """Stack a column of vectors; missing entries become zero rows."""
    if dim == 0:
        return None
    out = np.zeros((len(column), dim), dtype=np.float32)
    for i, value in enumerate(column):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[i] = np.asarray(value, dtype=np.float32)
    return out


def fuse_partition(
    batches: Iterator[pd.DataFrame],
    text_dim: int,
    behaviour_dim: int,
    text_weight: float,
    behaviour_weight: float,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the fused vector of every item."""
    for pdf in batches:
        if pdf.empty:
            continue
        parts = [(_matrix(pdf["text_vec"], text_dim), text_weight)]
        if behaviour_dim:
            parts.append((_matrix(pdf["behaviour_vec"], behaviour_dim), behaviour_weight))
        out = pdf.copy()
        out["fused_vec"] = list(fuse(parts))
        yield out[FUSED_SCHEMA.fieldNames()]


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


def fused_items(text: DataFrame, behaviour: DataFrame | None, text_dim: int, behaviour_dim: int, fusion_cfg) -> DataFrame:
    """Join text (and behaviour) vectors per item and fuse them on the executors."""
    if behaviour is None:
        frame = text.withColumn("behaviour_vec", F.lit(None).cast(VECTOR))
    else:
        frame = text.join(behaviour, "item_id", "left")
    frame = frame.select(*[c for c in FUSED_SCHEMA.fieldNames() if c != "fused_vec"])
    body = partial(
        fuse_partition,
        text_dim=text_dim,
        behaviour_dim=behaviour_dim if behaviour is not None else 0,
        text_weight=fusion_cfg.text_weight,
        behaviour_weight=fusion_cfg.behaviour_weight,
    )
    return frame.mapInPandas(body, FUSED_SCHEMA)


def plan_encoding(
    catalog: DataFrame,
    previous: DataFrame | None,
    version: str,
) -> tuple[DataFrame, DataFrame]:
    """(rows to carry over from `previous`, catalog rows that need encoding)."""
    current = catalog.select("item_id", "content_hash", "title", "category", "brand", "description")
    if previous is None:
        empty = current.sparkSession.createDataFrame([], T.StructType(ENCODED_SCHEMA.fields + [T.StructField("encoded_at", T.TimestampType())]))
        return empty, current
    reusable = previous.where(F.col("model_version") == version).select(
        "item_id", "content_hash", "text_vec", "image_vec", "encoded_at"
    )
    carried = current.select("item_id", "content_hash").join(reusable, ["item_id", "content_hash"], "inner")
    todo = current.join(reusable.select("item_id", "content_hash"), ["item_id", "content_hash"], "left_anti")
    return carried, todo


def encode(todo: DataFrame, model_path: str, settings, partitions: int = 0) -> DataFrame:
    """Encode `todo` (catalog rows) on the executors; returns ENCODED_SCHEMA rows."""
    text_cfg = settings.models.text
    frame = todo.select(
        "item_id",
        "content_hash",
        item_text(F.col("title"), F.col("category"), F.col("brand"), F.col("description")).alias("text"),
    )
    if partitions:
        frame = frame.repartition(partitions)
    body = partial(
        encode_partition,
        model_path=str(model_path),
        batch_size=text_cfg.batch_size,
        max_length=text_cfg.max_length,
    )
    return frame.mapInPandas(body, ENCODED_SCHEMA)


def with_metadata(df: DataFrame, version: str, run_date: dt.date) -> DataFrame:
    return df.select(
        "item_id",
        "content_hash",
        F.lit(version).alias("model_version"),
        "text_vec",
        "image_vec",
        "behaviour_vec",
        "fused_vec",
        "encoded_at",
        F.lit(run_date).alias("run_date"),
        "rec_vec",
    )
