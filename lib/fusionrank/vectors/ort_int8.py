"""int8 text encoding with ONNX Runtime (CPU): export once, quantise once, cache per machine.

`models.text.dtype: int8` on CPU runs the text encoder as an int8 ONNX model in ONNX
Runtime, smoothed (SmoothQuant) at export, with one activation scale per token on every
Linear but layer 0's FFN output (float32), so a text's vector does not depend on the texts
batched with it (`QUANT`). On MovieLens: mean cosine to float32 0.9993 and neighbour
recall@10 0.954; 2.3-2.45x float32 items per CPU second on one thread (bench/int8_sweep.py),
2.0x in the best two-core layout on product descriptions (bench/encode_throughput.py).
The float32 and bfloat16 paths, and every GPU path, stay in torch.

The model is built once per machine and cached:
  1. export: the Hugging Face encoder + mean pooling + L2 normalisation is exported with
     `torch.onnx.export` in a *separate Python process* (`python -m
     fusionrank.vectors.ort_int8 export ...`): in torch 2.13 the legacy exporter changes
     the exported module's later outputs in the process that ran it, so the worker's own
     torch state never sees an export;
  2. quantise: int8 weights per output column; u8 activations coded per token on the fly
     (`quantize_per_token`: one QuantizeLinear per input, one MatMulIntegerToFloat per
     layer; each input's zero point calibrated once on CALIBRATION_TEXTS), or per batch
     by `onnxruntime.quantization.quantize_dynamic` for layers a recipe leaves to it; see
     `QUANT` for the choices;
  3. the result lives in `<cache>/<model digest>-<recipe digest>/model.int8.onnx`, where
     `cache` is `$FUSIONRANK_ONNX_CACHE`, else `$XDG_CACHE_HOME/fusionrank/onnx`, else
     `~/.cache/fusionrank/onnx`: local to each executor, written under a file lock and
     renamed into place, so concurrent Python workers build it once and never read half
     a file.
Each Python worker then opens one `InferenceSession` (one intra-op thread per Spark task
core, like torch) and keeps it for the process's life (`encoders.get_text_encoder`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fusionrank.core.errors import ModelError

log = logging.getLogger("fusionrank.vectors.ort_int8")

# The quantisation recipe (part of the cache key and of model_version through the dtype).
# Picked on a tuning slice (MovieLens items with odd ids) by bench/int8_sweep.py's rule
# (batch-invariant, mean cosine >= 0.99, then the best neighbour recall@10), confirmed on
# MovieLens even ids and the synthetic shop.
#  - smooth_alpha: SmoothQuant (Xiao et al., 2022). A BERT's activations have a few
#    channels far larger than the rest, so one int8 scale wastes most of its range on
#    them. Each Linear's input channel j is divided by s_j and its weight row multiplied
#    by s_j (the product is unchanged in exact arithmetic), with
#    s_j = max|x_j|^a / max|w_j|^(1-a) measured on CALIBRATION_TEXTS at export. None: off.
#  - smooth_shared: query, key and value (one input) share s, so the graph divides and
#    codes their input once (23 quantisations of activations per text instead of 35).
#  - per_token: regexes over MatMul node names quantised with one activation scale per
#    token (row); the others get ONNX Runtime's one scale per batch, which makes a
#    text's vector depend on the texts batched with it (a query encoded alone differs
#    from the same query in the nightly batch). "." (all): none does.
#  - per_token_asymmetric: True (or regexes): those rows coded from their minimum to their
#    maximum (255 steps) instead of symmetrically around 0 (zero point 128): a GELU
#    output runs from -0.17 up, so symmetric codes spent half their range on nothing.
#    x @ W = s_row * (q @ W) + min_row * colsum(W), exact but for the rounding of q.
#  - per_token_zero_point: "calibrated": asymmetric rows of one input share a zero point
#    (the one that best fits that input's rows on CALIBRATION_TEXTS) and keep their own
#    scale, so the integer product subtracts it and the minimum's term (two passes over
#    every output) goes; absent: a zero point per row.
#  - exclude: regexes over MatMul node names kept in float32; empty: all quantised.
# Neighbour recall@10 against float32, slice / even ids / shop (whole MovieLens catalog):
# the previous recipe (per-token symmetric FFN outputs, layers 0 and 1's in float32, one
# scale per batch elsewhere) 0.950 / 0.955 / 0.982 (0.946); this one 0.962 / 0.960 /
# 0.986 (0.956), at 1.9x float32 per CPU second on one thread (the previous 2.2x); with
# quantize_per_token's fused graph 0.959 / 0.958 / 0.987 (0.956) at 2.1x; with a
# calibrated zero point per layer (this one) 0.958 / 0.955 / 0.985 (0.954) at 2.3-2.45x,
# 2.00x and 2.04x in two runs of bench/encode_throughput.py (the previous 1.71x, 1.85x).
QUANT = {
    "per_channel": True,
    "reduce_range": False,
    "weight_type": "QInt8",
    "exclude": [r"layer\.0/output/dense"],
    "smooth_alpha": 0.5,
    "smooth_shared": True,
    "per_token": ["."],
    "per_token_asymmetric": True,
    "per_token_zero_point": "calibrated",
}
EXPORT_VERSION = 2  # bump when the exported graph changes (2: eager attention)
# bump when quantize_per_token's graph changes (2: one QuantizeLinear per input and one
# MatMulIntegerToFloat per layer instead of element-wise passes): the rounding moves.
PER_TOKEN_VERSION = 4  # 3: a row's range holds 0; 4: calibrated layer zero points
OPSET = 17


def cache_root() -> Path:
    if os.environ.get("FUSIONRANK_ONNX_CACHE"):
        return Path(os.environ["FUSIONRANK_ONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusionrank" / "onnx"


def recipe_key(quant: dict) -> str:
    import onnxruntime
    import torch

    recipe = {"quant": quant, "export": EXPORT_VERSION, "opset": OPSET,
              "per_token_graph": PER_TOKEN_VERSION, "ort": onnxruntime.__version__,
              "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def backend_id(quant: dict | None = None) -> str:
    """What model_version records for an int8 text encoder: the runtime and the recipe."""
    return f"onnxruntime-int8-{recipe_key(dict(QUANT if quant is None else quant))}"


# -- export (runs in its own process) ----------------------------------------------------


# Calibration for smoothing: varied catalog-like texts (products, books, films, noisy
# listings), none from a bench or test catalog. Only each channel's largest magnitude is
# read from them, and a BERT's outlier channels are the same whatever the text.
CALIBRATION_TEXTS = (
    "Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours.",
    "Wireless noise-cancelling headphones with 30-hour battery life and fast charging.",
    "The Old Man and the Sea (1952). Novel. A fisherman's long struggle with a giant marlin.",
    "Men's running shoes. Breathable mesh upper, cushioned sole. Colour: navy blue. Size 42.",
    "Organic green tea, 100 bags. Grocery > Beverages > Tea.",
    "Kids' wooden puzzle with 24 pieces, animals of the farm, ages 3 and up.",
    "4K Ultra HD smart TV, 55 inch, HDR10, three HDMI ports, built-in streaming apps.",
    "Casablanca (1942). Drama, Romance, War. Black and white classic.",
    "Cast iron skillet, pre-seasoned, 12 inch. Home & Kitchen > Cookware.",
    "USB-C charging cable, 2 m, braided nylon, supports 100 W power delivery.",
    "Women's wool coat, double-breasted, camel, machine washable at 30 degrees.",
    "Introduction to Algorithms, third edition. Textbook. Computer science.",
    "Garden hose 25 m with spray nozzle and wall-mounted reel.",
    "Vitamin D3 supplement, 1000 IU, 365 softgels.",
    "Electric toothbrush with pressure sensor and two replacement heads.",
    "Jazz at the Philharmonic: live recordings, remastered, two CDs.",
    "Yoga mat, non-slip, 6 mm thick, purple, with carrying strap.",
    "Laptop backpack with padded compartment for 15.6 inch notebooks, water-resistant.",
    "Blade Runner (1982). Sci-Fi, Thriller. Directed by Ridley Scott.",
    "LEGO building set, 1,200 pieces, space station with minifigures.",
    "Dog food, grain-free, salmon and sweet potato, 12 kg bag.",
    "Acoustic guitar, spruce top, mahogany back, with gig bag and tuner.",
    "Office chair with lumbar support, adjustable armrests, mesh back, black.",
    "Hand cream with shea butter, fragrance free, 75 ml tube.",
    "Board game for 2-4 players: trade, build and settle an island. Ages 10+.",
    "Mountain bike, aluminium frame, 21 speeds, front suspension, 27.5 inch wheels.",
    "Espresso machine, 15 bar pump, milk frother, stainless steel.",
    "A thriller about a detective who returns to her home town to solve a cold case.",
    "Cotton bed sheets, king size, 400 thread count, white.",
    "Smartphone case, shockproof, clear, compatible with the latest models.",
    "Toy Story (1995). Animation, Children's, Comedy.",
    "LED desk lamp with wireless charger and five brightness levels.",
    "Perfume for women, floral notes of jasmine and rose, 50 ml eau de parfum.",
    "Hiking boots, waterproof leather, Vibram sole, brown, men's size 44.",
    "Cookbook: 100 quick vegetarian dinners in thirty minutes or less.",
    "Baby stroller, lightweight, one-hand fold, reclining seat, grey.",
    "Bluetooth speaker, portable, waterproof IPX7, 12 hours of play.",
    "Documentary series about the oceans and the creatures that live in the deep.",
    "Watercolour paint set, 36 colours, with two brushes and a palette.",
    "Car phone holder for the air vent, magnetic, 360-degree rotation.",
    "SALE! 50% off winter jackets - limited time only!!!",
    "sz M blk tshirt 100% cotton",
    "Item 48213: replacement filter cartridge, pack of 3, fits model XR-200.",
    "Pride and Prejudice by Jane Austen. Paperback, 432 pages. Classic romance.",
    "Gaming mouse, 16000 DPI, RGB lighting, eight programmable buttons.",
    "Ceramic flower pot with drainage hole and saucer, 20 cm, terracotta.",
    "Protein powder, chocolate flavour, whey isolate, 2 kg.",
    "Silent wall clock, modern minimalist design, 30 cm, wood and white.",
)


def smooth_linears(model, tokenizer, alpha: float, shared: bool = False) -> int:
    """SmoothQuant in place: every nn.Linear becomes `linear(x / s)` with weight `W * s`
    (per input channel), `s` from CALIBRATION_TEXTS; returns how many were smoothed.
    `shared`: Linears called one after another on the same input (attention's query, key
    and value) share one `s` (from their largest weights), so that the exported graph
    divides, and per-token quantisation codes, that input once for all of them."""
    import torch

    peak: dict[str, torch.Tensor] = {}
    calls: list[tuple[str, int]] = []  # (Linear, its input's id) in call order, first batch

    def record(name):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
            if name not in peak:
                calls.append((name, id(inputs[0])))
            peak[name] = torch.maximum(peak[name], x) if name in peak else x
        return hook

    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    hooks = [m.register_forward_hook(record(name)) for name, m in linears.items()]
    with torch.inference_mode():
        for start in range(0, len(CALIBRATION_TEXTS), 16):
            batch = tokenizer(list(CALIBRATION_TEXTS[start:start + 16]), padding=True, truncation=True,
                              max_length=128, return_tensors="pt")
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for hook in hooks:
        hook.remove()

    class Smoothed(torch.nn.Module):
        def __init__(self, linear, scale):
            super().__init__()
            self.register_buffer("inverse", (1.0 / scale).float())
            self.lin = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
            with torch.no_grad():
                self.lin.weight.copy_(linear.weight * scale[None, :])
                if linear.bias is not None:
                    self.lin.bias.copy_(linear.bias)

        def forward(self, x):
            return self.lin(x * self.inverse)

    # groups: consecutive calls on the very same input tensor (ids are only compared
    # between neighbours: a freed tensor's id can come back later in the forward)
    group_of = {name: [name] for name in peak}
    if shared:
        for (previous, previous_input), (name, input_id) in zip(calls, calls[1:]):
            if input_id == previous_input:
                group_of[previous].append(name)
                group_of[name] = group_of[previous]
    scales: dict[str, torch.Tensor] = {}
    for name in peak:
        if name in scales:
            continue
        group = group_of[name]
        activation = torch.stack([peak[n] for n in group]).amax(dim=0).clamp(min=1e-5)
        weight_peak = torch.stack([linears[n].weight.detach().abs().amax(dim=0) for n in group]).amax(dim=0)
        scale = (activation.pow(alpha) / weight_peak.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
        scales.update({n: scale for n in group})
    done = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name in linears and name in scales:
                setattr(parent, child_name, Smoothed(child, scales[name]))
                done += 1
    return done


def merge_repeated_muls(graph) -> int:
    """One Mul for Mul nodes of the same input by equal constants (the shared smoothing
    of query, key and value, exported once per Linear); returns how many were dropped."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # torch exports a buffer shared by modules as Identity(buffer)
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if node.op_type == "Mul" and len(node.input) == 2 and node.input[1] in constants:
            value = constants[node.input[1]]
            key = (node.input[0], value.dtype.str, value.shape, value.tobytes())
            if key in first:
                renamed[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        kept.append(node)
    used = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "Identity" or n.output[0] in used]  # the dropped Muls' aliases
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return dropped


