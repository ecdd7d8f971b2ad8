"""int8 text encoding with ONNX Runtime (CPU): export once, quantise once, cache per machine.

`models.text.dtype: int8` on CPU runs the text encoder as a dynamically quantised ONNX
model in ONNX Runtime: 1.26-1.37x torch's `quantize_dynamic` items per CPU second at the
same cosine to float32 (0.994), and 1.8-2.4x float32 (bench/int8_sweep.py,
bench/encode_throughput.py). The float32 and bfloat16 paths, and every GPU path, stay
in torch.

The model is built once per machine and cached:
  1. export: the Hugging Face encoder + mean pooling + L2 normalisation is exported with
     `torch.onnx.export` in a *separate Python process* (`python -m
     fusionrank.vectors.ort_int8 export ...`): in torch 2.13 the legacy exporter changes
     the exported module's later outputs in the process that ran it, so the worker's own
     torch state never sees an export;
  2. quantise: `onnxruntime.quantization.quantize_dynamic` (int8 weights, u8 activations
     quantised per batch on the fly, MatMul layers; see `QUANT` for the choices);
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
# Chosen on a tuning slice (MovieLens items with odd ids) by bench/int8_sweep.py's fixed
# rule and confirmed on MovieLens even ids and the synthetic shop. No recipe reached
# neighbour recall@10 0.95 on MovieLens at >= 2x fp32; leaving layers in float32 costs
# more speed than it buys recall (all FFN outputs float32: 0.891 at 1.5x).
QUANT = {
    "per_channel": True,
    "reduce_range": False,
    "weight_type": "QInt8",
    # regexes over MatMul node names kept in float32 (sensitive layers); empty: all quantised
    "exclude": [],
}
EXPORT_VERSION = 1  # bump when the exported graph changes
OPSET = 17


def cache_root() -> Path:
    if os.environ.get("FUSIONRANK_ONNX_CACHE"):
        return Path(os.environ["FUSIONRANK_ONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusionrank" / "onnx"


def recipe_key(quant: dict) -> str:
    import onnxruntime
    import torch

    recipe = {"quant": quant, "export": EXPORT_VERSION, "opset": OPSET, "ort": onnxruntime.__version__,
              "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def backend_id(quant: dict | None = None) -> str:
    """What model_version records for an int8 text encoder: the runtime and the recipe."""
    return f"onnxruntime-int8-{recipe_key(dict(QUANT if quant is None else quant))}"


# -- export (runs in its own process) ----------------------------------------------------


def export_float(model_path: Path, out: Path) -> None:
    """Export encoder + masked mean pooling + L2 normalisation to `out` (float32 ONNX)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), local_files_only=True, use_safetensors=True).eval()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
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


def quantize(float_path: Path, out: Path, quant: dict) -> dict:
    """Dynamic int8 quantisation of `float_path`'s MatMul nodes; returns what was quantised."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(float_path)).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    weights = {init.name for init in graph.initializer}
    # only MatMuls with a constant weight are layers (attention's QK^T and PV are not)
    layers = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    excluded = [name for name in layers if any(re.search(pattern, name) for pattern in quant["exclude"])]
    quantize_dynamic(str(float_path), str(out), per_channel=quant["per_channel"],
                     reduce_range=quant["reduce_range"], weight_type=getattr(QuantType, quant["weight_type"]),
                     op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=excluded + [m for m in matmuls if m not in layers])
    return {"layers": len(layers), "excluded": excluded}


def build(model_path: Path, folder: Path, quant: dict) -> None:
    """Export + quantise into `folder` (this process: call it through `ensure_model`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".float.{os.getpid()}.onnx"
    started = time.perf_counter()
    export_float(model_path, tmp)
    exported = time.perf_counter()
    part = folder / f".int8.{os.getpid()}.onnx"
    info = quantize(tmp, part, quant)
    os.replace(tmp, folder / "model.float32.onnx")
    os.replace(part, folder / "model.int8.onnx")
    info.update(quant=quant, model=str(model_path), export_s=round(exported - started, 2),
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
