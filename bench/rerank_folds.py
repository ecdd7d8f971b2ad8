"""Fold models (rerank.folds) against one early-stopped model, on validation only: one table.

For each MovieLens-100k split (per-user random 75/25, seeds 42-44; each user's last 20%)
the test part is dropped first. From the training events two labelled sets are carved
as bench/rerank_quality.py does: set 1 (features from inner, labels from val, val
carved from training as the test was from everything) and set 2 (the same, one split
earlier, carved from inner). A ranker trained on set 2 is scored on set 1 (the stage's
backtest: the shift from training features to serving features) and one trained on
set 1 is scored on set 2. Retrieval hyperparameters are chosen on set 1's users as in
rerank_quality. nDCG@10 over each set's candidates, the model alone (w = 0), and
the backtest's best blend with retrieval order (rerank.retrieval_blends).

Usage: python bench/rerank_folds.py [--splits random:42,random:43,random:44,user_last:42]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

import rerank_quality as rq  # noqa: E402
from fusionrank.ranks.rerank import features as fx  # noqa: E402
from fusionrank.ranks.rerank import ranker as rk  # noqa: E402

GRID = dict(ranks=[64, 128, 256], l2s=[100.0, 300.0, 1000.0], half_lives=[None, 30.0])


def labelled_sets(data: rq.Data, mode: str, seed: int):
    """Set 1 and set 2 (values, labels, cands, names), both from training events only."""
    ev = data.events
    train = ev.take(~rq.split(ev, mode, seed=seed))  # the test split is dropped here, never looked at
    vmask = rq.split(train, mode, seed=seed + 1000)
    inner, val = train.take(~vmask), train.take(vmask)
    val_rel = rq.relevant(inner, val)
    v_users = np.array(sorted(val_rel), np.int64)
    lae, rank, l2, hl = rq.pick_retrieval(data, inner, v_users, val_rel, **GRID)
    set1 = rq.featurize(rq.Split(data, inner, lae, rank, l2, hl, v_users), val)
    inner2, val2, b_users = rq.earlier_split(inner, mode, seed, max_users=data.n_users)  # every user: no sample
    set2 = rq.featurize(rq.Split(data, inner2, rq.Lae(inner2, data.n_users, data.n_items, rank), rank, l2, hl,
                                 b_users), val2)
    return set1, set2


def scored(train_set, test_set, folds: int, leaves: int, seed: int) -> tuple[float, float]:
    values, labels, cands, names = train_set
    model = rk.train_ranker(values, labels, cands, names,
                            rk.RankerConfig(num_leaves=leaves, learning_rate=0.05, seed=seed, folds=folds))
    tv, tl, tc, _ = test_set
    valid = tc >= 0
    s, r = model.score(tv, valid), tv[..., names.index(fx.RETRIEVAL_SCORE)]
    best = max(rk.ndcg_at(rk.blend(s, r, valid, w), tl, valid, rq.K) for w in rq.BLENDS)
    return rk.ndcg_at(s, tl, valid, rq.K), best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=ROOT / "data" / "raw" / "movielens-100k")
    parser.add_argument("--splits", default="random:42,random:43,random:44,user_last:42")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    from fusionrank.raw.adapters import fetch_movielens_100k

    fetch_movielens_100k(args.movielens)
    data = rq.Data(args.movielens / "events.jsonl", args.movielens / "catalog.jsonl")
    started = time.perf_counter()
    print("| split | leaves | retrieval order (2->1 / 1->2) | one model: alone 2->1, best blend 2->1, alone 1->2 "
          f"| {args.folds} fold models: the same |")
    print("|---|---|---|---|---|")
    for spec in args.splits.split(","):
        mode, seed = spec.split(":")
        seed = int(seed)
        set1, set2 = labelled_sets(data, mode, seed)
        r = [rk.ndcg_at(s[0][..., s[3].index(fx.RETRIEVAL_SCORE)], s[1], s[2] >= 0, rq.K) for s in (set1, set2)]
        for leaves in (15, 63):
            cells = []
            for folds in (1, args.folds):
                alone, blended = scored(set2, set1, folds, leaves, seed)
                back, _ = scored(set1, set2, folds, leaves, seed)
                cells.append(f"{alone:.4f}, {blended:.4f}, {back:.4f}")
            print(f"| {mode} {seed} | {leaves} | {r[0]:.4f} / {r[1]:.4f} | {cells[0]} | {cells[1]} |", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
