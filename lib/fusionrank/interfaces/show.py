"""Look inside one night's outputs: a user, an item, or the tables themselves.

`show_user`, `show_item` and `show_tables` return plain JSON-serialisable dicts
(for `--json` output and tests); `render_user`, `render_item` and
`render_tables` turn them into terminal tables with `rich` and return the text.

Every query filters to one user or one item (and one run date's partition)
before anything is collected, so only a handful of rows reach the driver.
`show_tables` reads only the Delta logs, never the data files.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import Window
from pyspark.sql import functions as F

from fusionrank.core import uri as uris
from fusionrank.core.catalog import OUTPUT_TABLES, layout
from fusionrank.index.build import load_index
from fusionrank.ranks.rerank import apply as rerank_apply, nightly as rerank_nightly
from fusionrank.core.privacy import pseudonymise_id, user_salt
from fusionrank.core.spark import utc_literal
from fusionrank.storage import fs

# ISO-8601 with the session time zone's offset (fusionrank sessions run in UTC).
_ISO = "yyyy-MM-dd'T'HH:mm:ssxxx"
TITLE_WIDTH = 48


# -- helpers -------------------------------------------------------------------------
def _iso(column: str) -> F.Column:
    return F.date_format(F.col(column), _ISO)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _titles(ctx, item_ids: Iterable[str | None]) -> dict[str, str]:
    """item_id -> title from the run date's catalog_clean, for a few items only."""
    ids = sorted({i for i in item_ids if i is not None})
    if not ids:
        return {}
    rows = (
        ctx.for_date("catalog_clean")
        .where(F.col("item_id").isin(ids))
        .select("item_id", "title")
        .collect()
    )
    return {r["item_id"]: r["title"] for r in rows}


