"""Search as it is served, one table: a real night (Spark, query_topk, query_memory) on
the synthetic shop, scored on its held-out search sessions the way `evaluate` scores
them (metrics.search_stage: `answer_queries`, the rows of query_topk for a query it
holds, else the index).

For each seed: `raw.synth.generate(items, users, days, query_noise)`, then every
nightly stage (`pipeline.run_all`) with `query.hybrid` on and the hybrid weights given
on the command line (the defaults are those bench/search_quality.py chose on its
validation slices of seeds 0 and 1, so seeds 2 and 3 here never informed them). Rows:

  dense zero-shot      every query by MiniLM alone (evaluate's baseline)
  hybrid, no memory    query_topk rows for its queries; any other query dense + BM25
                       only (how search() served it before the query memory)
  hybrid + memory      the same, but the other queries get the intent of their nearest
                       frequent queries (query_memory): what search() serves by default
  + borrowed clicks    and their pooled click-through too (query.unseen_neighbour_weight
                       = --neighbour-weight)
  clicks, no intent    the borrowed click-through alone (intent_weight 0 for them)

Columns: nDCG@10 for all cases, for queries with query_topk rows and for the others,
for clean and noisy queries; Recall@10 and MRR for all. Mean over seeds.

    python bench/search_served.py --items 5000 --users 3000 --days 45 --seeds 2 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fusionrank.core.config import deep_merge, load_config  # noqa: E402
from fusionrank.core.context import make_context  # noqa: E402
from fusionrank.metrics.search_eval import evaluate_rankings  # noqa: E402
from fusionrank.metrics.search_stage import SEARCH_K, holdout_search_grades, served_queries  # noqa: E402
from fusionrank.pipeline import run_all  # noqa: E402
from fusionrank.ranks.query_topk import answer_queries, normalize_query  # noqa: E402
from fusionrank.raw.synth import QUERY_KINDS_FILE, generate  # noqa: E402

END = dt.date(2026, 11, 22)
SYSTEMS = {"dense": "dense zero-shot", "no_memory": "hybrid, no memory", "memory": "hybrid + memory",
           "memory_clicks": "  + borrowed clicks", "clicks_only": "  clicks, no intent"}
GROUPS = ("all", "in query_topk", "not in query_topk", "clean", "noisy")


def night_settings(work: Path, shop: Path, args):
    overrides = {
        "spark": {"master": "local[2]", "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": "2"}},
        "storage": {"root": str(work / "warehouse")},
        "inputs": {"catalog": {"path": str(shop / "catalog.jsonl"), "format": "json"},
                   "events": {"path": str(shop / "events.jsonl"), "format": "json"}},
        "evaluate": {"holdout_days": args.holdout_days},
        "query": {"hybrid": True, "lookback_days": args.lookback_days, "top_queries": args.top_queries,
                  "rrf_k": args.rrf_k, "lexical_weight": args.lexical_weight, "ctr_weight": args.ctr_weight,
                  "ctr_prior": args.ctr_prior, "intent_weight": args.intent_weight,
                  "neighbour_weight": args.neighbour_weight},
        "publish": {"floors": {"ndcg@10": 0.0}, "regression_metrics": []},  # measured, not gated
    }
    return load_config(ROOT / "conf" / "local.yaml", overrides=deep_merge({}, overrides))


def run_seed(args, seed: int, work: Path) -> dict:
    shop = work / f"shop-{seed}"
    started = time.perf_counter()
    generate(shop, items=args.items, users=args.users, days=args.days, seed=seed, end_date=END, images="none",
             query_noise=args.query_noise)
    kinds = {normalize_query(q): k for q, k in json.loads((shop / QUERY_KINDS_FILE).read_text()).items()}
    settings = night_settings(work / f"night-{seed}", shop, args)
    from fusionrank.core.spark import get_session

    spark = get_session(settings)
    run_all(settings, END, spark)
    night_s = time.perf_counter() - started
    ctx = make_context(settings, END, spark)
    grades = holdout_search_grades(ctx)
    queries = [q for q, _ in grades]
    stored, memory = served_queries(ctx, queries)
    index_path, cfg = ctx.index_path(), settings.query
    answers = {
        "dense": answer_queries(queries, index_path, stored, cfg, SEARCH_K, dense_only=True),
        "no_memory": answer_queries(queries, index_path, stored, cfg, SEARCH_K),
        "memory": answer_queries(queries, index_path, stored, cfg, SEARCH_K, memory=memory),
        # With the clicks of the nearest frequent queries borrowed too, and their intent left out.
        "memory_clicks": answer_queries(queries, index_path, stored,
                                        cfg.model_copy(update={"unseen_neighbour_weight": args.neighbour_weight}),
                                        SEARCH_K, memory=memory),
        "clicks_only": answer_queries(queries, index_path, stored, cfg.model_copy(
            update={"unseen_neighbour_weight": args.neighbour_weight, "intent_weight": 0.0}), SEARCH_K, memory=memory),
    }
    in_topk = {q for q in queries if len(stored.get(q, ())) >= SEARCH_K}
    groups = {
        "all": grades,
        "in query_topk": [c for c in grades if c[0] in in_topk],
        "not in query_topk": [c for c in grades if c[0] not in in_topk],
        "clean": [c for c in grades if kinds.get(c[0], "clean") == "clean"],
        "noisy": [c for c in grades if kinds.get(c[0], "clean") != "clean"],
    }
    scores = {system: {group: evaluate_rankings(cases, answers[system], SEARCH_K)["all"]
                       for group, cases in groups.items()} for system in SYSTEMS}
    print(f"[seed {seed}] night {night_s:.0f}s, {len(grades)} cases, {len(in_topk)} of {len(set(queries))} "
          f"queries in query_topk, memory of {len(memory) if memory is not None else 0} queries", flush=True)
    return {"scores": scores, "cases": {g: len(c) for g, c in groups.items()}}


def print_table(runs: list[dict], seeds: list[int]) -> None:
    def mean(system, group, metric):
        return float(np.mean([r["scores"][system][group][metric] for r in runs]))

    print(f"\nsearch as served, seeds {seeds} (mean), held-out search sessions, k={SEARCH_K}")
    cases = " / ".join(f"{g} {int(np.mean([r['cases'][g] for r in runs]))}" for g in GROUPS)
    print(f"cases per seed (mean): {cases}")
    head = "".join(f" {'nDCG ' + g:>24}" for g in GROUPS)
    print(f"{'system':<20}{head} {'R@10 all':>9} {'MRR all':>8}")
    for system, label in SYSTEMS.items():
        cells = "".join(f" {mean(system, g, 'ndcg'):>24.4f}" for g in GROUPS)
        print(f"{label:<20}{cells} {mean(system, 'all', 'recall'):>9.4f} {mean(system, 'all', 'mrr'):>8.4f}")
    base = mean("no_memory", "not in query_topk", "ndcg")
    if base > 0:
        print(f"memory vs no memory on queries not in query_topk: "
              f"{(mean('memory', 'not in query_topk', 'ndcg') / base - 1) * 100:+.1f}% nDCG@10")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--query-noise", type=float, default=0.4)
    parser.add_argument("--holdout-days", type=int, default=7)
    parser.add_argument("--lookback-days", type=int, default=30)
    parser.add_argument("--top-queries", type=int, default=1000)
    parser.add_argument("--rrf-k", type=float, default=60.0)
    parser.add_argument("--lexical-weight", type=float, default=1.0)
    parser.add_argument("--ctr-weight", type=float, default=0.8)
    parser.add_argument("--ctr-prior", type=float, default=5.0)
    parser.add_argument("--intent-weight", type=float, default=0.3)
    parser.add_argument("--neighbour-weight", type=float, default=0.25)
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        for seed in args.seeds:
            runs.append(run_seed(args, seed, Path(work)))
            print_table(runs, args.seeds[:len(runs)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
