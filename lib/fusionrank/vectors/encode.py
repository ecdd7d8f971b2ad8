"""The encoder UDF: item text (and image) vectors on the executors.

Only new or changed items reach it (`plan_encoding`: items whose `content_hash` and
`model_version` match the previous `item_embeddings` partition are carried over).
It runs inside `mapInPandas` with the models loaded once per Python worker
(`vectors.encoders`). Images are read by URI inside the same UDF (local path,
file:// or any fsspec URI), decoded and resized with Pillow on the executor; an item
without an image, or whose image is missing or corrupt, gets a null image_vec
(counted and logged).
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from typing import Iterator

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import VECTOR
from fusionrank.vectors.encoders import (get_image_encoder, get_text_encoder, set_torch_threads, worker_image_model,
                                        worker_text_model)
from fusionrank.core.spark import task_cpus

ENCODED_SCHEMA = T.StructType(
    [
        T.StructField("item_id", T.StringType(), False),
        T.StructField("content_hash", T.StringType(), False),
        T.StructField("text_vec", VECTOR),
        T.StructField("image_vec", VECTOR),
    ]
)

# What the encoder UDF returns: the encoded columns and how each item's image went
# (ok | absent: no image_uri | missing: unreadable | corrupt: undecodable; null
# when images are not encoded). The status feeds the stage counts, not the table.
ENCODE_OUTPUT = T.StructType(ENCODED_SCHEMA.fields + [T.StructField("image_status", T.StringType())])
IMAGE_STATUSES = ("ok", "absent", "missing", "corrupt")
# Failures logged per partition before the rest are only counted.
MAX_LOGGED_IMAGE_FAILURES = 20

log = logging.getLogger("fusionrank.vectors")


def item_text(title: Column, category: Column, brand: Column, description: Column) -> Column:
    """The text a product is encoded from: title first, it matters most."""
    return F.concat_ws(". ", title, category, brand, F.substring(description, 1, 2000))


def read_uri(uri: str) -> bytes:
    """The bytes at `uri`: a local path, file://, or any scheme fsspec knows (s3://, gs://, https://...)."""
    if "://" not in uri:
        with open(uri, "rb") as handle:
            return handle.read()
    if uri.startswith("file://"):
        with open(uri[len("file://"):], "rb") as handle:
            return handle.read()
    try:
        import fsspec
    except ImportError as exc:
        raise OSError(f"reading {uri.split('://')[0]}:// URIs needs the fsspec package") from exc
    with fsspec.open(uri, "rb") as handle:
        return handle.read()


def decode_image(data: bytes, max_side: int):
    """An RGB PIL image no larger than `max_side` (JPEGs decode straight at reduced scale)."""
    import io

    from PIL import Image

    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (max_side, max_side))
        image = opened.convert("RGB")  # forces the decode: truncated files fail here
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def load_image(uri: str | None, max_side: int):
    """(image or None, status, reason): status is one of IMAGE_STATUSES."""
    if uri is None or not str(uri).strip():
        return None, "absent", None
    try:
        data = read_uri(str(uri))
    except Exception as exc:  # not found, no permission, network: the image is missing
        return None, "missing", f"{type(exc).__name__}: {exc}"
    try:
        return decode_image(data, max_side), "ok", None
    except Exception as exc:  # Pillow raises many types for bad bytes
        return None, "corrupt", f"{type(exc).__name__}: {exc}"