# -- show_user -------------------------------------------------------------------------
def show_user(ctx, user_id: str, history_limit: int = 10) -> dict:
    """One user's history, profile and recommendations for `ctx.run_date`.

    The history is every clean event up to the end of the run date (held-out days
    included), most recent first, `history_limit` of them; `history_total` counts
    them all. Raises LookupError when the user has neither events nor recs.
    """
    user_id = str(user_id)
    date = ctx.run_date
    # Outputs may carry pseudonymised ids (privacy.pseudonymise_user_ids); events do not.

    salt = user_salt(ctx.settings)
    output_id = pseudonymise_id(user_id, salt) if salt else user_id

    # History: the user's events up to the run date, newest first, with the total.
    events: DataFrame = ctx.events().where(
        (F.col("user_id") == user_id) & (F.col("event_ts") < utc_literal(ctx.run_end))
    )
    history_rows: list = []
    history_total = 0
    if history_limit > 0:
        ordered = (
            events.withColumn("_total", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
            .orderBy(F.col("event_ts").desc(), F.col("event_type"), F.col("item_id"))
            .limit(int(history_limit))
            .select("item_id", "event_type", _iso("event_ts").alias("event_ts"), "value", "query", "_total")
        )
        history_rows = ordered.collect()
        history_total = int(history_rows[0]["_total"]) if history_rows else 0
    else:
        history_total = int(events.count())

    # Profile (absent for users without training history, or before build_profiles ran).
    profile = None
    if ctx.has_date("user_profiles"):
        prow = (
            ctx.for_date("user_profiles")
            .where(F.col("user_id") == output_id)
            .select("history_len", _iso("last_event_ts").alias("last_event_ts"))
            .limit(1)
            .collect()
        )
        if prow:
            profile = {
                "history_len": None if prow[0]["history_len"] is None else int(prow[0]["history_len"]),
                "last_event_ts": prow[0]["last_event_ts"],
            }

    # Recommendations of the night, by rank.
    rec_rows = (
        ctx.for_date("recs_user_topk")
        .where(F.col("user_id") == output_id)
        .select("rank", "item_id", "score", "reason", "reason_item_id")
        .orderBy("rank")
        .collect()
    )

    if history_total == 0 and not rec_rows:
        raise LookupError(f"user {user_id} has no events and no recommendations for {date}")

    titles = _titles(ctx, [r["item_id"] for r in history_rows] + [r["item_id"] for r in rec_rows])
    history = [
        {
            "item_id": r["item_id"],
            "title": titles.get(r["item_id"]),
            "event_type": r["event_type"],
            "event_ts": r["event_ts"],
            "value": _float(r["value"]),
            **({"query": r["query"]} if r["query"] is not None else {}),
        }
        for r in history_rows
    ]
    recommendations = [
        {
            "rank": int(r["rank"]),
            "item_id": r["item_id"],
            "title": titles.get(r["item_id"]),
            "score": _float(r["score"]),
            "reason": r["reason"],
            "reason_item_id": r["reason_item_id"],
        }
        for r in rec_rows
    ]
    _add_features(ctx, output_id, user_id, recommendations)
    return {
        "user_id": user_id,
        "run_date": str(date),
        "history": history,
        "history_total": history_total,
        "profile": profile,
        "recommendations": recommendations,
    }


def _add_features(ctx, output_id: str, user_id: str, recommendations: list[dict]) -> None:
    """With a re-ranker for the date: each recommendation's top contributing features."""
    folder = layout(ctx.settings).reranker(ctx.run_date)
    if not recommendations or not fs.exists(uris.join(folder, "reranker.json")) or not ctx.has_date("user_profiles"):
        return
    profile = (ctx.for_date("user_profiles").where(F.col("user_id") == output_id)
               .select("profile_vec", "history_item_ids", "history_weights"))
    mine = ctx.training_events().where(F.col("user_id") == user_id)
    seen = mine.where(F.col("item_id").isNotNull()).agg(F.collect_set("item_id").alias("seen"))
    extra = rerank_nightly.user_columns(mine, ctx.settings.rerank.recent).drop("user_id")
    rows = pa.Table.from_pandas(profile.crossJoin(seen).crossJoin(extra).toPandas(), preserve_index=False)
    if rows.num_rows == 0:
        return
    index = load_index(ctx.index_path())
    reranker = rerank_apply.load_reranker(folder, compiled=False)  # contributions come from LightGBM
    explained = rerank_apply.explain(index, reranker, rows.combine_chunks().to_batches()[0],
                                     [r["item_id"] for r in recommendations])
    for r in recommendations:
        if r["item_id"] in explained:
            r["features"] = [{"feature": n, "contribution": round(v, 4)} for n, v in explained[r["item_id"]]]


# -- show_item -------------------------------------------------------------------------
def show_item(ctx, item_id: str) -> dict:
    """One item's catalog row, similar items, embedding modalities and reach for the date."""
    item_id = str(item_id)
    date = ctx.run_date
    catalog = ctx.for_date("catalog_clean")
    rows = (
        catalog.where(F.col("item_id") == item_id)
        .select(
            "item_id", "title", "description", "category", "brand", "price", "image_uri",
            "content_hash", _iso("updated_at").alias("updated_at"),
        )
        .limit(1)
        .collect()
    )
    if not rows:
        raise LookupError(f"item {item_id} is not in catalog_clean for {date}")
    row = rows[0]

    similar: list[dict] = []
    if ctx.has_date("recs_item_similar"):
        sim_rows = (
            ctx.for_date("recs_item_similar")
            .where(F.col("item_id") == item_id)
            .select("rank", "similar_item_id", "score")
            .orderBy("rank")
            .collect()
        )
        titles = _titles(ctx, [r["similar_item_id"] for r in sim_rows])
        similar = [
            {
                "rank": int(r["rank"]),
                "similar_item_id": r["similar_item_id"],
                "title": titles.get(r["similar_item_id"]),
                "score": _float(r["score"]),
            }
            for r in sim_rows
        ]

    modalities = None
    if ctx.has_date("item_embeddings"):
        def size(column: str) -> F.Column:
            return F.when(F.col(column).isNull(), F.lit(0)).otherwise(F.size(column)).alias(f"{column}_dim")

        emb = (
            ctx.for_date("item_embeddings")
            .where(F.col("item_id") == item_id)
            .select(
                "model_version",
                _iso("encoded_at").alias("encoded_at"),
                size("text_vec"), size("image_vec"), size("behaviour_vec"), size("fused_vec"),
                F.col("text_vec").isNotNull().alias("has_text"),
                F.col("image_vec").isNotNull().alias("has_image"),
                F.col("behaviour_vec").isNotNull().alias("has_behaviour"),
            )
            .limit(1)
            .collect()
        )
        if emb:
            e = emb[0]
            modalities = {
                "text": bool(e["has_text"]),
                "image": bool(e["has_image"]),
                "behaviour": bool(e["has_behaviour"]),
                "model_version": e["model_version"],
                "encoded_at": e["encoded_at"],
                "dims": {
                    "text": int(e["text_vec_dim"]),
                    "image": int(e["image_vec_dim"]),
                    "behaviour": int(e["behaviour_vec_dim"]),
                    "fused": int(e["fused_vec_dim"]),
                },
            }

    recommended_to = None
    if ctx.has_date("recs_user_topk"):
        recommended_to = int(
            ctx.for_date("recs_user_topk")
            .where(F.col("item_id") == item_id)
            .select(F.countDistinct("user_id").alias("n"))
            .collect()[0]["n"]
        )

    return {
        "item_id": item_id,
        "run_date": str(date),
        "title": row["title"],
        "description": row["description"],
        "category": row["category"],
        "brand": row["brand"],
        "price": _float(row["price"]),
        "image_uri": row["image_uri"],
        "content_hash": row["content_hash"],
        "updated_at": row["updated_at"],
        "similar": similar,
        "modalities": modalities,
        "recommended_to_users": recommended_to,
    }


# -- show_tables -----------------------------------------------------------------------
def show_tables(store) -> list[dict]:
    """Every output table's version, size and partitions, from the Delta logs only."""

    out: list[dict] = []
    for name in OUTPUT_TABLES:
        path = str(store.path(name))
        if not store.exists(name):
            out.append({"table": name, "path": path, "exists": False})
            continue
        info = store.info(name)
        columns = list(info.partitions)
        values = store.partition_values(name, columns[0]) if columns else []
        out.append({
            "table": name,
            "path": str(info.path),
            "exists": True,
            "version": int(info.version),
            "rows": info.rows,
            "partition_columns": columns,
            "partitions": len(values),
            "latest_partition": values[-1] if values else None,
            "last_commit": info.last_commit,
        })
    return out


# -- rendering -------------------------------------------------------------------------
def _truncate(text: Any, width: int = TITLE_WIDTH) -> str:
    if text is None:
        return "-"
    text = str(text)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _render(*renderables) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False, color_system=None, highlight=False)
    for item in renderables:
        console.print(item)
    return buffer.getvalue()


