"""Search quality on held-out search sessions of the synthetic shop, one table.

For each seed: `raw.synth.generate(items, users, days, query_noise)`, then
`fusionrank.metrics.search_quality.run` (in-process: pandas, numpy, the library's
BM25 index, encoders, tuner, hybrid re-rank and intent; no Spark, so it fits a
small machine). The last --test-days are the test; the --val-days before them the
validation slice carved from training, on which the hybrid/CTR/intent weights are
chosen and the tuned encoder is accepted or rejected. Rows: BM25, zero-shot
MiniLM, MiniLM + CTR (today's query_topk/search), hybrid (RRF of BM25 and
MiniLM), tuned encoder, tuned hybrid + CTR + intent; columns nDCG@10, Recall@10,
MRR@10 for clean and noisy queries, the mean over seeds (the per-seed spread in
brackets for nDCG). Below: intent top-1 accuracy on seen/unseen test queries,
the chosen weights, tuning time and the encoder's validation check.

    python bench/search_quality.py --items 20000 --users 8000 --seeds 0 1 --parallel --tune-minutes 6
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fusionrank.metrics.search_quality import run  # noqa: E402
from fusionrank.raw.synth import generate  # noqa: E402
from fusionrank.vectors.tune_text import TuneParams  # noqa: E402

LABELS = {
    "bm25": "BM25",
    "dense": "zero-shot MiniLM",
    "dense_ctr": "MiniLM + CTR (today)",
    "hybrid": "hybrid (RRF BM25 + MiniLM)",
    "tuned": "tuned encoder",
    "full": "tuned hybrid + CTR + intent",
}


def print_table(args, runs, seeds) -> None:
    """The table over the seeds run so far (printed after every seed, so a partial run still reports)."""
    def mean(system, group, metric):
        return float(np.mean([r["results"][system][group][metric] for r in runs]))

    def spread(system, group, metric):
        values = [r["results"][system][group][metric] for r in runs]
        return (max(values) - min(values)) / 2

    print()
    print(f"Search quality, held-out last {args.test_days} days of search sessions; {args.items} items, "
          f"{args.users} users, query noise {args.query_noise}, seeds {list(seeds)} (mean; nDCG ± half range)")
    cases = runs[0]["results"]["bm25"]
    print(f"test cases per seed: clean {[r['results']['bm25']['clean']['cases'] for r in runs]}, "
          f"noisy {[r['results']['bm25']['noisy']['cases'] for r in runs]}" if "noisy" in cases else "")
    header = f"{'system':<30} | {'clean nDCG@10':>15} {'R@10':>6} {'MRR':>6} | {'noisy nDCG@10':>15} {'R@10':>6} {'MRR':>6}"
    print(header)
    print("-" * len(header))
    for system, label in LABELS.items():
        cells = []
        for group in ("clean", "noisy"):
            cells.append(f"{mean(system, group, 'ndcg'):.4f} ±{spread(system, group, 'ndcg'):.3f} "
                         f"{mean(system, group, 'recall'):>6.4f} {mean(system, group, 'mrr'):>6.4f}")
        print(f"{label:<30} | {cells[0]} | {cells[1]}")
    today, full, bm25 = (mean(s, "noisy", "ndcg") for s in ("dense_ctr", "full", "bm25"))
    print(f"full vs today on noisy nDCG@10: {100 * (full / today - 1):+.1f}% relative; "
          f"full vs BM25: clean {100 * (mean('full', 'clean', 'ndcg') / mean('bm25', 'clean', 'ndcg') - 1):+.1f}%, "
          f"noisy {100 * (full / bm25 - 1):+.1f}%")
    seen = np.mean([r["intent"]["seen"] for r in runs])
    unseen = np.mean([r["intent"]["unseen"] for r in runs])
    print(f"intent top-1 category accuracy (tuned encoder's neighbours): seen queries {seen:.4f}, "
          f"unseen queries {unseen:.4f} (cases {[r['intent']['seen_cases'] for r in runs]} / "
          f"{[r['intent']['unseen_cases'] for r in runs]})")
    for seed, r in zip(seeds, runs):
        res = r["results"]
        gain = {g: 100 * (res["full"][g]["ndcg"] / res["dense_ctr"][g]["ndcg"] - 1) for g in ("clean", "noisy")}
        tune_s = r["timings"].get("tune_s", 0.0)
        print(f"seed {seed}: full vs today nDCG@10 noisy {gain['noisy']:+.1f}%, clean {gain['clean']:+.1f}%; "
              f"tuning wall time {tune_s:.0f}s ({tune_s / 60:.1f} min, "
              f"{'under' if tune_s < 600 else 'OVER'} 10 min) + validation search {r['timings'].get('choose_s', 0):.0f}s")
    for seed, r in zip(seeds, runs):
        tuning = r["tuning"]
        print(f"seed {seed}: chosen on validation {r['params']}; tuning {tuning.get('steps')} steps / "
              f"{tuning.get('pairs')} pairs in {r['timings'].get('tune_s', 0):.0f}s (CPU, shared machine), "
              f"val nDCG@10 base {tuning.get('val_ndcg_base', float('nan')):.4f} -> tuned "
              f"{tuning.get('val_ndcg_tuned', float('nan')):.4f}: {'accepted' if tuning['accepted'] else 'rejected'}; "
              f"item encode {r['timings']['encode_items_s']:.0f}s; total {r['timings']['total_s']:.0f}s")


def seed_log(seed: int):
    return functools.partial(lambda s, m: print(f"[seed {s}] {m}", flush=True), seed)


def run_seed(args, seed: int, work: str) -> dict:
    shop = Path(work) / f"shop-{seed}"
    t = time.perf_counter()
    generate(shop, items=args.items, users=args.users, days=args.days, seed=seed, images="none",
             query_noise=args.query_noise)
    print(f"[seed {seed}] shop generated in {time.perf_counter() - t:.0f}s", flush=True)
    tune = TuneParams(max_steps=args.tune_steps, time_budget_s=args.tune_minutes * 60, seed=seed,
                      freeze_layers=args.freeze_layers, lr=args.lr)
    return run(shop, Path(work) / f"work-{seed}", args.test_days, args.val_days, seed, tune, args.max_pairs,
               log=seed_log(seed))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--users", type=int, default=8000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--query-noise", type=float, default=0.4)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--val-days", type=int, default=7)
    parser.add_argument("--tune-steps", type=int, default=150)
    parser.add_argument("--tune-minutes", type=float, default=6.0, help="time budget of each tuning run")
    parser.add_argument("--freeze-layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-pairs", type=int, default=8000)
    parser.add_argument("--work", default=None)
    parser.add_argument("--parallel", action="store_true", help="run the seeds in parallel processes")
    args = parser.parse_args(argv)

    done: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        if args.parallel and len(args.seeds) > 1:
            # One process per seed: still one run and one table; on a shared machine the
            # seeds then finish in less wall time. Tuning times are each seed's own.
            with ProcessPoolExecutor(len(args.seeds)) as pool:
                futures = {pool.submit(run_seed, args, seed, work): seed for seed in args.seeds}
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    seeds = [s for s in args.seeds if s in done]
                    print_table(args, [done[s] for s in seeds], seeds)
        else:
            for seed in args.seeds:
                done[seed] = run_seed(args, seed, work)
                seeds = [s for s in args.seeds if s in done]
                print_table(args, [done[s] for s in seeds], seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
