"""The fused item space: H = normalise((w_t·v_text ⊕ w_i·v_image ⊕ w_b·v_behaviour)·W).

Each part is L2 normalised and a missing part is zero, so items without an image or
history still get a vector. W comes from `fusion.projection` (see `projection_matrix`):
identity, a seeded random orthogonal matrix, or one learned from co-engaged item pairs
(`learn_projection`, trained on the driver over a bounded sample).
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache, partial
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fusionrank.core.catalog import ITEM_EMBEDDINGS, VECTOR
from fusionrank.storage import fs

log = logging.getLogger("fusionrank.fusion")

# item_embeddings without the columns added at write time.
FUSED_SCHEMA = T.StructType([f for f in ITEM_EMBEDDINGS.fields if f.name not in ("model_version", "run_date", "rec_vec")])


# item_embeddings without the columns added at write time.
FUSED_SCHEMA = T.StructType([f for f in ITEM_EMBEDDINGS.fields if f.name not in ("model_version", "run_date", "rec_vec")])


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
    if not fs.exists(path):
        raise FileNotFoundError(f"learned fusion projection {path} does not exist; encode_items trains it")
    matrix = np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False).astype(np.float32)
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
    target = str(path)
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    fs.write_bytes(target, buffer.getvalue())  # readers never see half a matrix (tmp + rename, or one PUT)
    log.info("learned fusion projection %s from %d pairs over %d items: loss %.3f -> %.3f", target, int(known.sum()),
             len(items), stats["first_epoch_loss"], stats["last_epoch_loss"])
    return {"projection_pairs": int(known.sum()), "projection_items": len(items), **stats}


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


def fused_items(encoded: DataFrame, behaviour: DataFrame | None, dims: FusionDims,
                weights: tuple[float, float, float], projection: tuple) -> DataFrame:
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
        weights=weights,
        projection=projection,
    )
    return frame.mapInPandas(body, FUSED_SCHEMA)