def export_float(model_path: Path, out: Path, smooth_alpha: float | None = None, shared: bool = False) -> int:
    """Export encoder + masked mean pooling + L2 normalisation to `out` (float32 ONNX),
    smoothed for int8 when `smooth_alpha` is set; returns how many Linears were smoothed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    # eager attention: the SDPA path exports a masked Where per layer that eager's added
    # mask does not need (4% of an int8 batch's time on 600 product texts)
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True, use_safetensors=True,
                                      attn_implementation="eager").eval()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    smoothed = 0
    if smooth_alpha is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        smoothed = smooth_linears(model, tokenizer, float(smooth_alpha), shared)
    uses_types = "token_type_ids" in model.forward.__code__.co_varnames

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if uses_types:
                kwargs["token_type_ids"] = torch.zeros_like(input_ids)
            hidden = self.inner(**kwargs).last_hidden_state
            pooled = torch.bmm(attention_mask.to(hidden.dtype).unsqueeze(1), hidden).squeeze(1)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    with torch.inference_mode():
        torch.onnx.export(Pooled(model), (ids, mask), str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["vectors"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "vectors": {0: "batch"}})
    return smoothed


def quantize(float_path: Path, out: Path, quant: dict, model_path: Path | None = None) -> dict:
    """Dynamic int8 quantisation of `float_path`'s MatMul nodes; returns what was quantised.
    `model_path` (its tokenizer) codes CALIBRATION_TEXTS where the recipe calibrates zero points."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(float_path)).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    weights = {init.name for init in graph.initializer}
    # only MatMuls with a constant weight are layers (attention's QK^T and PV are not)
    layers = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    excluded = [name for name in layers if any(re.search(pattern, name) for pattern in quant["exclude"])]
    right_weight = {n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights}  # x @ W
    per_token = [name for name in layers if name not in excluded and name in right_weight
                 and any(re.search(pattern, name) for pattern in quant.get("per_token", []))]
    quantize_dynamic(str(float_path), str(out), per_channel=quant["per_channel"],
                     reduce_range=quant["reduce_range"], weight_type=getattr(QuantType, quant["weight_type"]),
                     op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=excluded + per_token + [m for m in matmuls if m not in layers])
    info = {"layers": len(layers), "excluded": excluded, "per_token": per_token}
    if per_token:
        model = onnx.load(str(out))
        asymmetric = quant.get("per_token_asymmetric") or []
        asymmetric = {name for name in per_token if asymmetric is True
                      or any(re.search(pattern, name) for pattern in asymmetric)}
        zero_points = {}
        if asymmetric and quant.get("per_token_zero_point") == "calibrated":
            if model_path is None:
                raise ModelError("int8: the recipe's calibrated zero points need the model's tokenizer")
            inputs = {n.input[0] for n in model.graph.node if n.name in asymmetric}
            zero_points = calibrate_zero_points(model, inputs, calibration_feeds(model_path))
        quantize_per_token(model.graph, set(per_token), asymmetric, zero_points)
        info["zero_points"] = zero_points
        if not any(o.domain == "com.microsoft" for o in model.opset_import):  # MatMulIntegerToFloat
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(out))
    return info


