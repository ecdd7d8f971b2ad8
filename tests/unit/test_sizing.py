"""fusionrank sizing (interfaces.sizing): the README table is its output for
conf/cluster.yaml, and its figures follow the code's own estimates and the config."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from fusionrank.core.config import load_config
from fusionrank.index import build
from fusionrank.interfaces import sizing

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def settings_with(tmp_path: Path, **layers):
    path = tmp_path / "env.yaml"
    cluster = yaml.safe_load((CONF / "cluster.yaml").read_text())
    merged = cluster
    for key, value in layers.items():
        merged = {**merged, key: {**merged.get(key, {}), **value}}
    path.write_text(yaml.safe_dump({"base": str(CONF / "base.yaml"), **merged}))
    return load_config(path)


def row(rows, stage, place, start):
    return next(r for r in rows if r.stage == stage and r.place == place and r.what.startswith(start))


def test_readme_table_is_the_scripts_output_for_cluster_yaml():
    readme = (ROOT / "README.md").read_text()
    assert sizing.readme_block(readme) == sizing.render(load_config(CONF / "cluster.yaml")), \
        "README's sizing table is stale: fusionrank sizing --conf conf/cluster.yaml --readme README.md"


def test_ranking_dim_follows_the_model_spec():
    settings = load_config(CONF / "cluster.yaml")
    m = sizing.models(settings)  # model folders are not here: MiniLM / DINOv2-small sizes assumed
    assert (m.text_dim, m.image_dim) == (384, 384) and m.assumed
    # cluster.yaml's space at scale: behaviour (256) beside text + image reduced to 256
    assert sizing.ranking_dim(settings, m) == 256 + 256
    fused = settings.model_copy(update={"rank": settings.rank.model_copy(update={"content": "fused",
                                                                                 "space_dim": None})})
    # the default content part: the fused text + image + behaviour vector
    assert sizing.ranking_dim(fused, m) == 256 + 384 + 384 + 256


def test_index_figures_are_build_index_estimates(tmp_path):
    settings = load_config(CONF / "cluster.yaml")
    plan = sizing._Plan(settings)
    rows = plan.build()
    n, dim = 10_000_000, plan.dim
    spec = build.choose_spec(n, dim, settings.index)
    loaded = row(rows, "rank", "worker", "loaded index").bytes[(n, 10_000_000)]
    ids_and_lookups = n * (sizing.ID_BYTES + 4 + 8 + sizing.PY_STR + sizing.ID_BYTES + sizing.PY_DICT_ENTRY
                           + sizing.PD_INDEX_ENTRY)
    assert loaded > spec.estimated_mb * 2**20 + ids_and_lookups  # FAISS + ids + lookups + attributes
    # the formula bench/sizing_check.py measures, over build_index's own estimate
    assert loaded == sizing.loaded_index_bytes(n, dim, spec.estimated_mb * 2**20)
    assert loaded < spec.estimated_mb * 2**20 + ids_and_lookups + n * 400 + sizing.LOAD_FIXED
    # Per-item structures, not the codes, dominate at 100M items: the table says so.
    big = row(rows, "rank", "worker", "loaded index").bytes[(100_000_000, 10_000_000)]
    assert big > 5 * build.choose_spec(100_000_000, dim, settings.index).estimated_mb * 2**20
    # Users do not change what a rank worker holds; they do change the profiles' shuffle.
    assert row(rows, "rank", "worker", "loaded index").bytes[(n, 100_000_000)] == loaded
    shuffle = row(rows, "build_profiles", "cluster", "history").bytes
    assert math.isclose(shuffle[(n, 100_000_000)], 10 * shuffle[(n, 10_000_000)])


def test_gpu_rank_plans_a_gpu_index_within_faiss_gpu_limits(tmp_path):
    gpu = {"spark.executor.resource.gpu.amount": 1, "spark.task.resource.gpu.amount": 1}
    settings = settings_with(tmp_path, spark={"stages": {
        **yaml.safe_load((CONF / "cluster.yaml").read_text())["spark"]["stages"],
        "rank": {"conf": {"spark.executor.cores": 8, "spark.task.cpus": 8, **gpu}}}})
    text = sizing.render(settings)
    assert "10M: ivf_pq M=64" in text  # not M=320: the GPU holds 96 bytes a code at most
    rows = sizing.plan(settings)
    on_gpu = row(rows, "rank", "GPU", "index copy").bytes[(10_000_000, 10_000_000)]
    assert on_gpu > 10_000_000 * 64  # the codes are on the GPU


def test_fits_follows_the_configured_memory(tmp_path):
    settings = load_config(CONF / "cluster.yaml")
    rows = sizing.plan(settings)
    scales = [(n, u) for n in sizing.ITEMS for u in sizing.USERS]
    assert sizing._fits(rows, settings, "rank", scales).startswith("1M: 100M, 10M: 100M")
    base = yaml.safe_load((CONF / "cluster.yaml").read_text())["spark"]["stages"]
    small = settings_with(tmp_path, spark={"stages": {**base, "rank": {"conf": {
        **base["rank"]["conf"], "spark.executor.memoryOverhead": "2g"}}}})
    assert sizing._fits(sizing.plan(small), small, "rank", scales) == "1M: -, 10M: -, 100M: -"
    assert sizing.workers(settings, "rank") == 1 and sizing.workers(settings, "build_profiles") == 4
    assert sizing._parse_size("512m") == 512 * 2**20 and sizing._parse_size("4g") == 4 * 2**30


def test_needs_at_one_scale_sums_the_plans_rows():
    settings = load_config(CONF / "cluster.yaml")
    rows = sizing.plan(settings)
    scale = (10_000_000, 100_000_000)
    needs = sizing.needs_at(settings, *scale)
    rank_worker = sum(r.bytes[scale] for r in rows if r.stage == "rank" and r.place == "worker")
    assert needs[("rank", "worker")] == rank_worker
    # another width: the loaded index grows with it (bench/scale.py's synthetic dims)
    narrow = sizing.needs_at(settings, 1_000_000, 1_000_000, dim=128)
    wide = sizing.needs_at(settings, 1_000_000, 1_000_000, dim=512)
    assert narrow[("rank", "worker")] < wide[("rank", "worker")]
