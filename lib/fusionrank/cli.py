"""The `fusionrank` command line (and the spark-submit jobs' shared entry point)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from fusionrank import __version__

log = logging.getLogger("fusionrank")

OUTPUT_TABLES = [
    ("catalog_clean", "run_date"),
    ("events_clean", None),
    ("quarantine", "run_date"),
    ("item_embeddings", "run_date"),
    ("user_profiles", "run_date"),
    ("recs_user_topk", "run_date"),
    ("recs_item_similar", "run_date"),
    ("metrics", "run_date"),
]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {text!r}") from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def _print_stage(result) -> None:
    counts = {k: v for k, v in result.counts.items() if k not in ("metrics", "quarantine_reasons")}
    detail = ", ".join(f"{k}={v}" for k, v in counts.items())
    print(f"  {result.stage:<15} {result.seconds:7.1f}s  {detail}", flush=True)
    reasons = result.counts.get("quarantine_reasons")
    if reasons:
        print("  " + " " * 25 + "quarantined: " + ", ".join(f"{k} ({v})" for k, v in reasons.items()), flush=True)


def print_summary(settings, run_date: dt.date, results) -> None:
    from fusionrank.pipeline import make_context

    ctx = make_context(settings, run_date)
    print(f"\nfusionrank run {run_date}: outputs under {settings.storage.root}")
    print(f"  {'table':<18} {'rows':>10}  path")
    for name, partition in OUTPUT_TABLES:
        where = {partition: run_date} if partition else None
        rows = ctx.store.count_rows(name, where)
        print(f"  {name:<18} {rows if rows is not None else '-':>10}  {ctx.store.path(name)}")
    build = next((r for r in results if r.stage == "build_index"), None)
    if build:
        c = build.counts
        print(f"  {'index':<18} {c['count']:>10}  {c['path']}  ({c['type']}, dim {c['dim']}, "
              f"self-check recall@10 {c['self_check_recall_at_10']:.3f})")
    evaluated = next((r for r in results if r.stage == "evaluate"), None)
    if evaluated:
        metrics = evaluated.counts["metrics"]
        print(f"\nevaluation ({evaluated.counts['split']}, {metrics['users_evaluated'][0]} users):")
        print(f"  {'metric':<14} {'fusionrank':>10} {'popularity':>10}")
        for name, (ours, base) in metrics.items():
            if name == "users_evaluated":
                continue
            print(f"  {name:<14} {ours:>10.4f} {base:>10.4f}")


def cmd_run(args) -> int:
    from fusionrank.config import load_config
    from fusionrank.pipeline import ORDER, run_all

    settings = load_config(args.conf)
    stages = args.stages.split(",") if args.stages else ORDER
    unknown = [s for s in stages if s not in ORDER]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {unknown}; stages: {', '.join(ORDER)}")
    print(f"fusionrank {__version__}: running {len(stages)} stage(s) for {args.date} with {args.conf}", flush=True)
    results = run_all(settings, args.date, stages=stages, on_stage=_print_stage)
    print_summary(settings, args.date, results)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"stage": r.stage, "seconds": r.seconds, "counts": r.counts} for r in results], indent=2, default=str))
    return 0


def cmd_stage(args) -> int:
    from fusionrank.config import load_config
    from fusionrank.pipeline import run_stage

    settings = load_config(args.conf)
    result = run_stage(args.name, settings, args.date)
    _print_stage(result)
    return 0


def cmd_data_fetch(args) -> int:
    from fusionrank.data.adapters import fetch_movielens_100k

    counts = fetch_movielens_100k(args.out)
    print(f"movielens-100k: {counts['items']} items, {counts['events']} events in {args.out}")
    return 0


def cmd_data_convert(args) -> int:
    from fusionrank.data import adapters

    if args.dataset == "movielens-100k":
        if not args.src:
            raise SystemExit("error: movielens-100k needs --src (the folder with ml-100k.inter and ml-100k.item)")
        counts = adapters.convert_movielens_100k(args.src, args.out)
    else:
        if not (args.reviews and args.meta):
            raise SystemExit("error: amazon-reviews-2023 needs --reviews FILE and --meta FILE")
        counts = adapters.convert_amazon_reviews_2023(args.reviews, args.meta, args.out)
    print(f"{args.dataset}: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f" -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionrank",
        description="Nightly indexing and ranking of an e-commerce catalog on Spark.",
    )
    parser.add_argument("--version", action="version", version=f"fusionrank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage's progress")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole nightly pipeline (or --stages) for one date")
    run.add_argument("--conf", required=True, help="environment config, e.g. conf/local.yaml (base.yaml beside it is read first)")
    run.add_argument("--date", required=True, type=_date, help="run date, YYYY-MM-DD")
    run.add_argument("--stages", help="comma-separated subset, in order")
    run.add_argument("--json", help="also write the stage results to this JSON file")
    run.set_defaults(func=cmd_run)

    from fusionrank.pipeline import ORDER

    stage = sub.add_parser("stage", help="run one stage for one date")
    stage.add_argument("name", choices=ORDER)
    stage.add_argument("--conf", required=True)
    stage.add_argument("--date", required=True, type=_date)
    stage.set_defaults(func=cmd_stage)

    data = sub.add_parser("data", help="fetch sample data and convert public data sets to the raw contract")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="fetch a sample data set and write the canonical raw inputs")
    fetch.add_argument("dataset", choices=["movielens-100k"])
    fetch.add_argument("--out", default="data/raw/movielens-100k")
    fetch.set_defaults(func=cmd_data_fetch)
    convert = data_sub.add_parser("convert", help="convert a public data set to catalog.jsonl + events.jsonl")
    convert.add_argument("dataset", choices=["movielens-100k", "amazon-reviews-2023"])
    convert.add_argument("--src", help="movielens-100k: folder with ml-100k.inter and ml-100k.item")
    convert.add_argument("--reviews", help="amazon-reviews-2023: reviews JSON lines (.jsonl or .jsonl.gz)")
    convert.add_argument("--meta", help="amazon-reviews-2023: item metadata JSON lines (.jsonl or .jsonl.gz)")
    convert.add_argument("--out", required=True)
    convert.set_defaults(func=cmd_data_convert)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from fusionrank.config import ConfigError
    from fusionrank.data.inputs import InputError
    from fusionrank.index import IndexError_
    from fusionrank.models import ModelError
    from fusionrank.pipeline import StageError
    from fusionrank.storage import StorageError

    return (ConfigError, InputError, IndexError_, ModelError, StageError, StorageError, FileNotFoundError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except _known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of `jobs/<stage>.py` under spark-submit."""
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"fusionrank stage {stage}")
    parser.add_argument("--conf", required=True)
    parser.add_argument("--date", required=True, type=_date)
    args = parser.parse_args(argv)
    _setup_logging(True)
    from fusionrank.config import load_config
    from fusionrank.pipeline import run_stage

    result = run_stage(stage, load_config(args.conf), args.date)
    _print_stage(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
