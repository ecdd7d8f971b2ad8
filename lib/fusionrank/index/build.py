"""build_index: a FAISS inner-product index over the items' fused vectors.

The artifact for a run date is a folder `<storage.root>/<index_dir>/run_date=D/`
holding `index.faiss`, `ids.parquet` (the item id of every index position) and
`manifest.json` (count, dim, type, params, model_version, created_at, self-check
recall), and `attributes/` (item_id, title, top-level category of the indexed items,
Parquet written by Spark) so that ranking workers explain and diversify without a
Spark join. It is written to a temporary folder and renamed into place, so readers
see the old artifact or the new one, never half of one.

Building follows the autofaiss pattern, so no process but a shard writer ever
holds raw vectors beyond a bounded sample:

1. the driver picks the index type (`choose_spec`), trains the quantiser (and, for
   IVF-PQ with `index.opq`, a rotation before it) on a bounded sample and saves the trained, empty index in a staging folder;
2. each executor partition is one shard (`ShardWriter`): it adds its vectors to a
   copy of the trained index, writes the shard and its item ids, and computes the
   exact top-k of the self-check queries over its own vectors;
3. the driver merges the shards in shard order (IVF inverted lists move as they
   are, flat codes append, HNSW re-adds shard by shard), so index position =
   row of the concatenated ids, merges the per-shard exact top-k into the ground
   truth, tunes nprobe / efSearch until recall@10 reaches `min_recall` (or fails),
   and swaps the folder in.

Merging (rather than keeping shards) means every ranking worker quantises a query
once and searches one set of lists; the merged index is what each worker loads
anyway, and `memory_budget_mb` bounds it.

Executors load an artifact once per Python worker (`load_index`).

Every location is a URI (`fusionrank.core.uri`), read and written through
`fusionrank.storage.fs`: the artifact lives under `storage.root` (an object store,
HDFS or a local folder) and no two processes need to share a disk. FAISS reads and
writes local files, so executors copy the trained index and the driver the shards to
temporary files; ranking workers copy the whole artifact once per host to local
scratch, keyed by the artifact's manifest (a new night never reads a stale copy).
On an object store (no atomic folder rename) the artifact is replaced in place with
its manifest removed first and written last: readers key on the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fusionrank.core import uri as uris
from fusionrank.core.spark import task_cpus, task_gpu
from fusionrank.core.catalog import INDEX_MANIFEST, INDEX_VECTOR
from fusionrank.core.config import IndexConfig
from fusionrank.core.errors import IndexError_
from fusionrank.storage import fs

log = logging.getLogger("fusionrank.index")

MANIFEST = INDEX_MANIFEST
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
ATTRIBUTES_DIR = "attributes"
TRAINED_FILE = "trained.faiss"
SELF_CHECK_K = 10
DENSE_COPY_MAX_BYTES = 512 * 2**20  # loaded indexes keep a float32 copy of their vectors up to this size
MIN_POINTS_PER_CENTROID = 39  # below this FAISS k-means warns and clusters badly

# faiss GPU IVF-PQ (GpuIndexIVFPQ, the default non-interleaved layout that
# index_cpu_to_gpu builds): 8-bit codes only; bytes per code (= sub-quantisers M) one of
# GPU_PQ_M; above GPU_PQ_FLOAT32_MAX_M the lookup tables (4 B x M x 256) exceed 48 KiB of
# shared memory per block and must be float16 (GpuClonerOptions.useFloat16, set by
# load_index); and, for faiss versions without the matrix-multiply fallback, dim / M one
# of GPU_PQ_SUB_DIMS (no precomputed tables: inner product never uses them).
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_FLOAT32_MAX_M = 48
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)
GPU_PQ_NBITS = 8
# OPQ training: alternating rotation / PQ steps (FAISS's default: 50, the first with 40
# k-means iterations; the cost is that k-means, on the driver's CPU). A sixth of the work
# kept most of the gain (bench/opq_check.py --opq-iterations, 20k x 64-d anisotropic,
# M=8: recall@10 0.31 without OPQ, 0.64 at FAISS's schedule in 7x the build time, 0.61 here).
OPQ_ITERATIONS = 10
OPQ_AUTO_MIN_SUB_DIMS = 4  # index.opq auto: rotate where sub-quantisers span this many dims (see use_opq)

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], "LoadedIndex"] = {}



# -- choosing the index ---------------------------------------------------------------
@dataclass
class IndexSpec:
    type: str  # flat | ivf_flat | ivf_pq | hnsw
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    pq_nbits: int = 8
    hnsw_m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    opq: bool = False  # ivf_pq only: an OPQ rotation before the PQ (see `train`)
    estimated_mb: float = 0.0

    @property
    def trained(self) -> bool:
        return self.type in ("ivf_flat", "ivf_pq")

    def params(self) -> dict:
        """What goes into the manifest besides count/dim."""
        out: dict = {"type": self.type, "estimated_mb": round(self.estimated_mb, 1)}
        if self.trained:
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.type == "ivf_pq":
            out.update(pq_m=self.pq_m, pq_nbits=self.pq_nbits, opq=self.opq)
        if self.type == "hnsw":
            out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        return out


def choose_nlist(n: int, requested: int, train_points: int | None = None) -> int:
    """`requested` lists, or (0) about 4 x sqrt(n) rounded to a power of two; never
    more than the training sample supports (~39 points per centroid)."""
    if requested <= 0:
        requested = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1))))))
    points = n if train_points is None else min(n, train_points)
    return max(1, min(requested, points // MIN_POINTS_PER_CENTROID if points >= MIN_POINTS_PER_CENTROID else 1))


def estimate_mb(spec: IndexSpec, n: int, dim: int) -> float:
    """Resident size of the loaded index (vectors or codes, ids, direct map, quantiser)."""
    if spec.type == "flat":
        size = n * dim * 4
    elif spec.type == "ivf_flat":
        size = n * (dim * 4 + 8 + 8) + spec.nlist * dim * 4
    elif spec.type == "ivf_pq":
        size = n * (spec.pq_m * spec.pq_nbits / 8 + 8 + 8) + spec.nlist * dim * 4 + 2**spec.pq_nbits * dim * 4  # codebooks: M x 2^bits x dim/M floats
        if spec.opq:
            size += dim * dim * 4  # the rotation
    else:  # hnsw: vectors + 2M neighbour links on level 0 (+ ~1/M more above)
        size = n * (dim * 4 + spec.hnsw_m * 2 * 4 * 1.1)
    return size / 2**20


def choose_spec(n: int, dim: int, cfg: IndexConfig, gpu: bool = False) -> IndexSpec:
    """The index type and parameters for `n` vectors of `dim` under `cfg`; `gpu`: an
    IVF-PQ index is kept within faiss-gpu's limits (`gpu_pq_ok`), as it will be trained
    or searched on a GPU (`pq_on_gpu`)."""
    kind = cfg.type
    if kind == "auto":
        kind = "flat" if n <= cfg.flat_max_items else "ivf_flat"
    if n < 2 * MIN_POINTS_PER_CENTROID and kind in ("ivf_flat", "ivf_pq"):
        kind = "flat"  # too few vectors to train lists: exact search is also the fastest
    nlist = choose_nlist(n, cfg.nlist, cfg.train_sample) if kind in ("ivf_flat", "ivf_pq") else 0
    spec = IndexSpec(kind, nlist=nlist, nprobe=min(cfg.nprobe, nlist) if nlist else 0,
                     hnsw_m=cfg.hnsw_m if kind == "hnsw" else 0,
                     ef_construction=cfg.ef_construction if kind == "hnsw" else 0,
                     ef_search=cfg.ef_search if kind == "hnsw" else 0)
    spec.estimated_mb = estimate_mb(spec, n, dim)
    if cfg.type == "auto" and kind == "ivf_flat" and spec.estimated_mb > cfg.memory_budget_mb:
        spec.type, kind = "ivf_pq", "ivf_pq"
    if kind == "ivf_pq":
        _choose_pq(spec, n, dim, cfg, gpu)
    if spec.estimated_mb > cfg.memory_budget_mb:
        raise IndexError_(
            f"a {spec.type} index of {n} x {dim} vectors needs about {spec.estimated_mb:.0f} MB, over "
            f"index.memory_budget_mb {cfg.memory_budget_mb}: raise the budget or use index.type auto / ivf_pq"
        )
    return spec


def gpu_pq_ok(m: int, dim: int, nbits: int = GPU_PQ_NBITS) -> bool:
    """Whether faiss-gpu can hold an IVF-PQ index of `m` sub-quantisers over `dim`."""
    return nbits == GPU_PQ_NBITS and m in GPU_PQ_M and dim % m == 0 and dim // m in GPU_PQ_SUB_DIMS


def pq_on_gpu(cfg: IndexConfig, rank_gpu: bool = False) -> bool:
    """Whether IVF-PQ must keep within faiss-gpu's limits: `index.gpu_pq_limits` when
    set, else (null) when `index.use_gpu` and a GPU is visible to faiss in this process
    or the rank stage's Spark conf asks for GPUs (`rank_gpu`)."""
    if cfg.gpu_pq_limits is not None:
        return cfg.gpu_pq_limits
    return cfg.use_gpu and (rank_gpu or gpu_count(cfg) > 0)


