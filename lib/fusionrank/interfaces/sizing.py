"""`fusionrank sizing`: what each stage holds where, at 1M-100M items and 10M-100M users.

Computed from the config, not measured: the ranking-space width from the ModelSpec's
own formula (`vectors.spec.ModelSpec.ranking_dim`), the index type, nlist and PQ size
from `index.build.choose_spec` / `estimate_mb` (the functions build_index runs), batch
sizes, k and candidate counts from the config, and the stage's Spark conf
(`spark.conf` + `spark.stages.<stage>.conf`) for cores, task CPUs and the configured
memory the needs are checked against. The README's table is this module's output
for conf/cluster.yaml (tests/unit/test_sizing.py keeps the two equal).

Where (the columns of a Spark deployment that are sized separately):
  driver JVM     spark.driver.memory: rows collected through the JVM (toArrow, collect)
  driver Python  the driver's Python process (outside the JVM heap; on YARN and
                 Kubernetes it counts against spark.driver.memoryOverhead)
  worker         one Python worker of an executor (spark.executor.pyspark.memory
                 bounds it; executor.cores / task.cpus of them run at once per executor)
  GPU            device memory of one GPU
  cluster        summed over the executors: shuffle, cache and table bytes (disk and
                 executor memory), for disk and shuffle sizing

Assumptions (stated, not measured; change them with the keyword arguments):
  * item and user ids average ID_BYTES UTF-8 bytes, titles TITLE_BYTES, catalog text
    (title + brand + category + description) TEXT_BYTES per item;
  * a user's training history averages AVG_HISTORY items (profiles join each with
    its item vector), capped at profiles.max_history;
  * CPython: a str of b ASCII bytes takes 49 + b bytes, a dict entry with its int
    value ~100 bytes, a pandas object Index ~40 bytes per entry;
  * model weights: the weight files in the model folder when it is readable here,
    else all-MiniLM-L6-v2 (22.7M parameters, hidden 384) for text and DINOv2-small
    (22.1M, hidden 384) / EfficientNet-Lite0 (4.7M, 1280-d) for images, float32 on
    CPU, 2 bytes a weight on GPU (auto dtype: bf16/fp16);
  * transformer activations of one batch: batch x sequence x (4 x hidden FFN +
    hidden / 64 heads x sequence attention scores) x 4 bytes, twice (inputs and
    outputs of a layer are alive together);
  * faiss StandardGpuResources reserves 1.5 GiB of scratch memory on its GPU;
  * a loaded index costs LOAD_FIXED (64 MiB) besides its per-item structures; the
    whole formula is checked against measured RSS by bench/sizing_check.py;
  * one Python worker holds one copy of the index (`index.build.load_index` caches
    it per process); the rank stage's conf sets task.cpus = executor.cores so each
    executor runs one rank task and holds one copy (FAISS searches with task.cpus
    threads).
The stage code as of this module: query_topk is searched on the executors (one rank
worker holds the index and the text model; the driver only the query list), and
rerank training (rerank.enabled) loads the index on the driver; evaluate joins the
recommendations to the held-out rows (no users x history cross join).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fusionrank.core.config import Settings
from fusionrank.core.errors import IndexError_
from fusionrank.index import build as index_build
from fusionrank.vectors import encoders
from fusionrank.vectors.spec import ModelSpec

ITEMS = (1_000_000, 10_000_000, 100_000_000)
USERS = (10_000_000, 100_000_000)
ID_BYTES = 16
TITLE_BYTES = 60
TEXT_BYTES = 600
AVG_HISTORY = 20
PY_STR = 49
PY_DICT_ENTRY = 100
PD_INDEX_ENTRY = 40
GPU_SCRATCH = 1.5 * 2**30
LOAD_FIXED = 64 * 2**20  # a first load_index's fixed cost (pools, FAISS/pandas buffers), measured
TEXT_DEFAULT = {"params": 22_700_000, "hidden": 384}
IMAGE_DEFAULT = {"hf": {"params": 22_100_000, "hidden": 384, "seq": 257},
                 "efficientnet_lite0": {"params": 4_700_000, "hidden": 1280, "seq": 0}}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
GIB = 2**30

# Where each row's bytes live, in table order.
PLACES = ("driver JVM", "driver Python", "worker", "GPU", "cluster")
# The spark conf key whose memory each place's need is checked against (see `limits`).
BOUND = {"driver JVM": "spark.driver.memory", "driver Python": "spark.driver.memoryOverhead",
         "worker": "spark.executor.memoryOverhead"}
JVM_OFF_HEAP = 384 * 2**20  # what the executor JVM itself takes of memoryOverhead (Spark's minimum)
DEFAULT_SHARDS = 200  # build_index shards when index.build_partitions is 0 (default parallelism)


@dataclass(frozen=True)
class Row:
    stage: str
    place: str
    what: str
    bytes: dict  # (items, users) -> bytes


def _parse_size(text: str | None) -> float | None:
    """Spark's size strings (512m, 4g, 1t; a bare number: MiB) in bytes."""
    if text is None:
        return None
    value = str(text).strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if value and value[-1] in units:
        return float(value[:-1]) * units[value[-1]]
    return float(value) * 2**20


