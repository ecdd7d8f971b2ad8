"""One night's run as a single self-contained HTML page.

`build_report(settings, run_date)` answers "did tonight's run go well, and what
did it recommend?": the stage records (seconds and counts), the quarantine, the
evaluation against the popularity baseline (with a trend over earlier nights),
the index manifest and a look at the recommendations themselves.

Only aggregated or limited data comes to the driver: every table is summarised
with Spark (group-bys, `limit`) before it is collected. Plots are PNGs rendered
with matplotlib's Agg canvas and embedded as base64, the styling is inline, so
the file can be mailed or archived and opens without any network access.
Sections whose table is missing (or has nothing for the date) say so instead of
failing the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from fusionrank.core import uri as uris
from fusionrank.core.catalog import DATED_TABLES, layout
from fusionrank.core.privacy import pseudonymise_users, user_salt
from fusionrank.core.spark import get_session, utc_literal
from fusionrank.index import build as index_mod
from fusionrank.pipeline.registry import ORDER
from fusionrank.pipeline.runlog import read_stage_records
from fusionrank.storage import fs
from fusionrank.storage.store import TableStore, partition_values
from fusionrank.core.config import Settings

log = logging.getLogger("fusionrank.report")

TREND_METRICS = ("ndcg", "precision", "recall")
TREND_DATES = 30
TOP_ITEMS = 15
SAMPLE_USERS = 5
TOP_QUERIES = 10  # the search section: the most searched queries, with their first items
QUERY_ITEMS = 3
HISTORY_TITLES = 10
SCORE_BIN = 50  # scores are binned to 1/SCORE_BIN
OURS, BASE = "#2b6cb0", "#c05621"  # fusionrank, baseline


class _NotAvailable(Exception):
    """A section's data is missing; the message says what is missing."""