def _image_vectors(uris: list, item_ids: list, image: dict) -> tuple[list, list]:
    """(image_vec or None per row, status per row) for one Arrow batch."""
    from concurrent.futures import ThreadPoolExecutor


    encoder = get_image_encoder(image["backend"], worker_image_model(image), image_size=image["image_size"],
                                dtype=image["dtype"])
    max_side = max(2 * image["image_size"], 512)
    vectors: list = [None] * len(uris)
    statuses: list = [None] * len(uris)
    chunk = image["batch_size"]
    # Reading is I/O bound (object stores): a few threads overlap the waits.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(uris), chunk):
            rows = range(start, min(start + chunk, len(uris)))
            loaded = list(pool.map(lambda i: load_image(uris[i], max_side), rows))
            good = []
            for i, (img, status, reason) in zip(rows, loaded):
                statuses[i] = status
                if img is not None:
                    good.append((i, img))
                elif status != "absent":
                    image["failures"] += 1
                    if image["failures"] <= MAX_LOGGED_IMAGE_FAILURES:
                        log.warning("item %s: image %s is %s (%s); encoded without an image",
                                    item_ids[i], uris[i], status, reason)
            if good:
                encoded = encoder.encode([img for _, img in good], batch_size=chunk)
                for (i, _), vec in zip(good, encoded):
                    vectors[i] = vec
    return vectors, statuses


def encode_partition(
    batches: Iterator[pd.DataFrame],
    model_path: str,
    batch_size: int,
    max_length: int,
    dtype: str = "auto",
    image: dict | None = None,
    package: bool = False,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: runs on executors, each model loaded once per Python worker.

    `image` (None: no image part) holds backend, path, batch_size, image_size, dtype.
    """

    set_torch_threads(task_cpus())
    encoder = get_text_encoder(worker_text_model(model_path, package), dtype=dtype)
    image = dict(image, failures=0) if image else None
    for pdf in batches:
        if pdf.empty:
            continue
        text = encoder.encode(pdf["text"].fillna("").tolist(), batch_size=batch_size, max_length=max_length)
        if image is None:
            image_vecs, statuses = [None] * len(pdf), [None] * len(pdf)
        else:
            uris = [None if pd.isna(u) else u for u in pdf["image_uri"]]
            image_vecs, statuses = _image_vectors(uris, pdf["item_id"].tolist(), image)
        yield pd.DataFrame(
            {
                "item_id": pdf["item_id"].values,
                "content_hash": pdf["content_hash"].values,
                "text_vec": list(text),
                "image_vec": image_vecs,
                "image_status": statuses,
            }
        )
    if image and image["failures"] > MAX_LOGGED_IMAGE_FAILURES:
        log.warning("%d image failures in this partition (first %d logged)", image["failures"], MAX_LOGGED_IMAGE_FAILURES)


def plan_encoding(
    catalog: DataFrame,
    previous: DataFrame | None,
    version: str,
) -> tuple[DataFrame, DataFrame]:
    """(rows to carry over from `previous`, catalog rows that need encoding)."""
    current = catalog.select("item_id", "content_hash", "title", "category", "brand", "description", "image_uri")
    if previous is None:
        empty = current.sparkSession.createDataFrame([], T.StructType(ENCODED_SCHEMA.fields + [T.StructField("encoded_at", T.TimestampType())]))
        return empty, current
    reusable = previous.where(F.col("model_version") == version).select(
        "item_id", "content_hash", "text_vec", "image_vec", "encoded_at"
    )
    carried = current.select("item_id", "content_hash").join(reusable, ["item_id", "content_hash"], "inner")
    todo = current.join(reusable.select("item_id", "content_hash"), ["item_id", "content_hash"], "left_anti")
    return carried, todo


def encode(todo: DataFrame, spec, partitions: int = 0, profile=None) -> DataFrame:
    """Encode `todo` (catalog rows) on the executors with the encoders of `spec` (a
    ModelSpec); returns ENCODE_OUTPUT rows. `profile`: the stage-level resource profile
    the encoder tasks run under (their GPU), None for the session's task resources."""
    frame = todo.select(
        "item_id",
        "content_hash",
        item_text(F.col("title"), F.col("category"), F.col("brand"), F.col("description")).alias("text"),
        "image_uri",
    )
    if partitions:
        frame = frame.repartition(partitions)
    body = partial(
        encode_partition,
        model_path=spec.text_path,
        package=spec.text_package,
        batch_size=spec.text_batch_size,
        max_length=spec.text_max_length,
        dtype=spec.text_dtype,
        image=spec.image,
    )
    return frame.mapInPandas(body, ENCODE_OUTPUT, profile=profile)


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
