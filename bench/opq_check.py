"""IVF-PQ with and without an OPQ rotation (index.opq) at the same M, nlist and nprobe.

For each data set, dimension and seed: unit vectors built by `index.build.build` (the
code path build_index runs, one shard) once with `opq: false` and once with `opq: true`,
nprobe fixed (no tuning), then recall@10 against exact inner-product search for
held-out queries from the same distribution (not in the index), build wall time, the
planned size (index.build.estimate_mb) and the index file's size.

Data sets (bench/scale.py's generator: clustered low-rank points through a basis, plus noise):
  clustered    a random dense basis: variance spread evenly over the dimensions
  anisotropic  the basis' columns scaled by a decaying spectrum, the second half of the
               dimensions weighted down as the ranking space's content part is (rank.content_weight):
               most variance sits in a few PQ sub-spaces, the case OPQ is for

    nice -n 10 python bench/opq_check.py --items 100000 --dims 256 --pq-m 32 --seeds 1 2
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

FACTORS, CLUSTERS, SPREAD, NOISE = 48, 200, 0.6, 0.3
CONTENT_WEIGHT = 0.2


def basis(kind: str, dim: int, seed: int) -> np.ndarray:
    b = np.random.default_rng(seed).normal(size=(FACTORS, dim)).astype(np.float32) / math.sqrt(FACTORS)
    if kind == "anisotropic":
        b *= np.exp(-np.arange(dim) / (dim / 8)).astype(np.float32) ** 0.5
        b[:, dim // 2:] *= CONTENT_WEIGHT
    return b


def vectors(rng, n: int, b: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around clustered low-rank points: (centre + spread·N) · basis + noise."""
    z = centres[rng.integers(0, len(centres), n)] + SPREAD * rng.normal(size=(n, FACTORS)).astype(np.float32)
    v = z @ b
    scale = np.sqrt((b ** 2).sum(axis=0)).mean()  # noise relative to the signal, per dimension
    v += NOISE * scale * rng.normal(size=v.shape).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(index, exact, queries: np.ndarray) -> float:
    _, truth = exact.search(queries, 10)
    _, got = index.search(queries, 10)
    return float(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(truth, got)]))


def main() -> None:
    import faiss

    from fusionrank.core.config import IndexConfig
    from fusionrank.index import build

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[256])
    parser.add_argument("--pq-m", type=int, nargs="+", default=[32], help="one per --dims")
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--train-sample", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", nargs="+", default=["clustered", "anisotropic"])
    parser.add_argument("--opq-iterations", type=int, default=build.OPQ_ITERATIONS,
                        help="OPQ training rounds (index.build.OPQ_ITERATIONS; FAISS's own default is 50)")
    args = parser.parse_args()
    build.OPQ_ITERATIONS = args.opq_iterations
    faiss.omp_set_num_threads(2)

    print(f"{args.items} items, nlist {args.nlist}, nprobe {args.nprobe}, train_sample {args.train_sample}, "
          f"{args.queries} held-out queries, {args.opq_iterations} OPQ iterations, faiss {faiss.__version__}", flush=True)
    header = (f"{'data':<12} {'dim':>4} {'M':>3} {'seed':>4} {'opq':>5} {'recall@10':>9} {'build s':>8} "
              f"{'estimate MB':>11} {'file MB':>8}")
    print(header)
    print("-" * len(header))
    for kind in args.data:
        for dim, m in zip(args.dims, args.pq_m):
            for seed in args.seeds:
                rng = np.random.default_rng(seed)
                b, centres = basis(kind, dim, seed), rng.normal(size=(CLUSTERS, FACTORS)).astype(np.float32)
                items = vectors(rng, args.items, b, centres)
                queries = vectors(rng, args.queries, b, centres)
                sample = items[rng.choice(args.items, min(args.train_sample, args.items), replace=False)]
                exact = faiss.IndexFlatIP(dim)
                exact.add(items)
                ids = [str(i) for i in range(args.items)]
                for opq in (False, True):
                    cfg = IndexConfig(type="ivf_pq", nlist=args.nlist, nprobe=args.nprobe, max_nprobe=args.nprobe,
                                      pq_m=m, opq=opq, min_recall=0.0, train_sample=args.train_sample,
                                      self_check_queries=100, use_gpu=False, seed=seed)
                    out = Path(tempfile.mkdtemp(prefix="opq-check-")) / "run_date=2026-12-02"
                    batches = ((ids[i:i + 20_000], items[i:i + 20_000]) for i in range(0, args.items, 20_000))
                    start = time.perf_counter()
                    built = build.build(batches, sample, dim, args.items, cfg, out, "bench", "2026-12-02")
                    seconds = time.perf_counter() - start
                    index = faiss.read_index(str(out / build.INDEX_FILE))
                    faiss.extract_index_ivf(index).nprobe = args.nprobe
                    assert built.manifest["opq"] is opq and built.manifest["pq_m"] == m
                    print(f"{kind:<12} {dim:>4} {m:>3} {seed:>4} {str(opq):>5} {recall_at_10(index, exact, queries):>9.4f} "
                          f"{seconds:>8.1f} {built.manifest['estimated_mb']:>11.1f} "
                          f"{(out / build.INDEX_FILE).stat().st_size / 2**20:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
