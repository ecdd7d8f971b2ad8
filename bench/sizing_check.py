"""Checks `fusionrank sizing`'s loaded-index formula (interfaces.sizing.loaded_index_bytes)
against the resident memory `index.build.load_index` really takes, here.

For each item count: random unit vectors of --dim, an index built in one process
(index.build.build, the type --type), an attributes/ folder (16-character ids,
60-character titles, a category) beside it as build_index writes it, then a fresh
Python process that imports the same modules, measures its RSS, loads the index
(load_index: FAISS index, ids, id lookups, titles, category codes) and measures
again. The table: formula vs measured RSS growth, and their ratio.

    python bench/sizing_check.py --items 100000 300000 --dim 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def child(path: str) -> None:
    import gc

    import faiss  # noqa: F401  (imported before the baseline, as in a rank worker)
    import pandas  # noqa: F401

    from fusionrank.index import build

    gc.collect()
    before = rss()
    loaded = build.load_index(path)
    gc.collect()
    print(json.dumps({"grew": rss() - before, "type": loaded.manifest["type"], "count": loaded.manifest["count"]}))


def make(n: int, dim: int, kind: str, folder: Path) -> tuple[str, float]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusionrank.core.config import IndexConfig
    from fusionrank.index import build

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"item-{i:011d}" for i in range(n)]  # 16 characters
    cfg = IndexConfig(type=kind, min_recall=0.0, memory_budget_mb=1 << 20, train_sample=min(n, 50_000))
    out = folder / f"index-{n}"
    batches = ((ids[i:i + 50_000], vectors[i:i + 50_000]) for i in range(0, n, 50_000))
    built = build.build(batches, vectors[:cfg.train_sample], dim, n, cfg, str(out), "bench", "2026-01-01")
    (out / build.ATTRIBUTES_DIR).mkdir()
    titles = [f"{i:08d} " + "t" * 51 for i in range(n)]  # 60 characters
    pq.write_table(pa.table({"item_id": ids, "title": titles, "category": [f"cat{i % 50}" for i in range(n)]}),
                   out / build.ATTRIBUTES_DIR / "part-0.parquet")
    spec = build.choose_spec(n, dim, cfg)
    return str(built.path), spec.estimated_mb * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--type", default="ivf_flat", choices=["flat", "ivf_flat", "ivf_pq"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from fusionrank.interfaces.sizing import loaded_index_bytes

    print(f"| items | dim | type | formula (MiB) | measured RSS growth (MiB) | measured / formula |")
    print("|---:|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="sizing-check-") as tmp:
        for n in args.items:
            path, faiss_bytes = make(n, args.dim, args.type, Path(tmp))
            env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"), FUSIONRANK_CACHE_DIR=str(Path(tmp) / "cache"))
            out = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True,
                                 env=env, check=True).stdout
            grew = json.loads(out.strip().splitlines()[-1])["grew"]
            formula = loaded_index_bytes(n, args.dim, faiss_bytes)
            print(f"| {n} | {args.dim} | {args.type} | {formula / 2**20:.0f} | {grew / 2**20:.0f} | "
                  f"{grew / formula:.2f} |", flush=True)


if __name__ == "__main__":
    main()
