"""Choosing the int8 recipe: ONNX Runtime quantisation choices on a tuning slice, confirmed elsewhere.

    python bench/int8_sweep.py [--threads 1]

Every recipe (per-channel or per-tensor weights, reduce_range, SmoothQuant's alpha,
per-token activation scales, sensitive MatMul layers left in float32) is measured
against float32 torch vectors of the same texts: mean cosine, neighbour recall@10 and
items per CPU second (one process, `--threads` threads; "vs fp32" is the median over
`--rounds` of the ratio to a float32 timing taken just before, so the machine's drift
over the sweep cancels), beside torch float32, torch bfloat16 and torch int8
(`quantize_dynamic`).

Tuning slice: MovieLens-100k items with odd ids (neighbours searched within the slice).
The recipe is picked there by a fixed rule: among batch-invariant recipes (a text's
vector the same, to cosine 0.99999, whichever texts share its batch: "other batches
cos", the worst over the slice encoded in two halves) with mean cosine >= 0.99, those
at >= 2x fp32 per CPU second both on the slice's titles and on product-length texts
(the synthetic shop's, timed only) if any, else all of them; of those the highest
neighbour recall@10, where recalls within RECALL_TIE (0.002, one standard error on
the slice) of the best are a tie and the faster wins. (The tie band was added in the
eleventh session, after a sweep where the layer-zero-point recipe read 0.958 against
0.959 at 2.33x against 2.08x; without it the rule kept a recipe that the issue's
two-core bench measured at 1.71x and 1.85x.) (Batch invariance was added to the rule
after int8 was tried as a default: with one activation scale per batch, the query_topk
table and the same queries encoded again on the driver differed.) Only
the picked recipe is then measured on the confirmation catalogs, which played no part
in the choice of quality: MovieLens items with even ids, and the synthetic shop (with
its queries). (The product-text timing was added after a sweep timed on titles alone
picked per-token activations everywhere: 2.05x on titles, 1.76x on
bench/encode_throughput.py's catalog.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from encode_throughput import item_texts, read_jsonl, recall_at  # noqa: E402

BASE = {"per_channel": True, "reduce_range": False, "weight_type": "QInt8", "exclude": [], "smooth_alpha": None,
        "per_token": []}
FFN_OUT = r"layer\.\d+/output/dense"
RECIPES = {
    "per-channel s8": BASE,
    "per-tensor s8": dict(BASE, per_channel=False),
    "per-channel s8 reduce_range": dict(BASE, reduce_range=True),
    "fp32 all FFN out": dict(BASE, exclude=[FFN_OUT]),
    "per-token FFN out": dict(BASE, per_token=[FFN_OUT]),
    "smooth 0.5": dict(BASE, smooth_alpha=0.5),
    "smooth 0.7": dict(BASE, smooth_alpha=0.7),
    "smooth 0.8": dict(BASE, smooth_alpha=0.8),
    "smooth 0.7, fp32 FFN out": dict(BASE, smooth_alpha=0.7, exclude=[FFN_OUT]),
    "smooth 0.6, per-token FFN out": dict(BASE, smooth_alpha=0.6, per_token=[FFN_OUT]),
    "smooth 0.7, per-token FFN out": dict(BASE, smooth_alpha=0.7, per_token=[FFN_OUT]),
    "smooth 0.8, per-token FFN out": dict(BASE, smooth_alpha=0.8, per_token=[FFN_OUT]),
    "smooth 0.5, per-token all": dict(BASE, smooth_alpha=0.5, per_token=["."]),
    "smooth 0.6, per-token all": dict(BASE, smooth_alpha=0.6, per_token=["."]),
    "smooth 0.7, per-token all": dict(BASE, smooth_alpha=0.7, per_token=["."]),
    "smooth 0.8, per-token all": dict(BASE, smooth_alpha=0.8, per_token=["."]),
    # Between "per-token FFN out" and "per-token all": which other layers pay for their cost.
    "smooth 0.7, per-token FFN in+out": dict(BASE, smooth_alpha=0.7,
                                             per_token=[FFN_OUT, r"layer\.\d+/intermediate/dense"]),
    "smooth 0.7, per-token FFN out+attn out": dict(BASE, smooth_alpha=0.7,
                                                   per_token=[FFN_OUT, r"attention/output/dense"]),
}
# One FFN output layer at a time back in float32 (the others per-token): each layer's share
# of the remaining error.
RECIPES.update({f"smooth 0.7, per-token FFN out, fp32 L{k}": dict(
    BASE, smooth_alpha=0.7, per_token=[FFN_OUT], exclude=[rf"layer\.{k}/output/dense"]) for k in range(6)})
# Layer 0's FFN output gained most in float32 (0.946 against 0.939 on the tuning slice): with the others.
L0_OUT = r"layer\.0/output/dense"
RECIPES.update({
    "smooth 0.7, per-token FFN in+out, fp32 L0": dict(BASE, smooth_alpha=0.7, exclude=[L0_OUT],
                                                      per_token=[FFN_OUT, r"layer\.\d+/intermediate/dense"]),
    "smooth 0.7, per-token FFN out+attn out, fp32 L0": dict(BASE, smooth_alpha=0.7, exclude=[L0_OUT],
                                                            per_token=[FFN_OUT, r"attention/output/dense"]),
    "smooth 0.7, per-token FFN out, fp32 L0 L1": dict(BASE, smooth_alpha=0.7, per_token=[FFN_OUT],
                                                      exclude=[L0_OUT, r"layer\.1/output/dense"]),
    "smooth 0.7, per-token FFN out, fp32 layer 0": dict(BASE, smooth_alpha=0.7, per_token=[FFN_OUT],
                                                        exclude=[r"layer\.0/"]),
})
# Asymmetric per-token codes (each row from its minimum: a GELU output's rows run from
# -0.17 up, so symmetric codes waste half their range) on the FFN outputs.
FFN_IN = r"layer\.\d+/intermediate/dense"
ASYM = dict(BASE, smooth_alpha=0.7, per_token=[FFN_OUT], per_token_asymmetric=True)
RECIPES.update({
    "smooth 0.7, asym per-token FFN out": ASYM,
    "smooth 0.7, asym per-token FFN out, fp32 L0": dict(ASYM, exclude=[L0_OUT]),
    "smooth 0.7, asym per-token FFN out, fp32 L0 L1": dict(ASYM, exclude=[L0_OUT, r"layer\.1/output/dense"]),
    "smooth 0.7, asym per-token FFN out, fp32 layer 0": dict(ASYM, exclude=[r"layer\.0/"]),
    "smooth 0.7, asym per-token FFN in+out, fp32 L0 L1": dict(
        ASYM, exclude=[L0_OUT, r"layer\.1/output/dense"], per_token=[FFN_OUT, r"layer\.\d+/intermediate/dense"]),
    "smooth 0.7, asym per-token FFN in+out": dict(ASYM, per_token=[FFN_OUT, FFN_IN]),
    "smooth 0.7, asym per-token FFN in+out, fp32 L0": dict(ASYM, exclude=[L0_OUT], per_token=[FFN_OUT, FFN_IN]),
    "smooth 0.7, asym per-token FFN out, per-token FFN in, fp32 L0": dict(
        ASYM, exclude=[L0_OUT], per_token=[FFN_OUT, FFN_IN], per_token_asymmetric=[FFN_OUT]),
    "smooth 0.7, asym per-token FFN out, per-token FFN in, fp32 L0 L1": dict(
        ASYM, exclude=[L0_OUT, r"layer\.1/output/dense"], per_token=[FFN_OUT, FFN_IN], per_token_asymmetric=[FFN_OUT]),
    # Every Linear per token: a text's vector then does not depend on the texts batched
    # with it (one activation scale per batch does).
    "smooth 0.7, asym per-token all, fp32 L0": dict(ASYM, exclude=[L0_OUT], per_token=["."]),
    "smooth 0.5, asym per-token all, fp32 L0": dict(ASYM, smooth_alpha=0.5, exclude=[L0_OUT], per_token=["."]),
    "smooth 0.7, asym per-token all, fp32 L0 L1": dict(ASYM, exclude=[L0_OUT, r"layer\.1/output/dense"],
                                                       per_token=["."]),
    # ... with query, key and value smoothed alike: their input is divided and coded once.
    "smooth 0.7 shared, asym per-token all, fp32 L0": dict(ASYM, exclude=[L0_OUT], per_token=["."],
                                                           smooth_shared=True),
    "smooth 0.5 shared, asym per-token all, fp32 L0": dict(ASYM, smooth_alpha=0.5, exclude=[L0_OUT],
                                                           per_token=["."], smooth_shared=True),
    # Asymmetric codes cost two more passes per layer (the row minimum's term): only where
    # rows are lopsided (the GELU outputs), symmetric elsewhere.
    "smooth 0.5 shared, per-token all, asym FFN out, fp32 L0": dict(
        ASYM, smooth_alpha=0.5, exclude=[L0_OUT], per_token=["."], smooth_shared=True,
        per_token_asymmetric=[FFN_OUT]),
    "smooth 0.5 shared, per-token all, asym FFN in+out, fp32 L0": dict(
        ASYM, smooth_alpha=0.5, exclude=[L0_OUT], per_token=["."], smooth_shared=True,
        per_token_asymmetric=[FFN_OUT, FFN_IN]),
    # ... with one zero point per layer (calibrated at export) and a scale per row: the
    # product kernel then subtracts the zero point itself, and the row minimum's term goes.
    "smooth 0.5 shared, asym per-token all, layer zero point, fp32 L0": dict(
        ASYM, smooth_alpha=0.5, exclude=[L0_OUT], per_token=["."], smooth_shared=True,
        per_token_zero_point="calibrated"),
    "smooth 0.6, asym per-token FFN out, fp32 L0 L1": dict(ASYM, smooth_alpha=0.6,
                                                           exclude=[L0_OUT, r"layer\.1/output/dense"]),
    "smooth 0.8, asym per-token FFN out, fp32 L0 L1": dict(ASYM, smooth_alpha=0.8,
                                                           exclude=[L0_OUT, r"layer\.1/output/dense"]),
})


# One standard error of neighbour recall@10 on the tuning slice (841 items x 10
# neighbours: sqrt(0.96 * 0.04 / 8410) = 0.002); recipes closer than that are a tie.
RECALL_TIE = 0.002


def quality(ref: np.ndarray, new: np.ndarray, k: int = 10) -> tuple[float, float]:
    self_hit = np.eye(len(ref), dtype=np.float32) * 10
    return float((ref * new).sum(axis=1).mean()), recall_at(ref @ ref.T - self_hit, new @ new.T - self_hit, k)


def batch_invariance(encoder, texts: list[str], batched: np.ndarray) -> float:
    """Worst cosine between a text's vector encoded with all of `texts` and encoded with
    every other one only (other batch-mates): 1 when no activation scale spans a batch."""
    other = np.zeros_like(batched)
    for start in (0, 1):
        other[start::2] = encoder.encode(texts[start::2], batch_size=64, max_length=128)
    return float((batched * other).sum(axis=1).min())


def timed(encode, texts: list[str], repeat: int) -> tuple[np.ndarray, float]:
    """(vectors, items per CPU second over `repeat` passes after a warm-up)."""
    encode(texts[:32])
    cpu = time.process_time()
    for _ in range(repeat):
        out = encode(texts)
    return out, repeat * len(texts) / (time.process_time() - cpu)


def paired_speedup(encode, reference, texts: list[str], rounds: int) -> tuple[float, float]:
    """(items per CPU second, median over `rounds` of its ratio to `reference` timed just
    before it): the machine's drift between recipes (10% over a sweep) cancels out."""
    rates, ratios = [], []
    for _ in range(rounds):
        _, base = timed(reference, texts, 1)
        _, rate = timed(encode, texts, 1)
        rates.append(rate)
        ratios.append(rate / base)
    return float(np.median(rates)), float(np.median(ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-items", type=int, default=400, help="tuning texts timed per recipe")
    parser.add_argument("--long-speed-items", type=int, default=200, help="product texts timed per recipe")
    parser.add_argument("--rounds", type=int, default=3, help="paired fp32/recipe timings per recipe (median)")
    parser.add_argument("--shop-items", type=int, default=1000)
    parser.add_argument("--recipes", default="", help="recipe names to run, separated by semicolons (default: all)")
    args = parser.parse_args(argv)

    import torch

    from fusionrank.raw.synth import generate
    from fusionrank.vectors import encoders as models
    from fusionrank.vectors import ort_int8
    from fusionrank.vectors.quantize import quantize_linear_int8

    models.set_torch_threads(args.threads)
    path = models.default_text_model_path()
    digest = models.folder_digest(path)
    movies = read_jsonl(ROOT / "data/raw/movielens-100k/catalog.jsonl")
    tune = item_texts([r for r in movies if int(r["item_id"]) % 2 == 1])
    confirm = {"MovieLens even ids": (item_texts([r for r in movies if int(r["item_id"]) % 2 == 0]), [])}
    with tempfile.TemporaryDirectory(prefix="fr-sweep-") as tmp:
        generate(Path(tmp), items=args.shop_items, users=200, days=10, images="none")
        queries = sorted({e["query"] for e in read_jsonl(Path(tmp) / "events.jsonl") if e.get("query")})
        confirm["synthetic shop"] = (item_texts(read_jsonl(Path(tmp) / "catalog.jsonl")), queries)

    fp32 = models.TextEncoder(path, "cpu", "float32")
    bf16 = models.TextEncoder(path, "cpu", "bfloat16")
    tint8 = models.TextEncoder(path, "cpu", "float32")
    tint8.model = quantize_linear_int8(tint8.model)
    speed_texts = tune[:args.speed_items]
    # Product-length texts (the shop's, timed only: their quality is confirmed after the
    # pick): MovieLens titles are ~20 tokens, where per-token work weighs less than on
    # a catalog's descriptions.
    long_texts = confirm["synthetic shop"][0][:args.long_speed_items]
    repeat = 2

    def enc(encoder):
        return lambda texts: encoder.encode(texts, batch_size=64, max_length=128)

    ref = fp32.encode(tune)
    _, fp32_rate = timed(enc(fp32), speed_texts, repeat)
    print(f"\nint8 recipes on the tuning slice (MovieLens odd ids, {len(tune)} items); "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}")
    print(f"{'recipe':<30} {'mean cos':>9} {'nbr recall@10':>14} {'it/cpu-s':>9} {'vs fp32':>8} "
          f"{'vs fp32, product texts':>23} {'other batches cos':>17}")
    print(f"{'torch fp32':<30} {1:>9.4f} {1:>14.3f} {fp32_rate:>9.1f} {1:>7.2f}x {1:>22.2f}x")
    for label, encoder in (("torch bf16", bf16), ("torch int8 (quantize_dynamic)", tint8)):
        cos, rec = quality(ref, encoder.encode(tune))
        rate, ratio = paired_speedup(enc(encoder), enc(fp32), speed_texts, args.rounds)
        _, long_ratio = paired_speedup(enc(encoder), enc(fp32), long_texts, args.rounds)
        print(f"{label:<30} {cos:>9.4f} {rec:>14.3f} {rate:>9.1f} {ratio:>7.2f}x {long_ratio:>22.2f}x", flush=True)
    eligible = []
    chosen = [r.strip() for r in args.recipes.split(";") if r.strip()]
    unknown = [r for r in chosen if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    for label, quant in RECIPES.items():
        if chosen and label not in chosen:
            continue
        session = ort_int8.OrtSession(ort_int8.ensure_model(path, digest, quant), threads=args.threads)
        ort_enc = models.TextEncoder.__new__(models.TextEncoder)
        ort_enc.__dict__.update(fp32.__dict__, session=session, model=None)
        vectors = ort_enc.encode(tune)
        cos, rec = quality(ref, vectors)
        invariant = batch_invariance(ort_enc, tune, vectors)
        rate, ratio = paired_speedup(enc(ort_enc), enc(fp32), speed_texts, args.rounds)
        _, long_ratio = paired_speedup(enc(ort_enc), enc(fp32), long_texts, args.rounds)
        print(f"{'ORT ' + label:<30} {cos:>9.4f} {rec:>14.3f} {rate:>9.1f} {ratio:>7.2f}x {long_ratio:>22.2f}x "
              f"{invariant:>17.6f}", flush=True)
        if cos >= 0.99 and invariant >= 0.99999:
            eligible.append((min(ratio, long_ratio) >= 2, rec, min(ratio, long_ratio), label, ort_enc))
    if not eligible:
        print("no recipe gives batch-invariant vectors at mean cosine >= 0.99")
        return 1
    fast_enough = any(e[0] for e in eligible)
    if not fast_enough:
        print("no batch-invariant recipe reaches 2x fp32 on both kinds of text: the best recall of them")
    pool = [e for e in eligible if e[0] == fast_enough]
    best = max(e[1] for e in pool)
    # recalls within RECALL_TIE of the best are ties (the slice's sampling error): the faster
    *_, label, ort_enc = max((e for e in pool if e[1] >= best - RECALL_TIE), key=lambda e: e[2])
    print(f"\npicked on the tuning slice: ORT {label} {RECIPES[label]}")
    print(f"{'confirmation catalog':<22} {'items':>6} {'mean cos':>9} {'nbr recall@10':>14} {'query recall@10':>16}")
    for name, (texts, queries) in confirm.items():
        a, b = fp32.encode(texts), ort_enc.encode(texts)
        cos, rec = quality(a, b)
        qr = f"{recall_at(fp32.encode(queries) @ a.T, ort_enc.encode(queries) @ b.T, 10):>16.3f}" if queries \
            else f"{'-':>16}"
        print(f"{name:<22} {len(texts):>6} {cos:>9.4f} {rec:>14.3f} {qr}", flush=True)
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
