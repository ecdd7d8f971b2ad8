"""encode_items: item vectors from the clean catalog and the logs.

* text: items whose `content_hash` and `model_version` match the latest earlier (or
  same date's) `item_embeddings` partition are carried over; only new or changed
  items go through the encoder, which runs inside `mapInPandas` on the executors
  with the model loaded once per Python worker (`fusionrank.models`).
* behaviour: Spark ALS (implicit feedback) item factors fitted on the training
  events, recomputed every night (they follow the logs, not the catalog).
* image: read by URI inside the same UDF (local path, file:// or any fsspec URI),
  decoded and resized with Pillow on the executor; an item without an image, or
  whose image is missing or corrupt, gets a null image_vec (counted and logged).
* fused: H = normalise((w_t·v_text ⊕ w_i·v_image ⊕ w_b·v_behaviour)·W), each part
  L2 normalised, a missing part zero, so items without an image or history still
  get a vector. W comes from `fusion.projection` (see `projection_matrix`).
  `query_vectors` maps text-encoder outputs into the same space (for search).
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import ITEM_EMBEDDINGS, VECTOR

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

log = logging.getLogger("fusionrank.encoding")

# item_embeddings without the columns added at write time.
FUSED_SCHEMA = T.StructType([f for f in ITEM_EMBEDDINGS.fields if f.name not in ("model_version", "run_date", "rec_vec")])


def item_text(title: Column, category: Column, brand: Column, description: Column) -> Column:
    """The text a product is encoded from: title first, it matters most."""
    return F.concat_ws(". ", title, category, brand, F.substring(description, 1, 2000))


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def fuse(parts: list[tuple[np.ndarray | None, float]], projection: np.ndarray | None = None) -> np.ndarray:
    """H = (w_1 v_1 ⊕ w_2 v_2 ⊕ ...)·W, each part L2 normalised, the result L2
    normalised.

    Every part is (matrix of shape (n, d_i), weight). An item missing a modality
    has a zero row in that matrix (see `_matrix`) and an all-zero row stays zero
    rather than becoming NaN. A part given as None is a modality that is not
    configured at all and takes no columns. `projection` (W, shape (sum d_i, d_out))
    None is the identity.
    """
    blocks = [l2_normalize(m) * np.float32(w) for m, w in parts if m is not None]
    if not blocks:
        raise ValueError("fuse needs at least one modality")
    joined = np.concatenate(blocks, axis=1)
    if projection is not None:
        if projection.shape[0] != joined.shape[1]:
            raise ValueError(f"fusion projection expects {projection.shape[0]} inputs, the parts give {joined.shape[1]}")
        joined = joined @ projection
    return l2_normalize(joined)


class FusionDims(NamedTuple):
    """Sizes of the fused parts; 0 is a modality that is not configured."""

    text: int
    image: int
    behaviour: int

    @property
    def total(self) -> int:
        return self.text + self.image + self.behaviour


def fusion_dims(settings) -> FusionDims:
    from fusionrank.vectors.encoders import image_dim, text_dim

    behaviour = settings.behaviour.rank if settings.behaviour.enabled else 0
    return FusionDims(text_dim(settings), image_dim(settings), behaviour)


def learned_projection_path(settings, version: str) -> Path:
    """Where the learned W of `version` lives (shared storage: executors read it)."""
    return Path(settings.storage.root) / "_fusion" / f"{version}.npy"


def projection_spec(settings, version: str | None = None) -> tuple:
    """A small hashable description of W that executors turn into the matrix."""
    cfg = settings.fusion
    d_in = fusion_dims(settings).total
    if cfg.projection == "identity":
        return ("identity", d_in)
    d_out = cfg.output_dim or d_in
    if cfg.projection == "random_orthogonal":
        if d_out > d_in:
            raise ValueError(f"fusion.output_dim: {d_out} is larger than the concatenated size {d_in}; "
                             "an orthogonal projection cannot add dimensions")
        return ("random_orthogonal", d_in, d_out, cfg.seed)
    if version is None:
        from fusionrank.vectors.encoders import model_version

        version = model_version(settings)
    return ("learned", d_in, d_out, str(learned_projection_path(settings, version)))


@lru_cache(maxsize=4)
def projection_matrix(spec: tuple) -> np.ndarray | None:
    """W for a `projection_spec` (None for the identity); cached per Python worker.

    random_orthogonal: QR of a seeded Gaussian matrix with the signs of R's diagonal
    folded in, so every machine rebuilds the same W from (d_in, d_out, seed).
    """
    kind = spec[0]
    if kind == "identity":
        return None
    if kind == "random_orthogonal":
        _, d_in, d_out, seed = spec
        gaussian = np.random.default_rng(seed).standard_normal((d_in, d_out))
        q, r = np.linalg.qr(gaussian)
        return (q * np.sign(np.diag(r))).astype(np.float32)
    _, d_in, d_out, path = spec
    if not Path(path).exists():
        raise FileNotFoundError(f"learned fusion projection {path} does not exist; encode_items trains it")
    matrix = np.load(path, allow_pickle=False).astype(np.float32)
    if matrix.shape != (d_in, d_out):
        raise ValueError(f"learned fusion projection {path} has shape {matrix.shape}, expected {(d_in, d_out)}")
    return matrix


def cooccurring_pairs(history: DataFrame, max_pairs: int, items_per_user: int) -> DataFrame:
    """(item_a, item_b, users): items in the same users' histories, the `max_pairs`
    shared by most users. Each user contributes at most `items_per_user` items (their
    heaviest), which bounds the self-join at items_per_user² rows per user."""
    from pyspark.sql import Window

    by_weight = Window.partitionBy("user_id").orderBy(F.col("weight").desc(), F.col("item_id"))
    top = (history.where(F.col("weight") > 0).withColumn("_rank", F.row_number().over(by_weight))
           .where(F.col("_rank") <= items_per_user).select("user_id", "item_id"))
    a, b = top.alias("a"), top.alias("b")
    pairs = (a.join(b, (F.col("a.user_id") == F.col("b.user_id")) & (F.col("a.item_id") < F.col("b.item_id")))
             .groupBy(F.col("a.item_id").alias("item_a"), F.col("b.item_id").alias("item_b"))
             .agg(F.count("*").alias("users")))
    return pairs.orderBy(F.col("users").desc(), "item_a", "item_b").limit(max_pairs)


def fusion_inputs(pdf: pd.DataFrame, dims: FusionDims, weights: tuple[float, float, float]) -> np.ndarray:
    """The concatenation fed to W: w_t·t ⊕ w_i·i ⊕ w_b·b, each part L2 normalised."""
    columns = ("text_vec", "image_vec", "behaviour_vec")
    blocks = [l2_normalize(_matrix(pdf[c], d)) * np.float32(w) for c, d, w in zip(columns, dims, weights) if d]
    return np.concatenate(blocks, axis=1)


def train_projection(inputs: np.ndarray, pair_a: np.ndarray, pair_b: np.ndarray, d_out: int, cfg) -> tuple[np.ndarray, dict]:
    """A linear map (d_in, d_out) that pulls co-occurring items together: InfoNCE over
    in-batch negatives, symmetric, started from a seeded random orthogonal W."""
    import torch

    d_in = inputs.shape[1]
    if d_out > d_in:
        raise ValueError(f"fusion.output_dim: {d_out} is larger than the concatenated size {d_in}")
    start = projection_matrix(("random_orthogonal", d_in, d_out, cfg.seed))
    generator = torch.Generator().manual_seed(cfg.seed)
    weights = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimiser = torch.optim.Adam([weights], lr=cfg.learn_rate)
    x = torch.from_numpy(inputs)
    a, b = torch.from_numpy(pair_a), torch.from_numpy(pair_b)
    losses = []
    for _ in range(cfg.learn_epochs):
        order = torch.randperm(len(a), generator=generator)
        total, batches = 0.0, 0
        for begin in range(0, len(order), cfg.learn_batch_size):
            idx = order[begin:begin + cfg.learn_batch_size]
            if len(idx) < 2:
                continue
            za = torch.nn.functional.normalize(x[a[idx]] @ weights, dim=1)
            zb = torch.nn.functional.normalize(x[b[idx]] @ weights, dim=1)
            logits = za @ zb.T / cfg.learn_temperature
            labels = torch.arange(len(idx))
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
    return weights.detach().numpy().astype(np.float32), {"first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]}


def learn_projection(encoded: DataFrame, behaviour: DataFrame | None, history: DataFrame, dims: FusionDims,
                     cfg, spec: tuple) -> dict:
    """Train W for a `("learned", d_in, d_out, path)` spec and save it at `path`.

    Only a bounded sample reaches the driver: at most `learn_pairs` pairs and the
    vectors of the items in them.
    """
    _, d_in, d_out, path = spec
    pairs = cooccurring_pairs(history, cfg.learn_pairs, cfg.learn_items_per_user).toPandas()
    if len(pairs) < cfg.learn_batch_size:
        raise ValueError(f"fusion.projection learned: only {len(pairs)} co-occurring item pairs in the training "
                         f"events (need at least learn_batch_size={cfg.learn_batch_size}); use random_orthogonal")
    spark = encoded.sparkSession
    wanted = spark.createDataFrame(pd.DataFrame({"item_id": pd.unique(pairs[["item_a", "item_b"]].values.ravel())}))
    frame = encoded.join(F.broadcast(wanted), "item_id")
    if behaviour is not None:
        frame = frame.join(behaviour, "item_id", "left")
    else:
        frame = frame.withColumn("behaviour_vec", F.lit(None).cast(VECTOR))
    items = frame.select("item_id", "text_vec", "image_vec", "behaviour_vec").toPandas()
    inputs = fusion_inputs(items, dims, (cfg.text_weight, cfg.image_weight, cfg.behaviour_weight))
    row = {item: i for i, item in enumerate(items["item_id"])}
    known = pairs["item_a"].isin(row) & pairs["item_b"].isin(row)
    pair_a = pairs.loc[known, "item_a"].map(row).to_numpy(np.int64)
    pair_b = pairs.loc[known, "item_b"].map(row).to_numpy(np.int64)
    matrix, stats = train_projection(inputs, pair_a, pair_b, d_out, cfg)
    assert matrix.shape == (d_in, d_out)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial_file = target.with_suffix(".partial.npy")
    np.save(partial_file, matrix, allow_pickle=False)
    partial_file.replace(target)  # readers never see half a matrix
    log.info("learned fusion projection %s from %d pairs over %d items: loss %.3f -> %.3f", target, int(known.sum()),
             len(items), stats["first_epoch_loss"], stats["last_epoch_loss"])
    return {"projection_pairs": int(known.sum()), "projection_items": len(items), **stats}


def query_vectors(text_vecs: np.ndarray, settings, version: str | None = None) -> np.ndarray:
    """Text-encoder outputs (n, text_dim) -> the fused item space (n, d_out).

    A query is an item with only its text part: w_t·v_text ⊕ 0 ⊕ 0, through the same
    W, normalised; so inner product with `fused_vec` compares like with like.
    """
    dims = fusion_dims(settings)
    text_vecs = np.asarray(text_vecs, dtype=np.float32)
    if text_vecs.ndim != 2 or text_vecs.shape[1] != dims.text:
        raise ValueError(f"query_vectors expects (n, {dims.text}) text vectors, got {text_vecs.shape}")
    n = len(text_vecs)
    parts = [(text_vecs, settings.fusion.text_weight)]
    if dims.image:
        parts.append((np.zeros((n, dims.image), np.float32), settings.fusion.image_weight))
    if dims.behaviour:
        parts.append((np.zeros((n, dims.behaviour), np.float32), settings.fusion.behaviour_weight))
    return fuse(parts, projection_matrix(projection_spec(settings, version)))


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

    from fusionrank.vectors.encoders import get_image_encoder

    encoder = get_image_encoder(image["backend"], image["path"], image_size=image["image_size"], dtype=image["dtype"])
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
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: runs on executors, each model loaded once per Python worker.

    `image` (None: no image part) holds backend, path, batch_size, image_size, dtype.
    """
    from fusionrank.vectors.encoders import get_text_encoder, set_torch_threads
    from fusionrank.core.spark import task_cpus

    set_torch_threads(task_cpus())
    encoder = get_text_encoder(model_path, dtype=dtype)
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
    dims: FusionDims,
    weights: tuple[float, float, float],
    projection: tuple,
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the fused vector of every item."""
    matrix = projection_matrix(projection)
    for pdf in batches:
        if pdf.empty:
            continue
        columns = ("text_vec", "image_vec", "behaviour_vec")
        parts = [(_matrix(pdf[c], d), w) for c, d, w in zip(columns, dims, weights)]
        out = pdf.copy()
        out["fused_vec"] = list(fuse(parts, matrix))
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


def fused_items(encoded: DataFrame, behaviour: DataFrame | None, dims: FusionDims, fusion_cfg,
                projection: tuple) -> DataFrame:
    """Join encoded (text, image) and behaviour vectors per item and fuse them on the executors.

    `dims.behaviour` must be 0 when `behaviour` is None (and non-zero otherwise).
    """
    if (behaviour is None) != (dims.behaviour == 0):
        raise ValueError("fused_items: behaviour vectors and dims.behaviour disagree")
    if behaviour is None:
        frame = encoded.withColumn("behaviour_vec", F.lit(None).cast(VECTOR))
    else:
        frame = encoded.join(behaviour, "item_id", "left")
    frame = frame.select(*[c for c in FUSED_SCHEMA.fieldNames() if c != "fused_vec"])
    body = partial(
        fuse_partition,
        dims=dims,
        weights=(fusion_cfg.text_weight, fusion_cfg.image_weight, fusion_cfg.behaviour_weight),
        projection=projection,
    )
    return frame.mapInPandas(body, FUSED_SCHEMA)


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


def image_options(settings) -> dict | None:
    """What the encoder UDF needs to know about the image model (None: no images)."""
    from fusionrank.vectors.encoders import image_model_path

    cfg = settings.models.image
    if cfg.backend == "none":
        return None
    return {"backend": cfg.backend, "path": str(image_model_path(settings)), "batch_size": cfg.batch_size,
            "image_size": cfg.image_size, "dtype": cfg.dtype}


def encode(todo: DataFrame, settings, partitions: int = 0) -> DataFrame:
    """Encode `todo` (catalog rows) on the executors; returns ENCODE_OUTPUT rows."""
    from fusionrank.vectors.encoders import text_model_path

    text_cfg = settings.models.text
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
        model_path=str(text_model_path(settings)),
        batch_size=text_cfg.batch_size,
        max_length=text_cfg.max_length,
        dtype=text_cfg.dtype,
        image=image_options(settings),
    )
    return frame.mapInPandas(body, ENCODE_OUTPUT)


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