def best_zero_point(lo: np.ndarray, hi: np.ndarray) -> int:
    """The one u8 zero point z for rows ranging over [lo, hi] (0 included) that minimises
    the mean squared step s_row = max(hi / (255 - z), -lo / z), i.e. the rows' mean
    squared rounding error when each row keeps its own scale but shares z."""
    lo = np.minimum(lo, 0.0).astype(np.float64)[:, None]
    hi = np.maximum(hi, 0.0).astype(np.float64)[:, None]
    z = np.arange(1, 255, dtype=np.float64)[None, :]
    step = np.maximum(hi / (255.0 - z), -lo / z)
    return int(z[0, np.argmin((step ** 2).mean(axis=0))])


def calibrate_zero_points(model, activations: set[str], feeds: list[dict]) -> dict[str, int]:
    """{activation: its zero point} from the rows (tokens) it takes on `feeds`, run
    through `model` (its per-token layers still float) with those activations as extra
    outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted(activations)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lows: dict[str, list] = {n: [] for n in names}
    highs: dict[str, list] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            rows = value.reshape(-1, value.shape[-1])
            lows[name].append(rows.min(axis=1))
            highs[name].append(rows.max(axis=1))
    return {n: best_zero_point(np.concatenate(lows[n]), np.concatenate(highs[n])) for n in names}


def calibration_feeds(model_path: Path) -> list[dict]:
    """CALIBRATION_TEXTS as model inputs, one text per feed (no padding rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    feeds = []
    for text in CALIBRATION_TEXTS:
        ids = tokenizer([text], truncation=True, max_length=128, return_tensors="np")
        feeds.append({"input_ids": ids["input_ids"].astype(np.int64),
                      "attention_mask": ids["attention_mask"].astype(np.int64)})
    return feeds


def quantize_per_token(graph, names: set[str], asymmetric: set[str] = frozenset(),
                       zero_points: dict[str, int] | None = None) -> None:
    """Replace the float MatMul nodes `names` (constant weights) in `graph` by int8 ones with
    one activation scale per row (token) and one weight scale per output column.

    Symmetric rows: q(x) = round(x / s_row) + 128 as u8, y = s_row * ((q - 128) @ q(W) * s_col).
    Rows in `asymmetric` are coded from their minimum to their maximum (255 steps; the
    range widened to hold 0 where a row is one-sided): a GELU output runs from -0.17 up,
    so symmetric codes would spend half their range on nothing.
    There q(x) = round(x / s_row) + z_row with z_row = round(-min_row / s_row), so
    x = s_row * (q - z_row) = s_row * q + lo_row with lo_row = -s_row * z_row, and
    y = s_row * (q @ q(W) * s_col) + lo_row * colsum(W), exact but for the rounding of q.
    A row's codes are one QuantizeLinear (per row: the rows are flattened to 2-D), and the
    product with its column scales one MatMulIntegerToFloat: ORT's MatMulInteger takes no
    per-row zero point and its fused kernel no per-row scale, so the row scale (and lo)
    are applied after it.
    `zero_points` ({activation: z}, from `calibrate_zero_points`): asymmetric rows of those
    activations share the layer's z and keep their own scale, s_row = max(hi / (255 - z),
    -lo / z), so x = s_row * (q - z): MatMulIntegerToFloat subtracts z itself and the
    minimum's term (a Mul and an Add over the whole output) is not needed."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {init.name: init for init in graph.initializer}
    nodes = []
    codes: dict = {}  # (activation, asymmetric?) -> its 2-D codes, row scales, zero point, row offset, shape

    def constant(name, value):
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, weight_name = node.input
        p = node.name.strip("/").replace("/", "_") + "_pt"
        w = numpy_helper.to_array(weights[weight_name]).astype(np.float32)
        w_scale = (np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0).astype(np.float32)
        w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        constant(p + "_w", w_q)
        constant(p + "_w_scale", w_scale)
        asym = node.name in asymmetric
        if (x, asym) not in codes:  # layers reading the same activation (Q, K, V) share its codes
            x2 = p + "_x2"
            nodes += [helper.make_node("Reshape", [x, constant(p + "_flat", np.array([-1, w.shape[0]], np.int64))],
                                       [x2]),
                      helper.make_node("Shape", [x], [p + "_shape"]),
                      helper.make_node("Slice", [p + "_shape", constant(p + "_s0", np.array([0], np.int64)),
                                                 constant(p + "_s1", np.array([-1], np.int64))], [p + "_lead"])]
            eps = constant(p + "_eps", np.array(1e-12, np.float32))
            fixed = (zero_points or {}).get(x) if asym else None
            if asym:
                nodes += [helper.make_node("ReduceMin", [x2], [p + "_lo_raw"], axes=[-1], keepdims=1),
                          helper.make_node("ReduceMax", [x2], [p + "_hi_raw"], axes=[-1], keepdims=1)]
            if asym and fixed is None:  # a zero point per row
                nodes += [
                    # the range is widened to hold 0, so z_row is a code (0..255) and a
                    # one-sided or constant row is coded right, not saturated
                    helper.make_node("Min", [p + "_lo_raw", constant(p + "_0lo", np.array(0.0, np.float32))],
                                     [p + "_lo"]),
                    helper.make_node("Max", [p + "_hi_raw", constant(p + "_0hi", np.array(0.0, np.float32))],
                                     [p + "_hi"]),
                    helper.make_node("Sub", [p + "_hi", p + "_lo"], [p + "_span"]),
                    helper.make_node("Max", [p + "_span", eps], [p + "_span_pos"]),
                    helper.make_node("Div", [p + "_span_pos", constant(p + "_255", np.array(255.0, np.float32))],
                                     [p + "_scale"]),
                    helper.make_node("Div", [p + "_lo", p + "_scale"], [p + "_lo_steps"]),
                    helper.make_node("Neg", [p + "_lo_steps"], [p + "_neg_steps"]),
                    helper.make_node("Round", [p + "_neg_steps"], [p + "_zf_raw"]),
                    helper.make_node("Clip", [p + "_zf_raw", constant(p + "_0f", np.array(0.0, np.float32)),
                                              constant(p + "_255f", np.array(255.0, np.float32))], [p + "_zf"]),
                    helper.make_node("Reshape", [p + "_zf", constant(p + "_vec", np.array([-1], np.int64))],
                                     [p + "_zf1"]),
                    helper.make_node("Cast", [p + "_zf1"], [p + "_z1"], to=TensorProto.UINT8),
                    helper.make_node("Mul", [p + "_scale", p + "_zf"], [p + "_neg_lo"]),
                    helper.make_node("Neg", [p + "_neg_lo"], [p + "_lo_eff"]),
                ]
                zero, lo = constant(p + "_zero", np.array(0, np.uint8)), p + "_lo_eff"
            else:  # one zero point for every row: the layer's, or 128 (symmetric)
                if asym:
                    z = int(fixed)
                    up = constant(p + "_up", np.array(1 / (255 - z), np.float32))
                    nodes += [
                        helper.make_node("Mul", [p + "_hi_raw", up], [p + "_hi_step"]),
                        helper.make_node("Mul", [p + "_lo_raw", constant(p + "_down", np.array(-1 / z, np.float32))],
                                         [p + "_lo_step"]),
                        helper.make_node("Max", [p + "_hi_step", p + "_lo_step", eps], [p + "_scale"]),
                    ]
                else:
                    z = 128
                    nodes += [
                        helper.make_node("Abs", [x2], [p + "_abs"]),
                        helper.make_node("ReduceMax", [p + "_abs"], [p + "_peak"], axes=[-1], keepdims=1),
                        helper.make_node("Max", [p + "_peak", eps], [p + "_peak_pos"]),
                        helper.make_node("Div", [p + "_peak_pos", constant(p + "_127", np.array(127.0, np.float32))],
                                         [p + "_scale"]),
                    ]
                nodes += [  # QuantizeLinear's zero point along axis 0: z repeated per row
                    helper.make_node("Shape", [x2], [p + "_x2_shape"]),
                    helper.make_node("Slice", [p + "_x2_shape", constant(p + "_r0", np.array([0], np.int64)),
                                               constant(p + "_r1", np.array([1], np.int64))], [p + "_rows"]),
                    helper.make_node("ConstantOfShape", [p + "_rows"], [p + "_z1"],
                                     value=numpy_helper.from_array(np.array([z], np.uint8))),
                ]
                zero, lo = constant(p + "_zero", np.array(z, np.uint8)), None
            nodes += [  # QuantizeLinear takes one scale per row as a vector along axis 0
                helper.make_node("Reshape", [p + "_scale", constant(p + "_vec1", np.array([-1], np.int64))],
                                 [p + "_scale1"]),
                helper.make_node("QuantizeLinear", [x2, p + "_scale1", p + "_z1"], [p + "_q"], axis=0),
            ]
            codes[x, asym] = (p + "_q", p + "_scale", zero, lo, p + "_lead")
        q, scale, zero, lo, lead = codes[x, asym]
        one = constant(p + "_one", np.array(1.0, np.float32))
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [q, p + "_w", one, p + "_w_scale", zero], [p + "_acc"],
                             domain="com.microsoft"),
            helper.make_node("Mul", [p + "_acc", scale], [p + "_rows2"]),
        ]
        flat = p + "_rows2"
        if lo is not None:
            constant(p + "_colsum", (w_q.astype(np.float32) * w_scale[None, :]).sum(axis=0).astype(np.float32))
            nodes += [helper.make_node("Mul", [lo, p + "_colsum"], [p + "_offset"]),
                      helper.make_node("Add", [p + "_rows2", p + "_offset"], [p + "_sum"])]
            flat = p + "_sum"
        nodes += [helper.make_node("Concat", [lead, constant(p + "_n", np.array([w.shape[1]], np.int64))],
                                   [p + "_out_shape"], axis=0),
                  helper.make_node("Reshape", [flat, p + "_out_shape"], list(node.output), name=node.name)]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)  # the float weights the int8 ones replaced


def build(model_path: Path, folder: Path, quant: dict) -> None:
    """Export + quantise into `folder` (this process: call it through `ensure_model`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".float.{os.getpid()}.onnx"
    started = time.perf_counter()
    smoothed = export_float(model_path, tmp, quant.get("smooth_alpha"), bool(quant.get("smooth_shared")))
    if quant.get("smooth_shared"):
        import onnx

        model = onnx.load(str(tmp))
        merge_repeated_muls(model.graph)
        onnx.save(model, str(tmp))
    exported = time.perf_counter()
    part = folder / f".int8.{os.getpid()}.onnx"
    info = quantize(tmp, part, quant, model_path)
    os.replace(tmp, folder / "model.float32.onnx")
    os.replace(part, folder / "model.int8.onnx")
    info.update(quant=quant, model=str(model_path), smoothed=smoothed, export_s=round(exported - started, 2),
                quantize_s=round(time.perf_counter() - exported, 2))
    (folder / "recipe.json").write_text(json.dumps(info, indent=1))


def ensure_model(model_path: Path, digest: str, quant: dict | None = None) -> Path:
    """The cached int8 ONNX file for this model folder and recipe, built on first use
    (in a child process, under a lock: one build per machine however many workers ask)."""
    import fcntl

    quant = dict(QUANT if quant is None else quant)
    folder = cache_root() / f"{digest[:24]}-{recipe_key(quant)}"
    target = folder / "model.int8.onnx"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another worker built it while this one waited
            return target
        log.info("int8: exporting and quantising %s into %s (once per machine)", model_path, folder)
        command = [sys.executable, "-m", "fusionrank.vectors.ort_int8", "build", str(model_path), str(folder),
                   json.dumps(quant)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not target.exists():
            raise ModelError(f"int8: exporting {model_path} to ONNX failed (exit {done.returncode}): "
                             f"{done.stderr.strip()[-2000:]}")
    return target


# -- inference ---------------------------------------------------------------------------


class OrtSession:
    """One ONNX Runtime session over the int8 model; `run(ids, mask)` -> (n, dim) float32."""

    def __init__(self, onnx_path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.path = onnx_path

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(["vectors"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the cached int8 ONNX text encoder (internal)")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("model_path")
    parser.add_argument("folder")
    parser.add_argument("quant")
    args = parser.parse_args(argv)
    build(Path(args.model_path), Path(args.folder), json.loads(args.quant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