# -- small helpers ---------------------------------------------------------------------
def e(value: object) -> str:
    """HTML-escape anything that came from the data."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], numeric: Iterable[int] = ()) -> str:
    """A table from already-escaped headers and raw cell values (escaped here)."""
    numeric = set(numeric)
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{e(_fmt(v))}</td>' if i in numeric else f"<td>{e(_fmt(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _folds(params: dict) -> str:
    """'5 (37, 41, ...)' for a re-ranker summed from fold models, '1' for one model."""
    rounds = params.get("fold_rounds")
    return f"{params.get('folds')} ({', '.join(str(r) for r in rounds)})" if rounds else "1"


def _na(message: str) -> str:
    return f'<p class="na">Not available: {e(message)}</p>'


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float):
    # Figure() draws on the Agg canvas without pyplot: no global state, no display.
    import matplotlib

    matplotlib.use("Agg")  # harmless when pyplot is never imported; keeps it headless if it is
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig


def _as_date(run_date: dt.date | str) -> dt.date:
    if isinstance(run_date, dt.datetime):
        return run_date.date()
    if isinstance(run_date, dt.date):
        return run_date
    return dt.date.fromisoformat(str(run_date))


def _dated_partitions(settings: Settings, name: str) -> list[str] | None:
    """run_date values of a table, from its Delta log (no Spark needed); None: no such table."""

    values = partition_values(settings.storage.table_path(name), "run_date")
    return values


# -- the report ------------------------------------------------------------------------
class _Report:
    def __init__(self, settings: Settings, run_date: dt.date, spark, records: dict, dates: dict[str, list[str]]):

        self.settings = settings
        self.run_date = run_date
        self.day = str(run_date)
        self.spark = spark
        self.store = TableStore(spark, settings)
        self.records = records
        self.dates = dates  # table -> run_dates present
        self._catalog = None

    # data access ------------------------------------------------------------------
    def has(self, table: str) -> bool:
        return self.day in self.dates.get(table, [])

    def exists(self, table: str) -> bool:
        return table in self.dates

    def for_date(self, table: str):
        if not self.exists(table):
            raise _NotAvailable(f"table {table} does not exist under {self.settings.storage.root}")
        if not self.has(table):
            raise _NotAvailable(f"table {table} has no rows for run_date {self.day}")
        return self.store.read(table, where={"run_date": self.run_date})

    def titles(self):
        """item_id -> title of the night's clean catalog (a DataFrame, or None)."""
        if self._catalog is None and self.has("catalog_clean"):
            self._catalog = self.store.read("catalog_clean", where={"run_date": self.run_date}).select(
                "item_id", "title")
        return self._catalog

    def with_titles(self, df, key: str = "item_id"):
        from pyspark.sql import functions as F

        titles = self.titles()
        if titles is None:
            return df.withColumn("title", F.lit(None).cast("string"))
        titles = titles.withColumnRenamed("item_id", key) if key != "item_id" else titles
        return df.join(F.broadcast(titles), key, "left")

    # sections ---------------------------------------------------------------------
    def section(self, anchor: str, title: str, build: Callable[[], str]) -> str:
        try:
            body = build()
        except _NotAvailable as exc:
            body = _na(str(exc))
        except Exception as exc:  # one broken section must not cost the whole report
            log.exception("report section %s failed", anchor)
            body = f'<p class="bad">This section could not be built: {e(type(exc).__name__)}: {e(exc)}</p>'
        return f'<section id="{anchor}"><h2>{e(title)}</h2>{body}</section>'

    def header(self) -> str:

        missing = [s for s in ORDER if s not in self.records]
        if not self.records:
            status = ("bad", f"No stage records for {self.day}: only tables were found; "
                             f"the run was not made through fusionrank.pipeline or its records were removed")
        elif missing:
            status = ("bad", f"INCOMPLETE: {len(ORDER) - len(missing)} of {len(ORDER)} stages recorded; "
                             f"missing: {', '.join(missing)}")
        else:
            status = ("ok", f"OK: all {len(ORDER)} stages recorded")
        problems = self.checks()
        checks = "".join(f'<li class="{cls}">{e(text)}</li>' for cls, text in problems)
        run_ids = sorted({r.get("run_id") for r in self.records.values() if r.get("run_id")})
        finished = max((r.get("finished_at") or "" for r in self.records.values()), default="")
        total = sum(float(r.get("seconds") or 0) for r in self.records.values())
        generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        facts = [
            ("Run date", self.day),
            ("Generated", generated),
            ("Storage root", str(self.settings.storage.root)),
            ("Run id(s)", ", ".join(run_ids) or "–"),
            ("Last stage finished", finished or "–"),
            ("Stage time (sum)", f"{total:.1f} s"),
        ]
        dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
        return (f"<header><h1>fusionrank nightly report · {e(self.day)}</h1>"
                f'<p class="status {status[0]}">{e(status[1])}</p><dl>{dl}</dl>'
                f'<ul class="checks">{checks}</ul></header>')

    def checks(self) -> list[tuple[str, str]]:
        """Cheap consistency checks on the stage records."""
        out = []
        for stage in ("clean_catalog", "clean_events"):
            counts = (self.records.get(stage) or {}).get("counts") or {}
            if {"raw_rows", "clean_rows", "quarantined_rows"} <= set(counts):
                raw, clean, bad = counts["raw_rows"], counts["clean_rows"], counts["quarantined_rows"]
                ok = raw == clean + bad
                share = bad / raw if raw else 0.0
                out.append(("ok" if ok else "bad",
                            f"{stage}: {raw:,} raw = {clean:,} clean + {bad:,} quarantined ({share:.2%})"
                            + ("" if ok else " — counts do not add up")))
        index_counts = (self.records.get("build_index") or {}).get("counts") or {}
        items = ((self.records.get("encode_items") or {}).get("counts") or {}).get("items")
        if "count" in index_counts and items is not None:
            ok = index_counts["count"] == items
            out.append(("ok" if ok else "warn",
                        f"build_index: {index_counts['count']:,} vectors for {items:,} catalog items"))
        rank_counts = (self.records.get("rank") or {}).get("counts") or {}
        users = ((self.records.get("build_profiles") or {}).get("counts") or {}).get("users")
        if "users_ranked" in rank_counts and users is not None:
            ok = rank_counts["users_ranked"] == users
            out.append(("ok" if ok else "warn",
                        f"rank: {rank_counts['users_ranked']:,} of {users:,} profiled users got recommendations"))
        return out

    def ranker(self) -> str:
        """The learned second stage: what it trained on, validation nDCG against
        retrieval order, the features with the most gain (ranks/rerank)."""
        counts = (self.records.get("rank") or {}).get("counts") or {}
        if not self.settings.rerank.enabled and "rerank" not in counts:
            raise _NotAvailable("the re-ranker is off (rerank.enabled: false): recommendations are in retrieval order")
        meta_path = uris.join(layout(self.settings).reranker(self.day), "reranker.json")
        state = counts.get("rerank", "unknown")
        head = f"<p>This night: <b>{e(state)}</b>"
        if counts.get("rerank_reason"):
            head += f" ({e(counts['rerank_reason'])})"
        head += "</p>"
        if not fs.exists(meta_path):
            return head + _na(f"no re-ranker trained for this date ({meta_path} missing)")
        meta = json.loads(fs.read_text(meta_path))
        rows = [("version", meta.get("version")), ("users trained on", meta.get("n_users")),
                ("labelled candidates", meta.get("n_labels")), ("boosting rounds", meta.get("best_iteration")),
                ("fold models summed (rounds each)", _folds(meta.get("params") or {})),
                ("validation nDCG@10, re-ranked", meta.get("valid_ndcg")),
                ("validation nDCG@10, retrieval order", meta.get("valid_ndcg_retrieval")),
                ("backtest nDCG@10, re-ranked (the guard)", meta.get("backtest_ndcg")),
                ("weight of retrieval order blended in (0: the model alone)", meta.get("retrieval_blend")),
                ("backtest nDCG@10, retrieval order", meta.get("backtest_ndcg_retrieval")),
                ("rejected by the guard", meta.get("rejected")),
                ("labels", f"{meta.get('label_split')} ({meta.get('label_days')} days)")]
        gains = sorted((meta.get("top_gain") or {}).items(), key=lambda t: -t[1])
        return (head + _table(["", "value"], rows) + "<h3>Top features by gain</h3>"
                + _table(["feature", "gain"], gains, numeric=[1]))

    def stages(self) -> str:

        if not self.records:
            table = _na(f"no stage records under {layout(self.settings).run_records(self.day)}")
        else:
            names = [s for s in ORDER if s in self.records] + sorted(set(self.records) - set(ORDER))
            rows = []
            for name in ORDER + [n for n in names if n not in ORDER]:
                record = self.records.get(name)
                if record is None:
                    rows.append(f'<tr class="missing"><td>{e(name)}</td><td class="num">–</td><td>–</td>'
                                f"<td>not recorded for this date</td></tr>")
                    continue
                counts = record.get("counts") or {}
                chips = []
                for key, value in counts.items():
                    if key == "metrics":
                        chips.append('<span class="chip">metrics: see Evaluation</span>')
                    elif isinstance(value, dict):
                        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "none"
                        chips.append(f'<span class="chip"><b>{e(key)}</b> {e(inner)}</span>')
                    else:
                        chips.append(f'<span class="chip"><b>{e(key)}</b> {e(_fmt(value))}</span>')
                seconds = record.get("seconds")
                rows.append(f"<tr><td>{e(name)}</td><td class=\"num\">{e(_fmt(seconds, 1))}</td>"
                            f"<td>{e(record.get('finished_at') or '–')}</td><td>{''.join(chips)}</td></tr>")
            table = ("<table><thead><tr><th>stage</th><th>seconds</th><th>finished (UTC)</th><th>counts</th></tr>"
                     f"</thead><tbody>{''.join(rows)}</tbody></table>")
        return table + "<h3>Quarantine</h3>" + self.quarantine()

    def quarantine(self) -> str:
        from pyspark.sql import functions as F

        recorded = {s: (r.get("counts") or {}).get("quarantined_rows") for s, r in self.records.items()
                    if "quarantined_rows" in (r.get("counts") or {})}
        if not self.has("quarantine"):
            # Nothing quarantined writes no files, so the date has no partition: say what the records say.
            if recorded and not any(recorded.values()):
                stages = ", ".join(f"{s}: 0" for s in recorded)
                return f'<p class="ok">No rows were quarantined for this date ({e(stages)}).</p>'
            if self.exists("quarantine"):
                return _na(f"table quarantine has no rows for run_date {self.day}")
            return _na(f"table quarantine does not exist under {self.settings.storage.root}")
        df = self.store.read("quarantine", where={"run_date": self.run_date})
        # Reasons that quote the bad value are grouped by their fixed prefix (as the stages count them).
        grouped = (df.select("stage", F.substring_index(F.col("reason"), ":", 1).alias("reason"))
                   .groupBy("stage", "reason").count().orderBy(F.desc("count"), "stage", "reason").limit(1000)
                   .collect())
        if not grouped:
            return '<p class="ok">No rows were quarantined for this date.</p>'
        per_stage: dict[str, int] = {}
        for row in grouped:
            per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + int(row["count"])
        stages = _table(["stage", "quarantined rows"], sorted(per_stage.items()), numeric=[1])
        top = _table(["stage", "reason", "rows"],
                     [(r["stage"], r["reason"], int(r["count"])) for r in grouped[:5]], numeric=[2])
        return f'<div class="row"><div>{stages}</div><div><h4>Top 5 reasons</h4>{top}</div></div>'

    def evaluation(self) -> str:
        import pandas as pd

        metrics = self.for_date("metrics").drop("run_date").toPandas()
        if metrics.empty:
            raise _NotAvailable(f"metrics has no rows for {self.day}")
        metrics = metrics.sort_values(["k", "metric"], na_position="last")
        split = ", ".join(sorted({str(s) for s in metrics["split"].dropna()}))
        baseline = ", ".join(sorted({str(s) for s in metrics["baseline_name"].dropna()})) or "baseline"
        rows = []
        for _, r in metrics.iterrows():
            k = None if pd.isna(r["k"]) else int(r["k"])
            name = r["metric"] if k is None else f"{r['metric']}@{k}"
            value, base = float(r["value"]), float(r["baseline"])
            if pd.isna(base):  # no baseline for this metric (the index's recall)
                rows.append((name, value, "–", "–"))
            elif r["metric"] in ("users_evaluated", "search_cases"):
                rows.append((name, int(value), int(base), "–"))
            else:
                rows.append((name, value, base, value - base))
        table = _table(["metric", "fusionrank", baseline, "difference"], rows, numeric=[1, 2, 3])
        at_k = metrics[metrics["k"].notna() & metrics["baseline"].notna()]
        chart = ""
        if not at_k.empty:
            labels = [f"{m}@{int(k)}" for m, k in zip(at_k["metric"], at_k["k"])]
            fig = _figure(max(5.0, 0.9 * len(labels) + 2), 3.4)
            ax = fig.add_subplot()
            xs = range(len(labels))
            ax.bar([x - 0.2 for x in xs], at_k["value"], width=0.4, label="fusionrank", color=OURS)
            ax.bar([x + 0.2 for x in xs], at_k["baseline"], width=0.4, label=baseline, color=BASE)
            ax.set_xticks(list(xs), labels)
            ax.set_title(f"{self.day} ({split})")
            top = max([float(v) for v in at_k["value"]] + [float(v) for v in at_k["baseline"]] + [0.0])
            ax.set_ylim(0, top * 1.3 if top > 0 else 1)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(loc="upper right", ncols=2, fontsize=9)
            chart = _png(fig)
        return (f"<p>Split <b>{e(split)}</b>; baseline <b>{e(baseline)}</b>.</p>"
                f'<div class="row"><div>{table}</div><div>{chart}</div></div>'
                f"<h3>Trend (last {TREND_DATES} run dates)</h3>{self.trend()}")

    def trend(self) -> str:
        from pyspark.sql import functions as F

        dates = self.dates.get("metrics", [])[-TREND_DATES:]
        if not dates:
            return _na("no run dates in metrics")
        k = self.settings.rank.k
        df = (self.store.read("metrics")
              .where(F.col("run_date").cast("string").isin(dates) & F.col("metric").isin(*TREND_METRICS)
                     & F.col("k").isNotNull())
              .select(F.col("run_date").cast("string").alias("run_date"), "metric", "k", "value", "baseline")
              .toPandas())
        if df.empty:
            return _na("metrics has no ndcg/precision/recall rows")
        if k not in set(df["k"]):
            k = int(df["k"].max())
        df = df[df["k"] == k]
        present = sorted(set(df["run_date"]))
        pos = {d: i for i, d in enumerate(present)}
        fig = _figure(11, 3.2)
        axes = fig.subplots(1, len(TREND_METRICS))
        for ax, metric in zip(axes, TREND_METRICS):
            part = df[df["metric"] == metric].sort_values("run_date")
            xs = [pos[d] for d in part["run_date"]]
            ax.plot(xs, part["value"], marker="o", color=OURS, label="fusionrank")
            ax.plot(xs, part["baseline"], marker="s", color=BASE, label="baseline")
            ax.set_title(f"{metric}@{k}")
            step = max(1, len(present) // 6)
            ticks = list(range(0, len(present), step))
            ax.set_xticks(ticks, [present[i] for i in ticks], rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(present) - 0.5)
            top = max([float(v) for v in part["value"]] + [float(v) for v in part["baseline"]] + [0.0])
            ax.set_ylim(0, top * 1.25 if top > 0 else 1)  # from zero: honest about the gap
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        return f"<p>{len(present)} run date(s) with metrics, {e(present[0])} to {e(present[-1])}.</p>{_png(fig)}"

    def index(self) -> str:

        folder = layout(self.settings).index(self.run_date)
        try:
            manifest = index_mod.read_manifest(folder)
        except Exception as exc:
            raise _NotAvailable(f"no index manifest for {self.day} ({exc})") from None
        check = manifest.get("self_check") or {}
        recall = check.get("recall_at_10")
        known = {"count", "dim", "type", "metric", "model_version", "run_date", "created_at", "self_check",
                 "faiss_version"}
        params = {k: v for k, v in manifest.items() if k not in known}
        min_recall = check.get("min_recall")
        verdict = ""
        if isinstance(recall, (int, float)) and isinstance(min_recall, (int, float)):
            verdict = " (ok)" if recall >= min_recall else " (BELOW min_recall)"
        rows = [
            ("path", str(folder)),
            ("type", manifest.get("type")),
            ("count", manifest.get("count")),
            ("dim", manifest.get("dim")),
            ("metric", manifest.get("metric")),
            ("params", json.dumps(params, sort_keys=True) if params else "–"),
            ("model_version", manifest.get("model_version")),
            ("created_at", manifest.get("created_at")),
            ("self_check.recall_at_10", (f"{recall:.4f}" if isinstance(recall, (int, float)) else recall)),
            ("self_check.queries / min_recall", f"{check.get('queries', '–')} / {min_recall}{verdict}"),
            ("faiss_version", manifest.get("faiss_version")),
        ]
        return _table(["field", "value"], rows)

    def recommendations(self) -> str:
        from pyspark.sql import functions as F

        recs = self.for_date("recs_user_topk")
        stats = recs.agg(F.count("*").alias("rows"), F.countDistinct("user_id").alias("users"),
                         F.countDistinct("item_id").alias("items"), F.min("score").alias("min"),
                         F.max("score").alias("max"), F.avg("score").alias("mean"),
                         F.max("rank").alias("max_rank")).first()
        if not stats["rows"]:
            raise _NotAvailable(f"recs_user_topk has no rows for {self.day}")
        catalog = self.store.count_rows("catalog_clean", where={"run_date": self.run_date}) \
            if self.has("catalog_clean") else None
        if catalog is None and self.has("catalog_clean"):
            catalog = self.titles().count()
        coverage = (f"{stats['items']:,} of {catalog:,} catalog items ({stats['items'] / catalog:.2%})"
                    if catalog else f"{stats['items']:,} items (catalog_clean not available for {self.day})")
        facts = [("users with recommendations", stats["users"]), ("recommendation rows", stats["rows"]),
                 ("max rank", stats["max_rank"]), ("catalog coverage", coverage),
                 ("score min / mean / max", f"{stats['min']:.4f} / {stats['mean']:.4f} / {stats['max']:.4f}")]
        dl = "".join(f"<dt>{e(k)}</dt><dd>{e(_fmt(v))}</dd>" for k, v in facts)

        # Score histogram, binned by Spark.
        bins = (recs.select((F.floor(F.col("score") * SCORE_BIN) / SCORE_BIN).alias("bin"))
                .groupBy("bin").count().orderBy("bin").collect())
        fig = _figure(6.5, 3.2)
        ax = fig.add_subplot()
        ax.bar([float(r["bin"]) for r in bins if r["bin"] is not None],
               [int(r["count"]) for r in bins if r["bin"] is not None],
               width=1 / SCORE_BIN, align="edge", color=OURS, edgecolor="white")
        ax.set_xlabel("score")
        ax.set_ylabel("recommendations")
        ax.set_title(f"score distribution (bins of {1 / SCORE_BIN:g})")
        ax.grid(axis="y", alpha=0.3)
        histogram = _png(fig)

        top = (self.with_titles(recs.groupBy("item_id").agg(F.count("*").alias("times"),
                                                             F.avg("rank").alias("mean_rank"))
                                .orderBy(F.desc("times"), "item_id").limit(TOP_ITEMS))
               .orderBy(F.desc("times"), "item_id").collect())
        top_table = _table(["#", "item_id", "title", "recommended to", "mean rank"],
                           [(i + 1, r["item_id"], r["title"], int(r["times"]), float(r["mean_rank"]))
                            for i, r in enumerate(top)], numeric=[0, 3, 4])
        return (f'<div class="row"><div><dl>{dl}</dl></div><div>{histogram}</div></div>'
                f"<h3>{TOP_ITEMS} most recommended items</h3>{top_table}"
                f"<h3>Sample users</h3>{self.sample_users(recs)}")

    def search(self) -> str:
        from pyspark.sql import functions as F

        topk = self.for_date("query_topk")
        queries = (topk.groupBy("query").agg(F.max("searches").alias("searches"), F.count("*").alias("items"))
                   .orderBy(F.desc("searches"), "query").limit(TOP_QUERIES).collect())
        if not queries:
            raise _NotAvailable(f"query_topk has no rows for {self.day}: no search events in the query window "
                                f"(query.lookback_days {self.settings.query.lookback_days})")
        total = topk.select("query").distinct().count()
        wanted = [r["query"] for r in queries]
        first = (self.with_titles(topk.where(F.col("query").isin(wanted) & (F.col("rank") <= QUERY_ITEMS)))
                 .orderBy("query", "rank").collect())
        by_query: dict[str, list] = {q: [] for q in wanted}
        for r in first:
            by_query[r["query"]].append(r)
        rows = [(r["query"], int(r["searches"]),
                 "; ".join(f"{x['title'] or x['item_id']} (ctr {float(x['ctr'] or 0):.2f})" for x in by_query[r["query"]]))
                for r in queries]
        note = (f"{total:,} queries in query_topk; the {len(queries)} most searched, with their first "
                f"{QUERY_ITEMS} items (similarity re-ranked by the click-through the logs show). Other queries "
                f"are answered by `fusionrank search`.")
        return (f'<p class="note">{e(note)}</p>'
                + _table(["query", "searches", f"top {QUERY_ITEMS} items"], rows, numeric=[1]))

    def sample_users(self, recs) -> str:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        # Numeric ids in numeric order (then anything else as text): deterministic.
        users = [r["user_id"] for r in recs.select("user_id").distinct()
                 .orderBy(F.expr("try_cast(user_id AS BIGINT)").asc_nulls_last(), "user_id")
                 .limit(SAMPLE_USERS).collect()]
        their_recs = (self.with_titles(recs.where(F.col("user_id").isin(users))
                                       .select("user_id", "rank", "item_id", "score", "reason"))
                      .orderBy("user_id", "rank").limit(SAMPLE_USERS * 1000).collect())
        history: dict[str, list] = {u: [] for u in users}
        history_note = ""
        if "events_clean" in self.dates:

            day = self.run_date + dt.timedelta(days=1)
            run_end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            holdout_start = run_end - dt.timedelta(days=self.settings.evaluate.holdout_days)
            latest = Window.partitionBy("user_id").orderBy(F.desc("event_ts"), "item_id", "event_type")

            # recs_user_topk may carry pseudonymised ids: match the events to them.
            events = (pseudonymise_users(self.store.read("events_clean"), user_salt(self.settings))
                      .where(F.col("user_id").isin(users) & F.col("item_id").isNotNull()
                             & (F.col("event_ts") < utc_literal(run_end)))
                      .withColumn("n", F.row_number().over(latest))
                      .where(F.col("n") <= HISTORY_TITLES)
                      # Formatted and compared in Spark (session time zone UTC), not in the driver's zone.
                      .select("user_id", "item_id", "event_type", "value", "n",
                              F.date_format("event_ts", "yyyy-MM-dd HH:mm").alias("when"),
                              (F.col("event_ts") >= utc_literal(holdout_start)).alias("held_out")))
            for r in self.with_titles(events).orderBy("user_id", "n").collect():
                history[r["user_id"]].append((r, bool(r["held_out"])))
            history_note = (f"History: the {HISTORY_TITLES} latest events up to {self.day}, newest first; "
                            f"events from {holdout_start.date()} on are the evaluation hold-out (not seen by "
                            f"the model).")
        else:
            history_note = "History not available: table events_clean does not exist."
        by_user: dict[str, list] = {u: [] for u in users}
        for r in their_recs:
            by_user[r["user_id"]].append(r)
        cards = []
        for user in users:
            hist_rows = "".join(
                f'<tr{" class=held" if held else ""}><td>{e(r["when"])}</td><td>{e(r["event_type"])}'
                f'{_value(r["event_type"], r["value"])}</td>'
                f'<td>{e(r["title"] or r["item_id"])}</td></tr>'
                for r, held in history.get(user, []))
            hist = (f'<table class="hist"><thead>'
                    f"<tr><th>event_ts (UTC)</th><th>event</th><th>title</th></tr></thead>"
                    f"<tbody>{hist_rows}</tbody></table>") if hist_rows else _na("no events")
            rec_rows = "".join(
                f'<tr><td class="num">{e(r["rank"])}</td><td>{e(r["title"] or r["item_id"])}</td>'
                f'<td class="num">{e(_fmt(float(r["score"])))}</td><td>{e(r["reason"])}</td></tr>'
                for r in by_user[user])
            recs_table = ("<table><thead><tr><th>rank</th><th>title</th><th>score</th><th>reason</th></tr></thead>"
                          f"<tbody>{rec_rows}</tbody></table>")
            cards.append(f'<div class="user"><h4>user {e(user)}</h4><div class="row">'
                         f"<div><h5>Recent history</h5>{hist}</div><div><h5>Recommended</h5>{recs_table}</div>"
                         f"</div></div>")
        return f'<p class="note">{e(history_note)}</p>' + "".join(cards)

    def render(self) -> str:
        self.spark.sparkContext.setJobGroup("fusionrank:report", f"fusionrank:report {self.day}", True)
        sections = [
            self.header(),
            self.section("stages", "Stages", self.stages),
            self.section("evaluation", "Evaluation", self.evaluation),
            self.section("index", "Index", self.index),
            self.section("ranker", "Ranker", self.ranker),
            self.section("recommendations", "Recommendations", self.recommendations),
            self.section("search", "Search", self.search),
        ]
        nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in
                         [("stages", "Stages"), ("evaluation", "Evaluation"), ("index", "Index"),
                          ("recommendations", "Recommendations"), ("search", "Search")])
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>fusionrank {e(self.day)}</title><style>{_CSS}</style></head>"
                f"<body><nav>{nav}</nav>{''.join(sections)}</body></html>\n")


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 24px 48px;color:#1a202c;font-size:14px;line-height:1.4}
nav{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #e2e8f0;z-index:1}
nav a{color:#2b6cb0;text-decoration:none}
h1{font-size:22px;margin:16px 0 8px}h2{font-size:18px;border-bottom:2px solid #2b6cb0;padding-bottom:4px;
margin-top:32px}h3{font-size:15px;margin:20px 0 8px}h4{margin:8px 0}h5{margin:4px 0;color:#4a5568}
table{border-collapse:collapse;margin:4px 0 8px}th,td{border:1px solid #e2e8f0;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#edf2f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.missing td{color:#c53030}tr.held td{background:#fffbea}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}dt{color:#4a5568}dd{margin:0}
.status{font-weight:bold;padding:6px 10px;border-radius:4px;display:inline-block}
.status.ok{background:#c6f6d5;color:#22543d}.status.bad{background:#fed7d7;color:#822727}
ul.checks{margin:4px 0;padding-left:20px}li.ok{color:#22543d}li.warn{color:#975a16}li.bad{color:#c53030}
.chip{display:inline-block;background:#edf2f7;border-radius:3px;padding:0 6px;margin:1px 3px 1px 0;
font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.row>div{min-width:0}
img{max-width:100%;height:auto}
.na{color:#975a16;font-style:italic}.bad{color:#c53030}.ok{color:#22543d}.note{color:#4a5568;font-size:12px}
.user{border:1px solid #e2e8f0;border-radius:4px;padding:4px 12px;margin:8px 0}
.user table{font-size:12px}
.user .row{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,3fr);gap:16px}
.user table{width:100%}.hist td:nth-child(-n+2){white-space:nowrap}
"""


def _value(event_type: str | None, value) -> str:
    """A rating as stars-out-of, any other value (e.g. quantity) as ×n; escaped."""
    if value is None:
        return ""
    return e((" ★" if event_type == "rating" else " ×") + _fmt(float(value), 1))


def build_report(settings: Settings, run_date: dt.date, spark=None, out_path=None) -> Path | str:
    """Write the HTML report of `run_date` and return its path (a Path for a local
    file, the URI for one on an object store).

    Default path: `<storage.root>/reports/run_date=<D>/report.html`, replaced
    atomically. Raises ValueError when nothing of a run exists for the date.
    """

    run_date = _as_date(run_date)
    root = settings.storage.root
    records = read_stage_records(settings, run_date)
    # table -> its run_date partitions, for the tables that exist.
    dates = {name: parts for name in DATED_TABLES if (parts := _dated_partitions(settings, name)) is not None}
    if _dated_partitions(settings, "events_clean") is not None:
        dates["events_clean"] = []  # exists, not partitioned by run date
    index_present = fs.exists(uris.join(layout(settings).index(run_date), index_mod.MANIFEST))
    if not records and not index_present and not any(str(run_date) in v for v in dates.values()):
        raise ValueError(f"no fusionrank run found for {run_date} under {root}")

    if spark is None:

        spark = get_session(settings)
    document = _Report(settings, run_date, spark, records, dates).render()

    target = str(out_path) if out_path else layout(settings).report(run_date)
    if not uris.is_local(target):  # an object store: one PUT, readers see old or new
        fs.write_text(target, document)
        log.info("report for %s written to %s", run_date, target)
        return target
    out = Path(uris.local_path(target))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("report for %s written to %s", run_date, out)
    return out
