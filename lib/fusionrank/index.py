"""build_index: a FAISS inner-product index over the items' fused vectors.

The artifact for a run date is a folder `<storage.root>/<index_dir>/run_date=D/`
holding `index.faiss`, `ids.parquet` (the item id of every index position) and
`manifest.json` (count, dim, type, params, model_version, created_at, self-check
recall). It is written to a temporary folder and renamed into place, so readers
see the old artifact or the new one, never half of one.

Executors load an artifact once per Python worker (`load_index`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusionrank.config import IndexConfig

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SELF_CHECK_K = 10

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], "LoadedIndex"] = {}


class IndexError_(RuntimeError):
    """The index could not be built, or failed its self-check."""


def index_dir(root: Path, run_date: dt.date | str) -> Path:
    return Path(root) / f"run_date={run_date}"


def choose_nlist(n: int, requested: int) -> int:
    """FAISS wants about 39 training points per centroid; never more lists than that allows."""
    return max(1, min(requested, n // 39 if n >= 39 else 1))


def make_index(dim: int, n: int, cfg: IndexConfig):
    import faiss

    if cfg.type == "flat" or n < 1000:
        return faiss.IndexFlatIP(dim), {"type": "flat"}
    nlist = choose_nlist(n, cfg.nlist)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = cfg.seed
    return index, {"type": "ivf_flat", "nlist": nlist, "nprobe": min(cfg.nprobe, nlist)}


def recall_against(reference, index, queries: np.ndarray, k: int = SELF_CHECK_K) -> float:
    """Recall@k of `index` against `reference` (exact search) for `queries`."""
    if len(queries) == 0:
        return 1.0
    k = min(k, reference.ntotal)
    _, truth = reference.search(queries, k)
    _, got = index.search(queries, k)
    hits = sum(len(set(t) & set(g)) for t, g in zip(truth.tolist(), got.tolist()))
    return hits / float(truth.size)


@dataclass
class BuiltIndex:
    path: Path
    manifest: dict


def build(
    vector_batches,
    train_sample: np.ndarray,
    dim: int,
    count: int,
    cfg: IndexConfig,
    out_dir: Path,
    model_version: str,
    run_date: str,
) -> BuiltIndex:
    """Build and save the index from an iterator of (ids, vectors) batches.

    Only the (bounded) training sample and one batch at a time are held besides
    the index itself.
    """
    import faiss

    index, params = make_index(dim, count, cfg)
    if params["type"] != "flat":
        index.train(np.ascontiguousarray(train_sample, dtype=np.float32))
        index.nprobe = params["nprobe"]
    ids: list[str] = []
    for batch_ids, batch_vectors in vector_batches:
        index.add(np.ascontiguousarray(batch_vectors, dtype=np.float32))
        ids.extend(batch_ids)
    enable_reconstruct(index)
    if index.ntotal != len(ids) or len(ids) != count:
        raise IndexError_(f"index holds {index.ntotal} vectors for {len(ids)} ids, expected {count}")
    if len(set(ids)) != len(ids):
        raise IndexError_("item ids in item_embeddings are not unique")

    # Self-check on a sample of the indexed vectors themselves.
    rng = np.random.default_rng(cfg.seed)
    sample = rng.choice(index.ntotal, size=min(cfg.self_check_queries, index.ntotal), replace=False) if index.ntotal else []
    queries = reconstruct(index, np.sort(np.asarray(sample, dtype=np.int64)))
    if params["type"] == "flat":
        recall = 1.0  # exact search by construction
    else:
        exact = faiss.IndexFlatIP(dim)
        exact.add(reconstruct(index, np.arange(index.ntotal)))
        recall = recall_against(exact, index, queries)
    manifest = {
        "count": int(index.ntotal),
        "dim": int(dim),
        "metric": "inner_product",
        **params,
        "model_version": model_version,
        "run_date": run_date,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "self_check": {"recall_at_10": round(recall, 6), "queries": int(len(queries)), "min_recall": cfg.min_recall},
        "faiss_version": faiss.__version__,
    }
    if recall < cfg.min_recall:
        raise IndexError_(
            f"index self-check failed: recall@10 {recall:.3f} against exact search is below "
            f"index.min_recall {cfg.min_recall} ({params}); raise index.nprobe or use type: flat"
        )
    save(index, ids, manifest, out_dir)
    return BuiltIndex(out_dir, manifest)


def enable_reconstruct(index) -> None:
    """IVF indexes need a direct map (position -> list entry) to hand vectors back."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()


def reconstruct(index, positions: np.ndarray) -> np.ndarray:
    """Vectors at `positions` (an IVF index must have gone through `enable_reconstruct`)."""
    if len(positions) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(np.asarray(positions, dtype=np.int64))


def save(index, ids: list[str], manifest: dict, out_dir: Path) -> None:
    import faiss

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string())}), tmp / IDS_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".old-{out_dir.name}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: Path) -> dict:
    manifest = Path(path) / MANIFEST
    if not manifest.exists():
        raise IndexError_(f"no index at {path} (missing {MANIFEST}): run build_index for that date first")
    return json.loads(manifest.read_text())


@dataclass
class LoadedIndex:
    index: object
    ids: np.ndarray
    positions: dict[str, int]
    manifest: dict

    def vectors(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Vectors of the ids that are in the index (and those ids, in order)."""
        known = [i for i in item_ids if i in self.positions]
        pos = np.array([self.positions[i] for i in known], dtype=np.int64)
        return reconstruct(self.index, pos), known


def load_index(path: Path | str) -> LoadedIndex:
    """Load (once per process) the index artifact at `path`."""
    import faiss

    manifest = read_manifest(Path(path))
    key = (str(path), manifest["created_at"])
    with _LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            index = faiss.read_index(str(Path(path) / INDEX_FILE))
            if "nprobe" in manifest:
                faiss.extract_index_ivf(index).nprobe = manifest["nprobe"]
            enable_reconstruct(index)
            ids = pq.read_table(Path(path) / IDS_FILE).column("item_id").to_numpy(zero_copy_only=False)
            loaded = LoadedIndex(index, ids, {item: i for i, item in enumerate(ids)}, manifest)
            _LOADED.clear()  # one artifact per worker at a time: bounded memory
            _LOADED[key] = loaded
    return loaded