def render_user(d: dict) -> str:
    from rich.table import Table

    profile = d.get("profile")
    head = f"user {d['user_id']}  run date {d['run_date']}  events {d['history_total']}"
    if profile:
        head += f"  profile: {profile['history_len']} items, last event {profile['last_event_ts']}"
    else:
        head += "  profile: none"

    history = Table(title=f"History (latest {len(d['history'])} of {d['history_total']})", title_justify="left")
    history.add_column("when")
    history.add_column("event")
    history.add_column("item", justify="right")
    history.add_column("title", overflow="ellipsis", no_wrap=True)
    history.add_column("value", justify="right")
    for h in d["history"]:
        title = h.get("title") if h.get("item_id") is not None else f"search: {h.get('query') or ''}"
        history.add_row(h["event_ts"] or "-", h["event_type"], h.get("item_id") or "-",
                        _truncate(title), _num(h.get("value"), "{:g}"))

    recs = Table(title=f"Recommendations ({len(d['recommendations'])})", title_justify="left")
    recs.add_column("#", justify="right")
    recs.add_column("item", justify="right")
    recs.add_column("title", overflow="ellipsis", no_wrap=True)
    recs.add_column("score", justify="right")
    recs.add_column("reason", overflow="ellipsis", no_wrap=True)
    with_features = any(r.get("features") for r in d["recommendations"])
    if with_features:
        recs.add_column("top features (re-ranker)", overflow="ellipsis", no_wrap=True)
    for r in d["recommendations"]:
        cells = [str(r["rank"]), r["item_id"], _truncate(r.get("title"), 40), _num(r.get("score")),
                 _truncate(r.get("reason"), 44)]
        if with_features:
            cells.append(", ".join(f"{f['feature']} {f['contribution']:+.2f}" for f in r.get("features") or []))
        recs.add_row(*cells)
    return _render(head, history, recs)


