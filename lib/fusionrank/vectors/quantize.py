"""Dynamic int8 quantisation of an encoder's Linear layers in torch (CPU only).

`models.image.dtype: int8` (Hugging Face vision models) turns every `torch.nn.Linear`
into a dynamically quantised one: weights int8
per output channel (symmetric), activations quantised per batch on the fly, int32
accumulation, float32 in and out. Everything else (embeddings, LayerNorm, softmax,
pooling) stays float32.

Two choices matter for quality (measured on all-MiniLM-L6-v2, MovieLens titles,
mean cosine to the float32 vectors): per-tensor weights give 0.94, per-channel 0.98
with torch's default 7-bit activations (`reduce_range`), and per-channel with the full
8-bit activation range 0.994. The 7-bit range exists because CPUs without VNNI
multiply u8·s8 pairs into saturating int16 sums; with VNNI (AVX512-VNNI, AVX-VNNI,
AMX) the sums are int32 and the full range is safe, so it is used exactly there.

torch 2.13 marks `torch.ao.quantization` deprecated (it still works); its
deprecation warnings are silenced here only. The x86, fbgemm and onednn engines ran
within 10% of each other end to end; x86 (torch's default) is kept.

Text encoders do not use this path: their int8 runs in ONNX Runtime
(`vectors.ort_int8`), which measured 1.37x this path's items per CPU second on the
same texts at the same cosine (bench/encode_throughput.py). This module still
quantises Hugging Face vision models (`models.image.dtype: int8`) and serves as the
comparison in the benchmarks.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

log = logging.getLogger("fusionrank.vectors.quantize")

INT8 = "int8"


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (Linux: /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def _dynamic_linear_class(reduce_range: bool):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class Int8Linear(DynamicLinear):
        """torch's dynamic int8 Linear with the activation range chosen per CPU."""

        def forward(self, x):
            return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                      reduce_range=reduce_range).to(x.dtype)

        def _get_name(self):
            return "Int8Linear"

    return Int8Linear


def quantize_linear_int8(model, reduce_range: bool | None = None):
    """A copy of `model` (float32, CPU, eval) with its Linear layers dynamic int8.

    `reduce_range` None: 7-bit activations only on CPUs without VNNI (see above).
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    elif "fbgemm" not in torch.backends.quantized.supported_engines:  # pragma: no cover - ARM builds
        raise RuntimeError(f"int8: this torch build has no x86/fbgemm quantized engine "
                           f"(has {torch.backends.quantized.supported_engines})")
    model = model.to(device="cpu", dtype=torch.float32).eval()
    linear = _dynamic_linear_class(reduce_range)
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices, here only
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*are deprecated and will.*")
        quantized = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                     mapping={torch.nn.Linear: linear})
    count = sum(1 for m in quantized.modules() if isinstance(m, linear))
    log.info("int8: %d Linear layers quantised (per-channel weights, %s-bit activations)", count,
             7 if reduce_range else 8)
    return quantized


def resolve_int8(dtype: str, device: str) -> tuple[str, bool]:
    """(float dtype name for torch_dtype, quantise?) for a configured dtype on `device`.

    int8 is a CPU path; on a GPU the request falls back to the GPU's `auto` dtype
    (bfloat16, else float16) with a log line, since dynamic quantisation has no CUDA kernels.
    """
    if dtype != INT8:
        return dtype, False
    if device.startswith("cuda"):
        log.warning("dtype int8 is CPU only (dynamic quantisation); on %s the encoder runs in the GPU's "
                    "auto dtype (bfloat16, else float16) instead", device)
        return "auto", False
    return "float32", True