def _choose_pq(spec: IndexSpec, n: int, dim: int, cfg: IndexConfig, gpu: bool = False) -> None:
    # 8-bit codes want 256 x 39 training points; smaller samples get fewer bits.
    points = min(n, cfg.train_sample)
    spec.pq_nbits = int(max(4, min(8, math.floor(math.log2(max(points // MIN_POINTS_PER_CENTROID, 16))))))
    divisors = [m for m in range(dim, 0, -1) if dim % m == 0]
    if gpu:
        if spec.pq_nbits != GPU_PQ_NBITS:
            raise IndexError_(
                f"IVF-PQ on a GPU needs {GPU_PQ_NBITS}-bit codes, trained on at least "
                f"{2**GPU_PQ_NBITS * MIN_POINTS_PER_CENTROID} vectors; {points} are available (min of the "
                f"{n} items and index.train_sample {cfg.train_sample}): raise index.train_sample, use "
                f"index.type ivf_flat, or set index.gpu_pq_limits: false to search on CPU")
        divisors = [m for m in divisors if gpu_pq_ok(m, dim)]
        if not divisors:
            raise IndexError_(
                f"no IVF-PQ sub-quantiser count fits faiss-gpu for dimension {dim}: M must divide it, be one of "
                f"{list(GPU_PQ_M)} and leave {list(GPU_PQ_SUB_DIMS)} dimensions per sub-quantiser; change the "
                f"ranking space's dimension, use index.type ivf_flat, or set index.gpu_pq_limits: false")
    if cfg.pq_m:
        if dim % cfg.pq_m:
            raise IndexError_(f"index.pq_m {cfg.pq_m} must divide the vector dimension {dim}")
        if gpu and cfg.pq_m not in divisors:
            raise IndexError_(
                f"index.pq_m {cfg.pq_m} is beyond faiss-gpu's IVF-PQ limits for dimension {dim}; counts that "
                f"fit: {sorted(divisors)} (or set index.gpu_pq_limits: false to search on CPU)")
        divisors = [cfg.pq_m]
    for m in divisors:  # the most sub-quantisers (best recall) that fit
        spec.pq_m = m
        spec.opq = use_opq(cfg, m, dim)
        spec.estimated_mb = estimate_mb(spec, n, dim)
        if spec.estimated_mb <= cfg.memory_budget_mb:
            return


def use_opq(cfg: IndexConfig, pq_m: int, dim: int) -> bool:
    """Whether an IVF-PQ index of `pq_m` sub-quantisers over `dim` gets an OPQ rotation:
    `index.opq` when set, else (auto) where each sub-quantiser covers at least
    OPQ_AUTO_MIN_SUB_DIMS dimensions. bench/opq_check.py, same M, nlist and nprobe,
    held-out queries, 8 dims per sub-quantiser: recall@10 0.46 -> 0.58 (128-d) and
    0.51 -> 0.65 (256-d) on evenly spread clustered vectors, 0.35 -> 0.69 and
    0.35 -> 0.74 where the variance is uneven across dimensions (as in the ranking
    space's weighted parts), on seed 1 and again on seed 2; 4 dims: 0.22 -> 0.24;
    2 dims: no gain (0.448 -> 0.443), while the rotation's training costs most there
    (one k-means per sub-quantiser per round, on the driver)."""
    if isinstance(cfg.opq, bool):
        return cfg.opq
    return dim // max(pq_m, 1) >= OPQ_AUTO_MIN_SUB_DIMS


def gpu_count(cfg: IndexConfig) -> int:
    import faiss

    if not cfg.use_gpu or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def new_index(spec: IndexSpec, dim: int):
    import faiss

    if spec.type == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if spec.type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.pq_m, spec.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns (and frees) its quantiser
    if spec.opq:
        # The rotation wraps a plain IndexIVFPQ: add and search rotate, reconstruct rotates
        # back (all inside FAISS); shards merge, nprobe and the direct map act on the
        # inner index (`ivf_of`); index_cpu_to_gpu moves the inner index, keeping the
        # rotation on the CPU. Orthogonal, so inner products are unchanged.
        rotation = faiss.OPQMatrix(dim, spec.pq_m)
        rotation.niter, rotation.niter_pq_0 = OPQ_ITERATIONS, rotation.niter_pq
        # Trained with the index's own code size (8 bits by default), so a sample too
        # small for 8-bit codes trains the rotation for the codes it will have.
        codes = faiss.ProductQuantizer(dim, spec.pq_m, spec.pq_nbits)
        rotation.pq = codes
        rotation.referenced_objects = [codes]  # a bare pointer in FAISS: Python keeps it alive
        index = faiss.IndexPreTransform(rotation, index)
    return index


def ivf_of(index):
    """The IVF index inside `index` (itself, or under an OPQ rotation); None if not IVF."""
    import faiss

    return faiss.try_extract_index_ivf(index)


def train(spec: IndexSpec, dim: int, sample: np.ndarray, cfg: IndexConfig):
    """The empty, trained index (trained on the driver's bounded sample)."""
    import faiss

    index = new_index(spec, dim)
    if spec.trained:
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if len(sample) < spec.nlist:
            raise IndexError_(f"{len(sample)} training vectors for {spec.nlist} lists: raise index.train_sample")
        ivf = ivf_of(index)
        ivf.cp.seed = cfg.seed
        if gpu_count(cfg):  # k-means on the GPU; write_index never stores it: the artifact stays a CPU index
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
        index.train(sample)  # with OPQ: the rotation first, then the lists and codebooks on the rotated sample
    return index


# -- shards ---------------------------------------------------------------------------------
SHARD_FIELDS = [("shard", pa.int32()), ("index_path", pa.string()), ("ids_path", pa.string()),
                ("count", pa.int64()), ("truth_scores", pa.binary()), ("truth_positions", pa.binary())]
SHARD_ARROW_SCHEMA = pa.schema(SHARD_FIELDS)
SHARD_DDL = ("shard int, index_path string, ids_path string, count long, "
             "truth_scores binary, truth_positions binary")


class ShardWriter:
    """Adds one shard's vectors to a copy of the trained index and keeps the exact
    top-k of the self-check queries over them (the ground truth, merged later)."""

    def __init__(self, spec: IndexSpec, trained_path: str, out_dir: str, shard: int, dim: int,
                 queries: np.ndarray, k: int = SELF_CHECK_K):
        import faiss

        # HNSW graphs cannot be merged: its shards hold flat vectors, re-added on merge.
        if spec.type == "hnsw":
            self.index = faiss.IndexFlatIP(dim)
        else:
            with fs.local_file(str(trained_path)) as local:
                self.index = faiss.read_index(local)
        self.spec, self.out_dir, self.shard, self.k = spec, str(out_dir), shard, k
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.ids: list[pa.Array] = []
        self.count = 0
        nq = len(self.queries)
        self.top_scores = np.full((nq, k), -np.inf, dtype=np.float32)
        self.top_positions = np.full((nq, k), -1, dtype=np.int64)

    def add(self, ids: pa.Array | list, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return
        self.index.add(vectors)
        self.ids.append(pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string()))
        if len(self.queries):
            scores = self.queries @ vectors.T
            positions = np.broadcast_to(np.arange(self.count, self.count + len(vectors), dtype=np.int64), scores.shape)
            all_scores = np.concatenate([self.top_scores, scores], axis=1)
            all_positions = np.concatenate([self.top_positions, positions], axis=1)
            keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :self.k]
            self.top_scores = np.take_along_axis(all_scores, keep, axis=1)
            self.top_positions = np.take_along_axis(all_positions, keep, axis=1)
        self.count += len(vectors)

    def finish(self) -> dict:
        """Write the shard (index + ids) and return its row for the driver."""
        import faiss

        name = f"shard-{self.shard:05d}"
        index_path, ids_path = uris.join(self.out_dir, f"{name}.faiss"), uris.join(self.out_dir, f"{name}.ids.parquet")
        # Local: written beside the shard and renamed in (a retried task rewrites its
        # shard); elsewhere: written to a local folder and uploaded (one PUT per file).
        with fs.local_dir_for(self.out_dir) as folder:
            tmp = os.path.join(folder, f".{name}-{uuid.uuid4().hex[:8]}")
            faiss.write_index(self.index, tmp + ".faiss")
            ids = pa.concat_arrays(self.ids) if self.ids else pa.array([], pa.string())
            pq.write_table(pa.table({"item_id": ids}), tmp + ".ids.parquet")
            os.replace(tmp + ".faiss", os.path.join(folder, f"{name}.faiss"))
            os.replace(tmp + ".ids.parquet", os.path.join(folder, f"{name}.ids.parquet"))
        return {"shard": self.shard, "index_path": index_path, "ids_path": ids_path, "count": self.count,
                "truth_scores": self.top_scores.tobytes(), "truth_positions": self.top_positions.tobytes()}


def arrow_vectors(batch: pa.RecordBatch, column: str, dim: int) -> np.ndarray:
    """(rows, dim) float32 view of a list<float> column, checking every row has `dim` values."""
    values = batch.column(column)
    if values.null_count:
        raise IndexError_(f"column {column} has {values.null_count} null vectors")
    offsets = values.offsets.to_numpy()
    lengths = np.diff(offsets)
    if len(lengths) and (lengths != dim).any():
        bad = int(np.nonzero(lengths != dim)[0][0])
        raise IndexError_(f"column {column}: row {bad} has {int(lengths[bad])} values, expected {dim}")
    flat = values.values.slice(offsets[0], offsets[-1] - offsets[0]) if len(offsets) else values.values
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def shard_partition(batches: Iterator[pa.RecordBatch], spec: IndexSpec, trained_path: str, out_dir: str,
                    queries: np.ndarray, dim: int, k: int = SELF_CHECK_K) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: this partition's (item_id, rec_vec) rows become one shard."""
    import faiss
    from pyspark import TaskContext


    faiss.omp_set_num_threads(task_cpus())
    writer = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if writer is None:
            writer = ShardWriter(spec, trained_path, out_dir, TaskContext.get().partitionId(), dim, queries, k)
        writer.add(batch.column("item_id"), arrow_vectors(batch, INDEX_VECTOR, dim))
    if writer is not None:
        row = writer.finish()
        yield pa.RecordBatch.from_pylist([row], schema=SHARD_ARROW_SCHEMA)


# -- merge, self-check, save ---------------------------------------------------------------
def merge_truth(shards: list[dict], n_queries: int, k: int = SELF_CHECK_K) -> np.ndarray:
    """Global positions of the exact top-k of each query, from the shards' local top-k."""
    if n_queries == 0 or not shards:
        return np.zeros((n_queries, 0), dtype=np.int64)
    scores, positions, offset = [], [], 0
    for shard in shards:
        s = np.frombuffer(shard["truth_scores"], dtype=np.float32).reshape(n_queries, k)
        p = np.frombuffer(shard["truth_positions"], dtype=np.int64).reshape(n_queries, k)
        scores.append(s)
        positions.append(np.where(p >= 0, p + offset, -1))
        offset += int(shard["count"])
    scores, positions = np.concatenate(scores, axis=1), np.concatenate(positions, axis=1)
    keep = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, offset)]
    return np.take_along_axis(positions, keep, axis=1)


def merge_shards(spec: IndexSpec, trained_path: str, shards: list[dict], dim: int):
    """One index from the shards, in shard order: position p is row p of the concatenated ids."""
    import faiss

    if spec.type == "hnsw":
        merged = new_index(spec, dim)
        for shard in shards:
            part = _read_faiss(shard["index_path"])
            if part.ntotal:
                merged.add(part.reconstruct_n(0, part.ntotal))
            del part
        return merged
    merged = _read_faiss(trained_path)
    for shard in shards:
        part = _read_faiss(shard["index_path"])
        if spec.trained:
            # Lists move between the inner IVF indexes (the shards share the trained rotation).
            ivf_of(merged).merge_from(ivf_of(part), merged.ntotal)  # shard-local ids 0.. become global positions
            merged.ntotal = ivf_of(merged).ntotal
        else:
            merged.merge_from(part)
        del part
    return merged


def _read_faiss(uri: str):
    import faiss

    with fs.local_file(str(uri)) as local:
        return faiss.read_index(local)


def _read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    filesystem, path = fs.filesystem(str(uri))
    return pq.read_table(path, columns=columns, filesystem=filesystem)


def recall_against(reference, index, queries: np.ndarray, k: int = SELF_CHECK_K) -> float:
    """Recall@k of `index` against `reference` (exact search) for `queries`."""
    if len(queries) == 0:
        return 1.0
    k = min(k, reference.ntotal)
    _, truth = reference.search(queries, k)
    return recall_of(index, queries, truth)


def recall_of(index, queries: np.ndarray, truth: np.ndarray) -> float:
    """Recall of `index`'s top-k against the exact top-k positions `truth` (queries x k)."""
    if len(queries) == 0 or truth.size == 0:
        return 1.0
    _, got = index.search(np.ascontiguousarray(queries, dtype=np.float32), truth.shape[1])
    truth_keys = (np.arange(len(truth))[:, None] * (index.ntotal + 1) + truth).ravel()
    got_keys = (np.arange(len(got))[:, None] * (index.ntotal + 1) + got)[got >= 0]
    return float(np.isin(truth_keys[truth.ravel() >= 0], got_keys).sum()) / float((truth >= 0).sum())


def set_search_param(index, spec: IndexSpec, value: int) -> None:
    import faiss

    if spec.type == "hnsw":
        index.hnsw.efSearch = value
        spec.ef_search = value
    elif spec.trained:
        faiss.extract_index_ivf(index).nprobe = value
        spec.nprobe = value


def tune_and_check(index, spec: IndexSpec, queries: np.ndarray, truth: np.ndarray, cfg: IndexConfig) -> float:
    """Recall@k (k = truth's width) at the starting nprobe / efSearch, doubled until it
    reaches min_recall or the configured maximum. Flat search is exact by construction."""
    if spec.type == "flat":
        return 1.0
    if spec.type == "hnsw":
        value, ceiling = spec.ef_search, max(cfg.max_ef_search, spec.ef_search)
    else:
        value, ceiling = spec.nprobe, min(spec.nlist, max(cfg.max_nprobe, spec.nprobe))
    while True:
        set_search_param(index, spec, value)
        recall = recall_of(index, queries, truth)
        if recall >= cfg.min_recall or value >= ceiling:
            return recall
        value = min(value * 2, ceiling)


@dataclass
class BuiltIndex:
    path: str
    manifest: dict


@dataclass
class Staging:
    """A scratch folder beside the artifacts (same filesystem as the final folder)."""

    path: str
    trained_path: str = field(init=False)
    shards_path: str = field(init=False)

    def __post_init__(self):
        self.path = str(self.path)
        if uris.is_local(self.path):
            os.makedirs(self.path, exist_ok=False)
        self.trained_path = uris.join(self.path, TRAINED_FILE)
        self.shards_path = uris.join(self.path, "shards")

    def write_trained(self, index) -> None:
        """Save the trained, empty index where the executors read it."""
        import faiss

        with fs.local_dir_for(self.path) as folder:
            faiss.write_index(index, os.path.join(folder, TRAINED_FILE))

    def remove(self) -> None:
        fs.delete(self.path)


def new_staging(out_dir: str) -> Staging:
    out_dir = str(out_dir)
    return Staging(uris.join(uris.parent(out_dir), f".staging-{uris.name(out_dir)}-{uuid.uuid4().hex[:8]}"))


def self_check_queries(sample: np.ndarray, cfg: IndexConfig) -> np.ndarray:
    """A seeded subset of the (already random) training sample."""
    n = min(cfg.self_check_queries, len(sample))
    rng = np.random.default_rng(cfg.seed)
    return np.ascontiguousarray(sample[np.sort(rng.choice(len(sample), n, replace=False))], dtype=np.float32)


def assemble(spec: IndexSpec, staging: Staging, shards: list[dict], queries: np.ndarray, dim: int, count: int,
             cfg: IndexConfig, out_dir: str, model_version: str, run_date: str, extra: dict | None = None) -> BuiltIndex:
    """Merge the shard rows' shards, self-check, save. Raises IndexError_ (leaving the
    previous artifact in place) when the index is inconsistent or below min_recall."""
    import faiss

    shards = sorted(shards, key=lambda s: s["shard"])
    index = merge_shards(spec, str(staging.trained_path), shards, dim)
    ids = pa.concat_arrays([_read_parquet(s["ids_path"]).column("item_id").combine_chunks() for s in shards]) \
        if shards else pa.array([], pa.string())
    if index.ntotal != len(ids) or len(ids) != count:
        raise IndexError_(f"index holds {index.ntotal} vectors for {len(ids)} ids, expected {count}")
    if len(ids) and pc.count_distinct(ids).as_py() != len(ids):
        raise IndexError_("item ids in item_embeddings are not unique")
    check_k = max(SELF_CHECK_K, cfg.self_check_k)
    truth = merge_truth(shards, len(queries), check_k)
    recall = tune_and_check(index, spec, queries, truth, cfg)
    recall_10 = 1.0 if spec.type == "flat" else recall_of(index, queries, truth[:, :SELF_CHECK_K])
    enable_reconstruct(index)
    manifest = {
        "count": int(index.ntotal),
        "dim": int(dim),
        "metric": "inner_product",
        **spec.params(),
        "shards": len(shards),
        "model_version": model_version,
        "run_date": run_date,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "self_check": {"recall_at_10": round(recall_10, 6), "k": check_k, "recall_at_k": round(recall, 6),
                       "queries": int(len(queries)), "min_recall": cfg.min_recall, "exact": spec.type == "flat"},
        "faiss_version": faiss.__version__,
        **(extra or {}),
    }
    if recall < cfg.min_recall:
        raise IndexError_(
            f"index self-check failed: recall@{check_k} {recall:.3f} against exact search is below "
            f"index.min_recall {cfg.min_recall} ({spec.params()}); raise index.max_nprobe / max_ef_search, "
            f"index.memory_budget_mb (for ivf_pq) or use type: flat"
        )
    save(index, ids, manifest, out_dir, uris.join(staging.path, ATTRIBUTES_DIR))
    return BuiltIndex(str(out_dir), manifest)


def build(
    vector_batches: Iterable[tuple[list, np.ndarray]],
    train_sample: np.ndarray,
    dim: int,
    count: int,
    cfg: IndexConfig,
    out_dir: str,
    model_version: str,
    run_date: str,
) -> BuiltIndex:
    """Build in one process from (ids, vectors) batches: the same code path as the
    Spark build with a single shard. Holds the sample and one batch besides the index."""
    import faiss

    spec = choose_spec(count, dim, cfg, gpu=pq_on_gpu(cfg))
    staging = new_staging(out_dir)
    try:
        trained = train(spec, dim, train_sample, cfg)
        staging.write_trained(trained)
        queries = self_check_queries(np.asarray(train_sample, dtype=np.float32).reshape(-1, dim), cfg) \
            if spec.type != "flat" else np.zeros((0, dim), dtype=np.float32)
        writer = ShardWriter(spec, str(staging.trained_path), str(staging.shards_path), 0, dim, queries,
                             max(SELF_CHECK_K, cfg.self_check_k))
        for ids, vectors in vector_batches:
            writer.add(list(ids), vectors)
        return assemble(spec, staging, [writer.finish()], queries, dim, count, cfg, out_dir, model_version, run_date)
    finally:
        staging.remove()


def build_from_spark(vectors, dim: int, count: int, cfg: IndexConfig, out_dir: str, model_version: str,
                     run_date: str, partitions: int = 0, attributes=None, model_spec: dict | None = None,
                     rank_gpu: bool = False) -> BuiltIndex:
    """Build from a Spark DataFrame of (item_id, rec_vec) without collecting it: only a
    bounded sample and one small row per shard reach the driver. `attributes`
    (item_id, title, category), when given, is written beside the index by Spark.
    `rank_gpu`: the rank stage's executors have GPUs (IVF-PQ keeps to faiss-gpu's limits)."""
    import faiss
    from functools import partial

    spec = choose_spec(count, dim, cfg, gpu=pq_on_gpu(cfg, rank_gpu))
    # The training set, or (untrained types) just the self-check queries.
    wanted = cfg.train_sample if spec.trained else (cfg.self_check_queries if spec.type != "flat" else 0)
    sample = np.zeros((0, dim), dtype=np.float32)
    if wanted:
        rows = (vectors.sample(fraction=min(1.0, 1.2 * wanted / count), seed=cfg.seed)
                .orderBy("item_id").limit(wanted).toArrow())
        if rows.num_rows:
            sample = arrow_vectors(rows.combine_chunks().to_batches()[0], INDEX_VECTOR, dim)
    queries = self_check_queries(sample, cfg) if spec.type != "flat" else sample[:0]
    staging = new_staging(out_dir)
    try:
        staging.write_trained(train(spec, dim, sample, cfg))
        parts = partitions or cfg.build_partitions or vectors.sparkSession.sparkContext.defaultParallelism
        body = partial(shard_partition, spec=spec, trained_path=str(staging.trained_path),
                       out_dir=str(staging.shards_path), queries=queries, dim=dim,
                       k=max(SELF_CHECK_K, cfg.self_check_k))
        # Hash-partitioned and sorted: the same shards, so the same positions, on every rerun.
        shards = [row.asDict() for row in vectors.repartition(parts, "item_id").sortWithinPartitions("item_id")
                  .mapInArrow(body, SHARD_DDL).collect()]
        if attributes is not None:
            attributes.select("item_id", "title", "category").coalesce(1).write.parquet(
                uris.spark_uri(uris.join(staging.path, ATTRIBUTES_DIR)))
        return assemble(spec, staging, shards, queries, dim, count, cfg, out_dir, model_version, run_date,
                        extra={"train_sample": int(len(sample)) if spec.trained else 0,
                               **({"model_spec": model_spec} if model_spec else {})})
    finally:
        staging.remove()


def enable_reconstruct(index) -> None:
    """IVF indexes need a direct map (position -> list entry) to hand vectors back."""
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.make_direct_map()


def reconstruct(index, positions: np.ndarray) -> np.ndarray:
    """Vectors at `positions` (an IVF index must have gone through `enable_reconstruct`)."""
    if len(positions) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(np.asarray(positions, dtype=np.int64))


def save(index, ids, manifest: dict, out_dir: str, attributes_dir: str | None = None) -> None:
    """Write the artifact to `out_dir` (a URI), replacing what is there (see the module
    docstring: local folders are swapped in by rename, object stores keyed on the
    manifest, written last)."""
    import faiss

    out_dir = str(out_dir)
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    has_attributes = attributes_dir is not None and fs.exists(str(attributes_dir))
    if not uris.is_local(out_dir):
        fs.delete(uris.join(out_dir, MANIFEST))  # readers stop trusting the old files first
        for stale in fs.listdir(out_dir):
            fs.delete(uris.join(out_dir, stale))
        with fs.local_dir_for(out_dir) as folder:
            faiss.write_index(index, os.path.join(folder, INDEX_FILE))
            pq.write_table(pa.table({"item_id": ids}), os.path.join(folder, IDS_FILE))
        if has_attributes:
            fs.copy_dir(str(attributes_dir), uris.join(out_dir, ATTRIBUTES_DIR))
        fs.write_text(uris.join(out_dir, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
        return
    out = Path(uris.local_path(out_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"item_id": ids}), tmp / IDS_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if has_attributes:
            if uris.is_local(str(attributes_dir)):
                shutil.move(uris.local_path(str(attributes_dir)), str(tmp / ATTRIBUTES_DIR))
            else:
                fs.copy_dir(str(attributes_dir), str(tmp / ATTRIBUTES_DIR))
        fs.publish_dir(str(tmp), str(out))
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str) -> dict:
    manifest = uris.join(str(path), MANIFEST)
    if not fs.is_file(manifest):
        raise IndexError_(f"no index at {path} (missing {MANIFEST}): run build_index for that date first")
    return json.loads(fs.read_text(manifest))


@dataclass
class LoadedIndex:
    index: object  # CPU index: reconstruct() and, without a GPU, search()
    ids: np.ndarray  # item id (object) of every position
    positions: dict[str, int]
    manifest: dict
    ids_arrow: pa.Array = None  # the same ids, for vectorised takes into Arrow output
    search_index: object = None  # a GPU copy when one is used, else `index`
    dense: np.ndarray | None = None  # every vector, when small enough: lookups without FAISS calls
    titles: pa.Array | None = None  # title of every position (null: unknown), from attributes/
    category_codes: np.ndarray | None = None  # top-level category code of every position (-1: none)
    device: int | None = None  # the GPU `search_index` is on (None: searched on CPU)

    def reconstruct(self, positions: np.ndarray) -> np.ndarray:
        """Vectors at index `positions` (a row gather when the dense copy is kept)."""
        if self.dense is not None:
            return np.take(self.dense, np.asarray(positions, dtype=np.int64), axis=0)  # a faster row gather than [ ]
        return reconstruct(self.index, positions)

    def vectors(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Vectors of the ids that are in the index (and those ids, in order)."""
        known = [i for i in item_ids if i in self.positions]
        pos = np.array([self.positions[i] for i in known], dtype=np.int64)
        return self.reconstruct(pos), known

    def position_of(self, item_ids) -> np.ndarray:
        """Index positions of `item_ids` (-1 where unknown), vectorised."""
        import pandas as pd

        if not hasattr(self, "_id_index"):
            self._id_index = pd.Index(self.ids)
        return self._id_index.get_indexer(pd.Index(item_ids)).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        searcher = self.index if self.search_index is None else self.search_index
        return searcher.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def load_index(path: str, use_gpu: bool = False) -> LoadedIndex:
    """Load (once per process) the index artifact at `path` (a URI: copied once per
    host to local scratch, keyed by its manifest, when it is not a local folder)."""
    import faiss

    manifest = read_manifest(str(path))
    device = gpu_device(manifest) if use_gpu else None
    key = (str(path), manifest["created_at"])
    with _LOCK:
        loaded = _LOADED.get(key)
        if loaded is None or loaded.device != device:  # a GPU copy serves the GPU it is on
            version = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
            local = fs.local_copy(str(path), f"index-{manifest.get('run_date', '')}-{version}")
            index = faiss.read_index(os.path.join(local, INDEX_FILE))
            if "nprobe" in manifest:
                faiss.extract_index_ivf(index).nprobe = manifest["nprobe"]
            if "ef_search" in manifest:
                index.hnsw.efSearch = manifest["ef_search"]
            enable_reconstruct(index)
            ids_arrow = pq.read_table(os.path.join(local, IDS_FILE)).column("item_id").combine_chunks()
            ids = ids_arrow.to_numpy(zero_copy_only=False)
            search_index = None
            if device is not None:
                search_index = to_gpu(index, manifest, device)
            # Reasons look up ~k vectors per user: a plain array beats IVF's direct-map calls.
            dense = index.reconstruct_n(0, index.ntotal) if index.ntotal * index.d * 4 <= DENSE_COPY_MAX_BYTES else None
            loaded = LoadedIndex(index, ids, {item: i for i, item in enumerate(ids)}, manifest, ids_arrow, search_index,
                                 dense, device=device)
            _attach_attributes(loaded, Path(local) / ATTRIBUTES_DIR)
            _LOADED.clear()  # one artifact per worker at a time: bounded memory
            _LOADED[key] = loaded
    return loaded


def gpu_device(manifest: dict) -> int | None:
    """The GPU this process searches `manifest`'s index on: the task's Spark-assigned GPU
    (`task.resource.gpu`), else GPU 0 when faiss sees one; None (CPU) without faiss-gpu,
    for HNSW (no GPU version) and for an IVF-PQ index beyond faiss-gpu's limits."""
    import faiss

    if manifest["type"] == "hnsw" or getattr(faiss, "get_num_gpus", lambda: 0)() <= 0:
        return None
    if manifest["type"] == "ivf_pq" and not gpu_pq_ok(int(manifest["pq_m"]), int(manifest["dim"]),
                                                      int(manifest.get("pq_nbits", 8))):
        log.warning("index at run_date %s: IVF-PQ with pq_m %s, %s bits over dim %s is beyond faiss-gpu's "
                    "limits; searching on CPU (rebuild with index.gpu_pq_limits: true)", manifest.get("run_date"),
                    manifest["pq_m"], manifest.get("pq_nbits", 8), manifest["dim"])
        return None
    assigned = task_gpu()
    return 0 if assigned is None else assigned


def to_gpu(index, manifest: dict, device: int):
    """A copy of `index` on GPU `device`, IVF-PQ lookup tables in float16 where the
    sub-quantiser count needs them."""
    import faiss

    options = faiss.GpuClonerOptions()
    options.useFloat16 = manifest["type"] == "ivf_pq" and int(manifest["pq_m"]) > GPU_PQ_FLOAT32_MAX_M
    log.info("index at run_date %s: searching on GPU %d", manifest.get("run_date"), device)
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device, index, options)


def _attach_attributes(loaded: LoadedIndex, folder: Path) -> None:
    """Titles and category codes aligned to index positions (artifacts built before
    attributes existed have neither: reasons then name the item id, no diversity)."""
    if not folder.exists():
        return
    table = pq.read_table(folder, columns=["item_id", "title", "category"])
    if table.num_rows == 0:
        return
    found = loaded.position_of(table.column("item_id").to_numpy(zero_copy_only=False))
    row_at = np.full(int(loaded.index.ntotal), -1, dtype=np.int64)
    row_at[found[found >= 0]] = np.nonzero(found >= 0)[0]
    taken = pa.array(np.maximum(row_at, 0))
    missing = pa.array(row_at < 0)
    titles = table.column("title").combine_chunks().cast(pa.string()).take(taken)
    loaded.titles = pc.if_else(missing, pa.scalar(None, pa.string()), titles)
    codes = pc.fill_null(table.column("category").combine_chunks().cast(pa.string()).dictionary_encode().indices, -1)
    loaded.category_codes = np.where(row_at < 0, -1, codes.to_numpy(zero_copy_only=False)[np.maximum(row_at, 0)]) \
        .astype(np.int32)