def render_item(d: dict) -> str:
    from rich.table import Table

    info = Table(title=f"item {d['item_id']}  run date {d['run_date']}", title_justify="left", show_header=False)
    info.add_column("field")
    info.add_column("value", overflow="ellipsis", no_wrap=True)
    info.add_row("title", _truncate(d.get("title"), 90))
    info.add_row("category", d.get("category") or "-")
    info.add_row("brand", d.get("brand") or "-")
    info.add_row("price", _num(d.get("price"), "{:.2f}"))
    info.add_row("image_uri", _truncate(d.get("image_uri"), 90))
    info.add_row("updated_at", d.get("updated_at") or "-")
    info.add_row("content_hash", _truncate(d.get("content_hash"), 24))
    m = d.get("modalities")
    if m:
        dims = m["dims"]
        used = [f"{k} ({dims.get(k, 0)})" for k in ("text", "image", "behaviour") if m.get(k)]
        info.add_row("vector from", ", ".join(used) or "-")
        info.add_row("fused dim", str(dims.get("fused")))
        info.add_row("model_version", _truncate(m.get("model_version"), 24))
        info.add_row("encoded_at", m.get("encoded_at") or "-")
    else:
        info.add_row("vector from", "no embedding for this date")
    reach = d.get("recommended_to_users")
    info.add_row("in top-K of", "-" if reach is None else f"{reach} users")

    similar = Table(title=f"Similar items ({len(d['similar'])})", title_justify="left")
    similar.add_column("#", justify="right")
    similar.add_column("item", justify="right")
    similar.add_column("title", overflow="ellipsis", no_wrap=True)
    similar.add_column("score", justify="right")
    for s in d["similar"]:
        similar.add_row(str(s["rank"]), s["similar_item_id"], _truncate(s.get("title"), 60), _num(s.get("score")))
    return _render(info, similar)


def render_tables(rows: list[dict]) -> str:
    import os

    from rich.table import Table

    paths = [str(r["path"]) for r in rows]
    if all(uris.is_local(p) for p in paths):
        root = os.path.commonpath(paths) if len(paths) > 1 else None
    else:  # URIs: os.path would fold `s3a://` into `s3a:/`
        parents = {uris.parent(p) for p in paths}
        root = parents.pop() if len(paths) > 1 and len(parents) == 1 else None
    # Paths are shown only where a table is not at <root>/<name> (the usual layout).
    standard = root is not None and all(p == uris.join(root, r["table"]) for p, r in zip(paths, rows))
    title = "fusionrank output tables" + (f" under {root}" if standard else "")
    table = Table(title=title, title_justify="left")
    table.add_column("table", no_wrap=True)
    table.add_column("exists")
    table.add_column("version", justify="right")
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("partitioned by", no_wrap=True)
    table.add_column("partitions", justify="right")
    table.add_column("latest", no_wrap=True)
    table.add_column("last commit (UTC)", no_wrap=True)
    if not standard:
        table.add_column("path", overflow="ellipsis", no_wrap=True)
    for r in rows:
        path = [] if standard else [str(r["path"])]
        if not r.get("exists", True):
            table.add_row(r["table"], "missing", "-", "-", "-", "-", "-", "-", *path)
            continue
        last = r.get("last_commit")
        table.add_row(
            r["table"], "yes", str(r["version"]), "-" if r["rows"] is None else f"{r['rows']:,}",
            ", ".join(r["partition_columns"]) or "-", str(r["partitions"]), r.get("latest_partition") or "-",
            (last or "-").replace("+00:00", "").replace("T", " "), *path,
        )
    return _render(table)
