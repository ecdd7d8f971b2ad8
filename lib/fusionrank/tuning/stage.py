"""tune_text_encoder (weekly, not nightly): the shop's own pairs -> a domain-tuned text
encoder under storage.root, used by the next encode only if it beats the base.

1. Pairs from training events of the last `tuning.lookback_days` before the
   validation slice (the last `tuning.val_days` of training): (query, engaged item's
   text) per search session (clicked or stronger) and (item, next co-engaged item)
   per session; hard negatives are the base model's best item for the anchor of
   another category, among a sample of `tuning.negative_pool` catalog items.
2. vectors.tune_text fine-tunes the configured base model (models.text.path) on them
   (CPU or GPU, seeds fixed) into Layout.tuned_text_model(<digest of inputs>).
3. The held-out check: dense nDCG@10 of the base and the tuned model on the
   validation slice's search sessions (candidates: the sessions' engaged items plus
   `tuning.negative_pool` sampled items). The tuned model is accepted only if it is
   better; the verdict goes to Layout.tuned_text_pointer(). With
   `models.text.use_tuned: true`, encoders.text_model_path then resolves to the
   accepted folder, whose digest changes model_version, so the next encode_items
   re-embeds the catalog; otherwise (or when rejected) the base stays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile

import numpy as np
from pyspark.sql import functions as F

from fusionrank.core.context import RunContext
from fusionrank.core.errors import StageError
from fusionrank.core.spark import utc_literal
from fusionrank.metrics.search_eval import GRADES, case_grades, evaluate_rankings, search_cases
from fusionrank.storage import fs
from fusionrank.vectors.encoders import TextEncoder, folder_digest, pick_device, text_model_path
from fusionrank.vectors.tune_text import TuneParams, tune_text_encoder as tune

log = logging.getLogger("fusionrank.tuning")


def _text(row) -> str:
    return ". ".join(str(x) for x in (row.title, row.category, row.brand, (row.description or "")[:2000]) if x)


def _session_events(events, since: dt.datetime, until: dt.datetime, limit: int):
    window = events.where((F.col("event_ts") >= utc_literal(since)) & (F.col("event_ts") < utc_literal(until))
                          & F.col("session_id").isNotNull())
    sessions = (window.where(F.col("event_type") == "search").select("user_id", "session_id").distinct()
                .orderBy("user_id", "session_id").limit(limit))
    return (window.where(F.col("event_type").isin("search", *GRADES)).join(sessions, ["user_id", "session_id"],
                                                                              "left_semi")
            .select("user_id", "session_id", "event_type", F.col("event_ts").cast("long").alias("event_ts"),
                    "item_id", "query").toPandas())


def _dense_ranked(encoder: TextEncoder, queries: list[str], ids: list[str], texts: list[str], k: int):
    items = encoder.encode(texts, batch_size=64, max_length=128)
    vecs = encoder.encode(queries, batch_size=128, max_length=32)
    sims = vecs @ items.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return {q: [ids[j] for j in top[i]] for i, q in enumerate(queries)}, items


def tune_text_encoder(ctx: RunContext) -> dict:
    cfg = ctx.settings.tuning
    train_end = ctx.holdout_start
    val_start = train_end - dt.timedelta(days=cfg.val_days)
    fit_start = val_start - dt.timedelta(days=cfg.lookback_days)
    events = ctx.training_events()
    fit = _session_events(events, fit_start, val_start, cfg.max_sessions)
    val = _session_events(events, val_start, train_end, cfg.max_sessions)
    if fit.empty or val.empty:
        raise StageError(f"tune_text_encoder: no search sessions between {fit_start} and {train_end} "
                         f"(fit {len(fit)} rows, validation {len(val)} rows): nothing to tune on")
    catalog = ctx.for_date("catalog_clean").select("item_id", "title", "category", "brand", "description").toPandas()
    text_of = {r.item_id: _text(r) for r in catalog.itertuples(index=False)}
    category_of = dict(zip(catalog["item_id"], catalog["category"]))
    rng = np.random.default_rng(cfg.seed)
    pool = sorted(catalog["item_id"].tolist())
    pool = [pool[i] for i in sorted(rng.choice(len(pool), min(cfg.negative_pool, len(pool)), replace=False))]

    base = text_model_path(ctx.settings, tuned=False)
    device = pick_device()
    base_encoder = TextEncoder(base, device, "float32")
    cases = search_cases(fit)
    strong = cases[(cases["grade"] >= 2) & cases["item_id"].isin(text_of)]
    q_pairs = list(zip(strong["query"], strong["item_id"]))
    q_pairs = [q_pairs[i] for i in rng.permutation(len(q_pairs))[:cfg.max_pairs]]
    ranked, _ = _dense_ranked(base_encoder, sorted({q for q, _ in q_pairs}), pool, [text_of[i] for i in pool], 20)
    pairs, negatives = [], []
    for q, item in q_pairs:
        neg = next((i for i in ranked[q] if category_of.get(i) != category_of.get(item)), None)
        pairs.append((q, text_of[item]))
        negatives.append(text_of[neg] if neg else None)
    engaged = fit[fit["event_type"].isin(["click", "add_to_cart", "purchase"]) & fit["item_id"].isin(text_of)]
    for _, items in engaged.drop_duplicates(["session_id", "item_id"]).groupby("session_id")["item_id"]:
        items = items.tolist()
        pairs += [(text_of[a], text_of[b]) for a, b in zip(items, items[1:])][:2]
        negatives += [None] * len(list(zip(items, items[1:]))[:2])
    params = TuneParams(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, temperature=cfg.temperature,
                        seed=cfg.seed, max_steps=cfg.max_steps, time_budget_s=cfg.time_budget_minutes * 60,
                        lora_rank=cfg.lora_rank, freeze_layers=cfg.freeze_layers)
    key = hashlib.sha256(json.dumps({"base": folder_digest(base), "run_date": str(ctx.run_date),
                                     "pairs": len(pairs), "params": params.__dict__}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    out = ctx.layout.tuned_text_model(key)
    ctx.describe("tune_text_encoder")
    with tempfile.TemporaryDirectory(prefix="fusionrank-tuned-") as local:
        # Tuned on local disk, checked there, then copied under storage.root (any filesystem).
        report = tune(base, local, pairs, negatives, params)

        # The held-out check on the validation slice.
        grades = case_grades(search_cases(val))
        grades = [(q, {i: g for i, g in gr.items() if i in text_of}) for q, gr in grades]
        grades = [(q, gr) for q, gr in grades if gr]
        candidates = sorted(set(pool) | {i for _, gr in grades for i in gr})
        queries = sorted({q for q, _ in grades})
        texts = [text_of[i] for i in candidates]
        base_ranked, _ = _dense_ranked(base_encoder, queries, candidates, texts, 10)
        tuned_ranked, _ = _dense_ranked(TextEncoder(local, device, "float32"), queries, candidates, texts, 10)
        base_ndcg = evaluate_rankings(grades, base_ranked, 10)["all"]["ndcg"]
        tuned_ndcg = evaluate_rankings(grades, tuned_ranked, 10)["all"]["ndcg"]
        accepted = tuned_ndcg > base_ndcg
        digest = folder_digest(local)
        fs.delete(out)
        fs.copy_dir(local, out)
    verdict = {"run_date": str(ctx.run_date), "path": str(out), "digest": digest,
               "base": str(base), "base_digest": folder_digest(base), "accepted": bool(accepted),
               "val_ndcg_base": base_ndcg, "val_ndcg_tuned": tuned_ndcg, "val_cases": len(grades),
               "pairs": len(pairs), "steps": report["steps"], "seconds": report["seconds"], "device": device}
    pointer = ctx.layout.tuned_text_pointer()
    previous = json.loads(fs.read_text(pointer)) if fs.exists(pointer) else None
    if accepted or previous is None:
        fs.write_text(pointer, json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    log.info("tune_text_encoder: val nDCG@10 base %.4f, tuned %.4f: %s", base_ndcg, tuned_ndcg,
             "accepted" if accepted else "rejected, the base stays")
    return verdict
