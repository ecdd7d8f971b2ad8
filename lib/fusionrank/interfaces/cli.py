"""The `fusionrank` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path

from fusionrank import __version__
from fusionrank.core.catalog import OUTPUT_TABLES, TABLES
from fusionrank.core.config import ConfigError, load_config
from fusionrank.core.context import make_context
from fusionrank.core.errors import USER_ERRORS
from fusionrank.core.logs import configure_logging
from fusionrank.interfaces import config_show, doctor, show, sizing
from fusionrank.interfaces.progress import StageProgress
from fusionrank.interfaces.report import build_report
from fusionrank.interfaces.search import search
from fusionrank.pipeline.registry import ORDER, STAGES
from fusionrank.pipeline.runner import run_all, session_for
from fusionrank.publish import gate as publish
from fusionrank.raw import adapters
from fusionrank.raw.synth import generate


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date must be YYYY-MM-DD, got {text!r}") from None


def _setup_logging(args, settings=None) -> None:

    fmt = "json" if getattr(args, "log_json", False) else (settings.logging.format if settings else "text")
    configure_logging(fmt, "INFO" if getattr(args, "verbose", False) else "WARNING")


def _load(args):

    settings = load_config(args.conf, base=getattr(args, "base", None))
    _setup_logging(args, settings)
    return settings


def cmd_config_show(args) -> int:
    print(config_show.render(_load(args)))
    return 0


def _run_stages(settings, run_date: dt.date, stages: list[str]) -> list:

    spark = session_for(settings, stages)  # a single stage gets its spark.stages conf
    with StageProgress(spark) as progress:
        return run_all(settings, run_date, spark, stages, on_stage=progress.done, stage_scope=progress.stage)


def print_summary(settings, run_date: dt.date, results) -> None:

    ctx = make_context(settings, run_date)
    print(f"\nfusionrank run {run_date}: outputs under {settings.storage.root}")
    print(f"  {'table':<18} {'rows':>10}  path")
    for name in OUTPUT_TABLES:
        where = {"run_date": run_date} if TABLES[name].dated else None
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
        searched = {n: v for n, v in metrics.items() if n.startswith("search_")}
        for name, (ours, base) in ((n, v) for n, v in metrics.items() if n not in searched):
            if name == "users_evaluated":
                continue
            print(f"  {name:<14} {ours:>10.4f} {base:>10.4f}")
        if searched.get("search_cases"):  # evaluate.search, on nights with held-out search sessions
            print(f"\nsearch ({searched['search_cases']} held-out search sessions):")
            print(f"  {'metric':<14} {'fusionrank':>10} {'dense 0-shot':>12}")
            for name, (ours, base) in ((n, v) for n, v in searched.items() if n != "search_cases"):
                print(f"  {name[len('search_'):]:<14} {ours:>10.4f} {base:>12.4f}")


def cmd_run(args) -> int:

    settings = _load(args)
    stages = args.stages.split(",") if args.stages else ORDER
    unknown = [s for s in stages if s not in ORDER]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {unknown}; stages: {', '.join(ORDER)}")
    print(f"fusionrank {__version__}: running {len(stages)} stage(s) for {args.date} with {args.conf}", flush=True)
    results = _run_stages(settings, args.date, stages)
    print_summary(settings, args.date, results)
    if not args.no_report:

        print(f"\nreport: {build_report(settings, args.date)}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"stage": r.stage, "seconds": r.seconds, "counts": r.counts} for r in results], indent=2, default=str))
    return 0


def cmd_stage(args) -> int:
    settings = _load(args)
    _run_stages(settings, args.date, [args.name])
    return 0


def cmd_config_stage_conf(args) -> int:
    """Each stage's Spark conf (spark.conf + spark.stages.<stage>.conf) as JSON: the
    value of the Airflow Variable fusionrank_stage_conf (README, "Operations")."""
    spark = _load(args).spark
    if args.format == "submit":  # spark-submit arguments for one stage
        if not args.stage:
            raise ConfigError("config stage-conf: --format submit needs --stage")
        conf = spark.conf_for(args.stage)
        print(" ".join(f"--conf {shlex.quote(f'{key}={conf[key]}')}" for key in sorted(conf)))
        return 0
    names = [args.stage] if args.stage else list(STAGES)
    print(json.dumps({name: spark.conf_for(name) for name in names}, indent=2, sort_keys=True))
    return 0


def cmd_sizing(args) -> int:
    settings = _load(args)
    if args.readme:
        changed = sizing.update_readme(args.readme, settings)
        print(f"{args.readme}: sizing table {'updated' if changed else 'already current'}")
        return 0
    print(sizing.render(settings), end="")
    return 0


def cmd_doctor(args) -> int:
    settings = _load(args)
    if args.master:
        settings.spark.master = args.master
    checks = doctor.run_checks(settings, executors=not args.no_executors, timeout=args.timeout)
    if args.json:
        print(json.dumps(doctor.as_dicts(checks), indent=2))
    else:
        print(doctor.render(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_report(args) -> int:

    settings = _load(args)
    print(build_report(settings, args.date, out_path=args.out))
    return 0


def _context(args):

    settings = _load(args)
    return make_context(settings, args.date or _latest_date(settings))


def _latest_date(settings) -> dt.date:

    store = make_context(settings, dt.date.today()).store
    latest = store.latest_partition("recs_user_topk", "run_date")
    if latest is None:
        raise SystemExit("error: no run found (recs_user_topk is empty); pass --date")
    return dt.date.fromisoformat(latest)


def _show_published(args) -> int:

    settings = _load(args)
    now = publish.current(settings)
    recent = publish.decisions(settings, limit=args.limit)
    if args.json:
        print(json.dumps({"current": now.as_dict() if now else None, "decisions": [d.as_dict() for d in recent]},
                         indent=2, default=str))
        return 0
    if now is None:
        print("current snapshot: none (nothing published yet)")
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(now.metrics.items()))
        print(f"current snapshot: run_date {now.run_date} (published {now.decided_at:%Y-%m-%d %H:%M:%S}, {metrics})")
        print("  tables at: " + ", ".join(f"{t} v{v}" for t, v in sorted(now.table_versions.items())))
    print(f"\nlatest decisions (newest first):")
    for d in recent:
        why = f": {'; '.join(d.reasons)}" if d.reasons else ""
        print(f"  {d.decided_at:%Y-%m-%d %H:%M:%S}  {d.run_date}  {d.status}{why}")
    return 0


def cmd_show(args) -> int:

    if args.what == "published":
        return _show_published(args)
    if args.what == "tables":
        settings = _load(args)

        rows = show.show_tables(make_context(settings, dt.date.today()).store)
        print(json.dumps(rows, indent=2, default=str) if args.json else show.render_tables(rows))
        return 0
    if not args.id:
        raise SystemExit(f"error: show {args.what} needs an id, e.g. fusionrank show {args.what} 42 --conf ...")
    ctx = _context(args)
    try:
        data = (show.show_user if args.what == "user" else show.show_item)(ctx, args.id)
    except LookupError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    render = show.render_user if args.what == "user" else show.render_item
    print(json.dumps(data, indent=2, default=str) if args.json else render(data))
    return 0


def cmd_search(args) -> int:

    settings = _load(args)
    try:
        hits = search(args.query, k=args.k, settings=settings, run_date=args.date, user_id=args.user)
    except LookupError as exc:
        raise SystemExit(f"error: search: {exc}") from None
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return 0
    print(f"  {'rank':>4}  {'item_id':<12} {'score':>7}  title")
    for hit in hits:
        print(f"  {hit.rank:>4}  {hit.item_id:<12} {hit.score:>7.4f}  {hit.title or ''}")
    return 0


def cmd_data_fetch(args) -> int:

    counts = adapters.fetch_movielens_100k(args.out)
    print(f"movielens-100k: {counts['items']} items, {counts['events']} events in {args.out}")
    return 0


def cmd_data_convert(args) -> int:

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


def cmd_data_synth(args) -> int:

    images = "none" if args.no_images else args.images
    try:
        manifest = generate(args.out, items=args.items, users=args.users, days=args.days, seed=args.seed,
                            end_date=args.end_date, images=images, dirty=args.dirty, query_noise=args.query_noise)
    except ValueError as exc:
        raise SystemExit(f"error: data synth: {exc}") from None
    by_type = ", ".join(f"{k} {v}" for k, v in manifest["events_by_type"].items())
    print(f"synthetic shop: {manifest['items']} items ({manifest['images_written']} images), "
          f"{manifest['users']} users, {manifest['events']} events ({by_type}), "
          f"{manifest['first_event_day']} .. {args.end_date} -> {args.out}")
    if manifest["dirty_rows"]:
        print(f"dirty rows injected: {manifest['dirty_rows']['catalog']} catalog, {manifest['dirty_rows']['events']} "
              f"events; expected quarantine in {Path(args.out) / 'dirty_expected.json'}")
    return 0


def _add_conf_arguments(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """--conf (required) and --base, as every command that reads the config takes them."""
    parser.add_argument("--conf", required=True, help=help)
    parser.add_argument("--base", help="base layer (default: the project's conf/base.yaml, or the overlay's base: key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusionrank",
        description="Nightly indexing and ranking of an e-commerce catalog on Spark.",
    )
    parser.add_argument("--version", action="version", version=f"fusionrank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stage's progress (INFO)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole nightly pipeline (or --stages) for one date")
    _add_conf_arguments(run, help="environment config, e.g. conf/local.yaml (overlaid on the base layer)")
    run.add_argument("--date", required=True, type=_date, help="run date, YYYY-MM-DD")
    run.add_argument("--stages", help="comma-separated subset, in order")
    run.add_argument("--json", help="also write the stage results to this JSON file")
    run.add_argument("--no-report", action="store_true", help="skip the HTML run report at the end")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="write the self-contained HTML report of one night")
    report.add_argument("--conf", required=True)
    report.add_argument("--date", required=True, type=_date)
    report.add_argument("--out", help="HTML file to write (default: <storage.root>/reports/run_date=D/report.html)")
    report.set_defaults(func=cmd_report)

    show = sub.add_parser("show", help="inspect what was ranked: a user, an item, the tables, or what is published")
    show.add_argument("what", choices=["user", "item", "tables", "published"])
    show.add_argument("id", nargs="?", help="user id or item id")
    show.add_argument("--conf", required=True)
    show.add_argument("--date", type=_date, help="run date (default: the latest run)")
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    show.add_argument("--limit", type=int, default=10, help="published: how many recent decisions to list")
    show.set_defaults(func=cmd_show)

    query = sub.add_parser("search", help="the top items for a query over a night's index (no Spark)")
    query.add_argument("query")
    query.add_argument("--conf", required=True)
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--date", type=_date,
                       help="run date of the index (default: the published snapshot, else the latest index)")
    query.add_argument("--user", default=None,
                       help="personalise: blend this user's profile in (query.user_weight; id as in user_profiles)")
    query.add_argument("--json", action="store_true", help="JSON instead of a table")
    query.set_defaults(func=cmd_search)


    stage = sub.add_parser("stage", help="run one stage for one date")
    stage.add_argument("name", choices=ORDER + [s for s in STAGES if s not in ORDER])
    _add_conf_arguments(stage)
    stage.add_argument("--date", required=True, type=_date)
    stage.set_defaults(func=cmd_stage)

    check = sub.add_parser("doctor", help="check a deployment before its first night: storage, Delta engine, models, "
                                          "executors (exit status 1 names what is missing)")
    _add_conf_arguments(check)
    check.add_argument("--master", help="Spark master for the check (default: spark.master, or spark-submit's)")
    check.add_argument("--no-executors", action="store_true", help="driver-side checks only (no Spark job)")
    check.add_argument("--timeout", type=float, default=180, help="seconds the executor probe may take (default 180)")
    check.add_argument("--json", action="store_true", help="the checks as JSON")
    check.set_defaults(func=cmd_doctor)

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_show = config_sub.add_parser("show", help="the effective merged config, each value with its source file")
    _add_conf_arguments(config_show)
    config_show.set_defaults(func=cmd_config_show)
    stage_conf = config_sub.add_parser(
        "stage-conf", help="each stage's Spark conf as JSON (the Airflow Variable fusionrank_stage_conf)")
    _add_conf_arguments(stage_conf)
    stage_conf.add_argument("--stage", choices=list(STAGES), help="one stage only")
    stage_conf.add_argument("--format", choices=["json", "submit"], default="json",
                            help="submit: that stage's --conf arguments for spark-submit (needs --stage)")
    stage_conf.set_defaults(func=cmd_config_stage_conf)

    plan = sub.add_parser("sizing", help="what each stage holds where (driver, executor JVM, Python worker, GPU) "
                                         "at 1M-100M items and 10M-100M users, as a markdown table")
    _add_conf_arguments(plan)
    plan.add_argument("--readme", help="write the table between this file's <!-- sizing:begin/end --> markers")
    plan.set_defaults(func=cmd_sizing)

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
    synth = data_sub.add_parser(
        "synth", help="generate a synthetic e-commerce shop (catalog, product images, events with searches)")
    synth.add_argument("--items", type=int, default=2000, help="catalog size (default 2000)")
    synth.add_argument("--users", type=int, default=1000, help="users (default 1000)")
    synth.add_argument("--days", type=int, default=60, help="days of events, ending on --end-date (default 60)")
    synth.add_argument("--end-date", type=_date, default=dt.date(2026, 11, 22),
                       help="last day of events, the run date to use (default 2026-11-22)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    synth.add_argument("--images", choices=["item", "variant", "none"], default="item",
                       help="a PNG per item (default), one per (category, colour) shared by its items, or none")
    synth.add_argument("--no-images", action="store_true", help="same as --images none")
    synth.add_argument("--dirty", action="store_true",
                       help="inject bad rows and a bot user; expected quarantine counts in dirty_expected.json")
    synth.add_argument("--query-noise", type=float, default=0.0,
                       help="share of search queries written the way shoppers type: synonyms, typos, word order, "
                            "attribute-only (raw.query_noise; kinds in query_kinds.json; default 0)")
    synth.add_argument("--out", required=True)
    synth.set_defaults(func=cmd_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return args.func(args)
    except (*USER_ERRORS, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
