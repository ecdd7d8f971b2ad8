"""encode_items: item vectors from the clean catalog, incrementally.

Items whose `content_hash` and `model_version` match the latest earlier (or same
date's) `item_embeddings` partition are carried over; only new or changed items
go through the encoder, which runs inside `mapInPandas` on the executors with the
model loaded once per Python worker (`fusionrank.models`).
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

from fusionrank.data.schemas import VECTOR

ENCODED_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("content_hash", T.StringType(), False),
        T.StructField("text_vec", VECTOR),
        T.StructField("image_vec", VECTOR),
        T.StructField("fused_vec", VECTOR),
    ]
)


def item_text(title: Column, category: Column, brand: Column, description: Column) -> Column:
    """The text a product is encoded from: title first, it matters most."""
    return F.concat_ws(". ", title, category, brand, F.substring(description, 1, 2000))


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def fuse(parts: list[tuple[np.ndarray | None, float]]) -> np.ndarray:
    """H = (w_1 v_1 ⊕ w_2 v_2 ⊕ ...), each part L2 normalised, a missing part
    (None rows or a None matrix) zero, the result L2 normalised.

    Every part is (matrix of shape (n, d_i) or None, weight); an all-zero row stays
    zero rather than becoming NaN.
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
    text_weight: float,
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
        fused = fuse([(text, text_weight)])
        yield pd.DataFrame(
            {
                "item_id": pdf["item_id"].values,
                "content_hash": pdf["content_hash"].values,
                "text_vec": list(text),
                "image_vec": [None] * len(pdf),
                "fused_vec": list(fused),
            }
        )


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
        "item_id", "content_hash", "text_vec", "image_vec", "fused_vec", "encoded_at"
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
        text_weight=settings.fusion.text_weight,
    )
    return frame.mapInPandas(body, ENCODED_SCHEMA)


def with_metadata(df: DataFrame, version: str, run_date: dt.date, encoded_at: Column | None = None) -> DataFrame:
    encoded_at = encoded_at if encoded_at is not None else F.current_timestamp()
    return df.select(
        "item_id",
        "content_hash",
        F.lit(version).alias("model_version"),
        "text_vec",
        "image_vec",
        "fused_vec",
        encoded_at.alias("encoded_at"),
        F.lit(run_date).alias("run_date"),
    )