def _size(n: float) -> str:
    if n >= 10 * 2**40:
        return f"{n / 2**40:.0f} TiB"
    if n >= 2**40:
        return f"{n / 2**40:.1f} TiB"
    if n >= 10 * GIB:
        return f"{n / GIB:.0f} GiB"
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else str(n)


def _weights_bytes(folder: Path | None) -> int | None:
    if folder is None or not folder.is_dir():
        return None
    found = [p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return max(found) if found else None  # one weight file is loaded (safetensors or bin)


@dataclass(frozen=True)
class Models:
    text_dim: int
    image_dim: int
    text_weights: int  # float32 bytes
    image_weights: int
    image_seq: int  # tokens of an image (0: a CNN)
    assumed: tuple  # what was assumed instead of read


def models(settings: Settings) -> Models:
    """Dimensions and weight sizes, from the model folders when readable here."""
    assumed = []
    try:
        text_dim = encoders.text_dim(settings)
        text_weights = _weights_bytes(encoders.text_model_path(settings))
    except Exception:
        text_dim, text_weights = TEXT_DEFAULT["hidden"], None
        assumed.append(f"text model {TEXT_DEFAULT['hidden']}-d")
    if text_weights is None:
        text_weights = TEXT_DEFAULT["params"] * 4
    backend = settings.models.image.backend
    image_dim = image_weights = image_seq = 0
    if backend != "none":
        default = IMAGE_DEFAULT[backend]
        image_seq = default["seq"]
        try:
            image_dim = encoders.image_dim(settings)
            image_weights = _weights_bytes(encoders.image_model_path(settings)) if backend == "hf" else None
        except Exception:
            image_dim, image_weights = default["hidden"], None
            assumed.append(f"image model {default['hidden']}-d")
        image_weights = image_weights or default["params"] * 4
    return Models(text_dim, image_dim, text_weights, image_weights, image_seq, tuple(assumed))


def ranking_dim(settings: Settings, m: Models) -> int:
    """Width of rec_vec, by ModelSpec's own formula (vectors.spec.resolve's projection)."""
    fusion = settings.fusion
    behaviour = settings.behaviour.rank if settings.behaviour.enabled else 0
    d_in = m.text_dim + m.image_dim + behaviour
    if fusion.projection == "identity":
        projection: tuple = ("identity", d_in)
    else:
        projection = (fusion.projection, d_in, fusion.output_dim or d_in)
    rank = settings.rank
    space = None
    if rank.content != "fused" and rank.space_dim is not None and rank.space_dim < m.text_dim + m.image_dim:
        space = ("random_orthogonal", m.text_dim + m.image_dim, rank.space_dim, fusion.seed)
    spec = ModelSpec(version="sizing", text_path="", text_digest="", text_dim=m.text_dim, text_max_length=0,
                     text_dtype="", text_batch_size=0, image=None, image_dim=m.image_dim, behaviour_dim=behaviour,
                     weights=(1.0, 1.0, 1.0), projection=projection, content_weight=0.0,
                     content=rank.content, space_projection=space)
    return spec.ranking_dim


def gpu_pq_limits(settings: Settings) -> bool:
    """index.build.pq_on_gpu from the config alone (a GPU on the machine running the
    sizing does not change the plan): index.gpu_pq_limits, else use_gpu and a GPU rank."""
    cfg = settings.index
    if cfg.gpu_pq_limits is not None:
        return cfg.gpu_pq_limits
    return cfg.use_gpu and settings.spark.uses_gpu("rank")


def loaded_index_bytes(n: int, dim: int, faiss_bytes: float, id_bytes: int = ID_BYTES,
                       title_bytes: int = TITLE_BYTES) -> float:
    """What `index.build.load_index` keeps for `n` items (bench/sizing_check.py measures it)."""
    dense = n * dim * 4 if n * dim * 4 <= index_build.DENSE_COPY_MAX_BYTES else 0
    ids = n * (id_bytes + 4) + n * (8 + PY_STR + id_bytes)  # Arrow ids + numpy object array of str
    lookups = n * (PY_DICT_ENTRY + PD_INDEX_ENTRY)  # positions dict + pandas Index
    attributes = n * (title_bytes + 4 + 4) + n * (id_bytes + title_bytes + 24)  # titles, codes + the read
    # aligning attributes to positions: the read ids as Python strs and three int64
    # arrays; freed, but the allocators keep those pages (bench/sizing_check.py)
    alignment = n * (8 + PY_STR + id_bytes) + n * 24
    return LOAD_FIXED + faiss_bytes + dense + ids + lookups + attributes + alignment


def _activations(batch: int, seq: int, hidden: int) -> float:
    return 2 * batch * seq * (4 * hidden + max(1, hidden // 64) * seq) * 4


class _Plan:
    def __init__(self, settings: Settings, scales: tuple | None = None, dim: int | None = None,
                 shards: int | None = None):
        self.s = settings
        self.m = models(settings)
        self.dim = dim or ranking_dim(settings, self.m)
        # build_index's shards: index.build_partitions, else Spark's default parallelism,
        # which the config does not know (DEFAULT_SHARDS assumed; conf/cluster.yaml sets it)
        self.shards = shards or settings.index.build_partitions or DEFAULT_SHARDS
        self.scales = scales or tuple((n, u) for n in ITEMS for u in USERS)
        self.rows: list[Row] = []

    def add(self, stage: str, place: str, what: str, fn) -> None:
        self.rows.append(Row(stage, place, what, {(n, u): float(fn(n, u)) for n, u in self.scales}))

    def index_spec(self, n: int, gpu: bool):
        try:
            return index_build.choose_spec(n, self.dim, self.s.index, gpu=gpu)
        except IndexError_:
            return None  # over the budget: the build refuses (shown as such)

    def loaded_index(self, n: int, gpu: bool) -> float:
        """One `load_index` in a process: the FAISS index, ids, lookups, attributes."""
        spec = self.index_spec(n, gpu)
        return math.nan if spec is None else loaded_index_bytes(n, self.dim, spec.estimated_mb * 2**20)

    def gpu_index(self, n: int) -> float:
        spec = self.index_spec(n, True)
        if spec is None or spec.type == "hnsw":
            return math.nan
        return (spec.estimated_mb * 2**20 - n * 8) + GPU_SCRATCH  # no direct map on the GPU

    def build(self) -> list[Row]:
        s, m, d = self.s, self.m, self.dim
        spark = s.spark
        rank_gpu = spark.uses_gpu("rank") and s.index.use_gpu
        gpu_pq = gpu_pq_limits(s)
        text, image = s.models.text, s.models.image
        arrow_rows = s.encode.arrow_batch_rows
        # encode_items
        gpu_weight = 0.5  # bf16/fp16 on a GPU
        text_act = _activations(text.batch_size, text.max_length, m.text_dim)
        image_act = (_activations(image.batch_size, m.image_seq, m.image_dim) if m.image_seq
                     else image.batch_size * 3 * image.image_size ** 2 * 4 * 8) if image.backend != "none" else 0
        batch_io = arrow_rows * (TEXT_BYTES + (m.text_dim + m.image_dim + d) * 4)
        self.add("encode_items", "worker", "text/image models, one batch's activations, one Arrow batch",
                 lambda n, u: m.text_weights + m.image_weights + text_act + image_act + batch_io)
        if spark.uses_gpu("encode_items"):
            self.add("encode_items", "GPU", "models (16-bit), activations",
                     lambda n, u: (m.text_weights + m.image_weights) * gpu_weight + text_act + image_act)
        width = s.behaviour.rank + s.behaviour.oversample
        if s.behaviour.enabled:
            self.add("encode_items", "driver Python", "eigensolver: width x width matrices",
                     lambda n, u: 4 * width * width * 8)
            self.add("encode_items", "cluster", f"behaviour: X Z per user and per item ({width} doubles)",
                     lambda n, u: (u + n) * width * 8)
        self.add("encode_items", "cluster", "item_embeddings (text, image, fused, rec_vec)",
                 lambda n, u: n * (ID_BYTES + (m.text_dim + m.image_dim + 2 * d) * 4))
        # build_index
        sample = s.index.train_sample
        self.add("build_index", "driver JVM", "training sample collected (toArrow)",
                 lambda n, u: min(n, sample) * d * 4 * 2)
        self.add("build_index", "driver Python", "sample, merged index, one shard, ids",
                 lambda n, u: self._build_driver(n, gpu_pq))
        if s.query.hybrid:
            self.add("build_index", "driver Python", "BM25: the catalog text in pandas + its index",
                     lambda n, u: n * (ID_BYTES + TEXT_BYTES) * 3)
        parts = self.shards
        self.add("build_index", "worker", f"trained index + one shard of {parts} + self-check queries",
                 lambda n, u: self._shard(n, gpu_pq, parts))
        # build_profiles
        hist = min(AVG_HISTORY, s.profiles.max_history)
        self.add("build_profiles", "cluster", f"history x item vectors shuffle ({hist} items a user)",
                 lambda n, u: u * hist * (ID_BYTES * 2 + 8 + d * 4))
        self.add("build_profiles", "cluster", "user_profiles", lambda n, u: u * (ID_BYTES + d * 4 + hist * (ID_BYTES + 4)))
        # rank
        rc = s.rank
        self.add("rank", "worker", "loaded index: FAISS, ids, id lookups, titles, categories",
                 lambda n, u: self.loaded_index(n, gpu_pq))
        fetch = rc.max_candidates
        self.add("rank", "worker", f"one search batch ({rc.search_batch} users x {fetch} candidates, reasons)",
                 lambda n, u: rc.search_batch * (fetch * 12 + rc.reason_history * d * 4 + d * 4))
        if rank_gpu:
            self.add("rank", "GPU", "index copy (codes, ids, quantiser) + faiss scratch", lambda n, u: self.gpu_index(n))
        self.add("rank", "worker", "query_topk: text model + one partition's query candidates",
                 lambda n, u: m.text_weights + s.query.top_queries * s.query.candidates * 12)
        self.add("rank", "driver Python", "query list" + (" + rerank training: loaded index" if s.rerank.enabled else ""),
                 lambda n, u: s.query.top_queries * (TEXT_BYTES + 16)
                 + (self.loaded_index(n, gpu_pq) if s.rerank.enabled else 0))
        self.add("rank", "cluster", "recs_user_topk + seen sets",
                 lambda n, u: u * rc.k * (ID_BYTES * 3 + 16 + 40) + u * hist * ID_BYTES * 2)
        # evaluate
        self.add("evaluate", "cluster", "recommendations and popularity lists joined to held-out rows",
                 lambda n, u: u * (2 * max(s.evaluate.ks) + hist) * (ID_BYTES * 2 + 16))
        return self.rows

    def _build_driver(self, n: int, gpu: bool) -> float:
        spec = self.index_spec(n, gpu)
        if spec is None:
            return math.nan
        parts = self.shards
        sample = min(n, self.s.index.train_sample) * self.dim * 4
        merged = spec.estimated_mb * 2**20
        return 2 * sample + merged * (1 + 1 / parts) + 2 * n * (ID_BYTES + 4)

    def _shard(self, n: int, gpu: bool, parts: int) -> float:
        spec = self.index_spec(n, gpu)
        if spec is None:
            return math.nan
        trained = spec.nlist * self.dim * 4 + (2**spec.pq_nbits * self.dim * 4 if spec.pq_m else 0)
        queries = self.s.index.self_check_queries
        batch = int(self.s.spark.conf_for("build_index").get("spark.sql.execution.arrow.maxRecordsPerBatch", 10_000))
        check_k = max(index_build.SELF_CHECK_K, self.s.index.self_check_k)
        return (trained + spec.estimated_mb * 2**20 / parts + queries * self.dim * 4 + batch * self.dim * 4 * 2
                + queries * (check_k + batch) * 12 * 2)


def plan(settings: Settings) -> list[Row]:
    return _Plan(settings).build()


def needs_at(settings: Settings, items: int, users: int, dim: int | None = None,
             shards: int | None = None) -> dict[tuple[str, str], float]:
    """(stage, place) -> planned bytes at one scale (`dim`: another ranking-space width
    than the config's, e.g. bench/scale.py's synthetic vectors; `shards`: the index
    build's shard count where it is known): what bench/scale.py sets its measured peaks
    against."""
    out: dict[tuple[str, str], float] = {}
    for row in _Plan(settings, scales=((items, users),), dim=dim, shards=shards).build():
        key = (row.stage, row.place)
        out[key] = out.get(key, 0.0) + row.bytes[(items, users)]
    return out


def workers(settings: Settings, stage: str) -> int:
    """Python workers running at once in one executor: executor.cores / task.cpus
    (GPU stages: also at most executor GPUs / task GPUs)."""
    conf = settings.spark.conf_for(stage)
    entry = settings.spark.stages.get(stage)
    profile = entry.gpu_tasks if entry is not None else None  # the GPU part's task profile
    cpus = profile.cpus if profile else int(conf.get("spark.task.cpus", 1))
    slots = max(1, int(conf.get("spark.executor.cores", 1)) // max(1, cpus))
    task_gpu = profile.gpus if profile else float(conf.get("spark.task.resource.gpu.amount") or 0)
    if task_gpu > 0:
        slots = min(slots, max(1, int(float(conf.get("spark.executor.resource.gpu.amount") or 1) / task_gpu)))
    return slots


def limits(settings: Settings, stage: str, place: str, need: float) -> tuple[float, float | None]:
    """(need as the bound counts it, the configured bound or None) for `place` of `stage`.

    worker: with spark.executor.pyspark.memory set, Spark gives each Python worker
    pyspark.memory / executor.cores (an address-space limit, which CUDA's reservations
    break: the shipped GPU stages leave it unset); unset, the executor's workers all
    count against spark.executor.memoryOverhead, beside the JVM's own off-heap use."""
    conf = settings.spark.conf_for(stage)
    if place == "worker":
        pyspark = _parse_size(conf.get("spark.executor.pyspark.memory"))
        if pyspark is not None:
            return need, pyspark / max(1, int(conf.get("spark.executor.cores", 1)))
        overhead = _parse_size(conf.get("spark.executor.memoryOverhead"))
        return need * workers(settings, stage) + JVM_OFF_HEAP, overhead
    key = BOUND.get(place)
    return need, (_parse_size(conf.get(key)) if key else None)


def render(settings: Settings) -> str:
    """The markdown tables: the needs at every scale, then each stage's configured memory."""
    p = _Plan(settings)
    rows = p.build()
    scales = [(n, u) for n in ITEMS for u in USERS]
    spec_cells = []
    for n in ITEMS:
        spec = p.index_spec(n, gpu_pq_limits(settings))
        spec_cells.append(f"{_count(n)}: " + ("over index.memory_budget_mb" if spec is None else
                          f"{spec.type}" + (f" M={spec.pq_m}" if spec.pq_m else "") + (" OPQ" if spec.opq else "")
                          + f", nlist {spec.nlist}"))
    out = [f"Ranking space {p.dim}-d; index per item count: " + "; ".join(spec_cells) + "."]
    if p.m.assumed:
        out.append("Assumed (model folders not readable here): " + ", ".join(p.m.assumed) + ".")
    out.append("")
    header = ["stage", "where", "what"] + [f"{_count(n)} items / {_count(u)} users" for n, u in scales]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] * 3 + ["---:"] * len(scales)) + "|")
    for stage in dict.fromkeys(r.stage for r in rows):
        for place in PLACES:
            group = [r for r in rows if r.stage == stage and r.place == place]
            if not group:
                continue
            for r in group:
                out.append("| " + " | ".join([stage, place, r.what] + [
                    "refused" if math.isnan(r.bytes[sc]) else _size(r.bytes[sc]) for sc in scales]) + " |")
            if len(group) > 1:
                totals = [sum(r.bytes[sc] for r in group) for sc in scales]
                out.append("| " + " | ".join([stage, place, "**total**"] + [
                    "refused" if math.isnan(t) else f"**{_size(t)}**" for t in totals]) + " |")
    out.append("")
    out.append("Configured per stage (spark.conf + spark.stages.<stage>.conf); fits: per item count, "
               "the most users at which every bounded need fits (worker: all workers of an executor within "
               "memoryOverhead):")
    out.append("")
    keys = ["spark.driver.memory", "spark.driver.memoryOverhead", "spark.executor.memory",
            "spark.executor.memoryOverhead", "spark.executor.pyspark.memory", "spark.executor.cores",
            "spark.task.cpus", "spark.executor.resource.gpu.amount"]
    short = ["driver", "driver overhead", "executor", "executor overhead", "pyspark", "cores", "task cpus", "GPUs"]
    out.append("| stage | " + " | ".join(short) + " | workers / executor | fits up to |")
    out.append("|---|" + "|".join(["---:"] * (len(short) + 1)) + "|---|")
    for stage in dict.fromkeys(r.stage for r in rows):
        conf = settings.spark.conf_for(stage)
        fits = _fits(rows, settings, stage, scales)
        out.append("| " + " | ".join([stage] + [conf.get(k, "-") for k in keys]
                                     + [str(workers(settings, stage)), fits]) + " |")
    return "\n".join(out) + "\n"


def _fits(rows: list[Row], settings: Settings, stage: str, scales: list) -> str:
    """Per item count, the most users at which every bounded place of `stage` fits
    its configured memory ("-": not even the fewest)."""
    cells = []
    for n in ITEMS:
        best = "-"
        for u in USERS:
            ok = True
            for place in BOUND:
                need = sum(r.bytes[(n, u)] for r in rows if r.stage == stage and r.place == place)
                if not need:
                    continue
                counted, bound = limits(settings, stage, place, need)
                if math.isnan(counted) or (bound is not None and counted > bound):
                    ok = False
            if ok:
                best = _count(u)
        cells.append(f"{_count(n)}: {best}")
    return ", ".join(cells)


README_BEGIN = "<!-- sizing:begin -->"
README_END = "<!-- sizing:end -->"


def readme_block(text: str) -> str:
    """What README's sizing markers hold now."""
    try:
        start = text.index(README_BEGIN) + len(README_BEGIN)
        end = text.index(README_END, start)
    except ValueError:
        raise ValueError(f"the README has no {README_BEGIN} ... {README_END} block") from None
    return text[start:end].strip("\n") + "\n"


def update_readme(path: str | Path, settings: Settings) -> bool:
    """Write `render(settings)` between the README's sizing markers; True when it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    old = readme_block(text)
    new = render(settings)
    if old == new:
        return False
    start = text.index(README_BEGIN) + len(README_BEGIN)
    end = text.index(README_END, start)
    path.write_text(text[:start] + "\n" + new + text[end:], encoding="utf-8")
    return True
