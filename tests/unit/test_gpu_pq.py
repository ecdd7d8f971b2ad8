"""IVF-PQ within faiss-gpu's limits (index.build): the choice of M, the clear
failures, when the limits apply, and which GPU a search uses. Pure: this machine has
faiss-cpu only, so nothing here runs faiss-gpu."""

from __future__ import annotations

import pytest

from fusionrank.core.config import IndexConfig
from fusionrank.core.errors import IndexError_
from fusionrank.core.spark import task_gpu
from fusionrank.index import build


def cfg(**kw) -> IndexConfig:
    return IndexConfig(**{"type": "ivf_pq", **kw})


def test_gpu_pq_ok_follows_faiss_gpu_limits():
    assert build.gpu_pq_ok(64, 1280)        # 64 bytes a code, 20 dims each
    assert build.gpu_pq_ok(96, 384)         # the largest code, 4 dims each
    assert not build.gpu_pq_ok(320, 1280)   # more than 96 bytes a code
    assert not build.gpu_pq_ok(80, 1280)    # 80 is not a size faiss-gpu has kernels for
    assert not build.gpu_pq_ok(20, 1280)    # 64 dims per sub-quantiser
    assert not build.gpu_pq_ok(64, 1280, nbits=6)  # non-interleaved GPU IVF-PQ: 8-bit codes only
    assert not build.gpu_pq_ok(48, 1000)    # must divide the dimension


def test_cpu_choice_is_unchanged_and_gpu_choice_stays_within_the_limits():
    n, dim = 10_000_000, 1280
    cpu = build.choose_spec(n, dim, cfg())
    assert cpu.pq_m == 320  # the most sub-quantisers the 4 GB budget holds
    gpu = build.choose_spec(n, dim, cfg(), gpu=True)
    assert gpu.type == "ivf_pq" and build.gpu_pq_ok(gpu.pq_m, dim) and gpu.pq_nbits == 8
    assert gpu.pq_m == 64  # the largest GPU size with a supported sub-dimension for 1280
    assert gpu.estimated_mb <= 4096
    # auto switches to IVF-PQ above the budget and keeps to the GPU there too.
    auto = build.choose_spec(n, dim, IndexConfig(type="auto"), gpu=True)
    assert auto.type == "ivf_pq" and auto.pq_m == 64
    # A tight budget picks a smaller GPU size, never an unsupported one.
    tight = build.choose_spec(n, dim, cfg(memory_budget_mb=600), gpu=True)
    assert build.gpu_pq_ok(tight.pq_m, dim) and tight.pq_m < 64 and tight.estimated_mb <= 600


def test_impossible_gpu_choices_fail_with_what_fits():
    with pytest.raises(IndexError_, match=r"index.pq_m 320 is beyond faiss-gpu.*\[.*64.*\]"):
        build.choose_spec(10_000_000, 1280, cfg(pq_m=320), gpu=True)
    with pytest.raises(IndexError_, match="no IVF-PQ sub-quantiser count fits faiss-gpu for dimension 1283"):
        build.choose_spec(1_000_000, 1283, cfg(), gpu=True)  # prime: only M=1, 1283 dims each
    with pytest.raises(IndexError_, match="8-bit codes.*raise index.train_sample"):
        build.choose_spec(1_000_000, 384, cfg(train_sample=5000), gpu=True)
    # The same on CPU is allowed (fewer bits, any divisor).
    assert build.choose_spec(1_000_000, 384, cfg(train_sample=5000)).pq_nbits < 8


def test_when_the_gpu_limits_apply():
    assert build.pq_on_gpu(IndexConfig(gpu_pq_limits=True)) is True
    assert build.pq_on_gpu(IndexConfig(gpu_pq_limits=False), rank_gpu=True) is False
    assert build.pq_on_gpu(IndexConfig(), rank_gpu=True) is True       # rank stage asks for GPUs
    assert build.pq_on_gpu(IndexConfig(use_gpu=False), rank_gpu=True) is False
    assert build.pq_on_gpu(IndexConfig()) is False                     # faiss-cpu here: no GPU visible


def test_search_device(monkeypatch):
    import faiss

    manifest = {"type": "ivf_pq", "pq_m": 64, "pq_nbits": 8, "dim": 1280, "run_date": "2026-11-22"}
    assert task_gpu() is None  # not inside a Spark task
    assert build.gpu_device(manifest) is None  # faiss-cpu: no GPU
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    assert build.gpu_device(manifest) == 0  # no Spark assignment: the first GPU
    monkeypatch.setattr(build, "task_gpu", lambda: 1)
    assert build.gpu_device(manifest) == 1  # the task's assigned GPU
    assert build.gpu_device({**manifest, "pq_m": 320}) is None  # beyond faiss-gpu: searched on CPU
    assert build.gpu_device({**manifest, "type": "hnsw"}) is None
    assert build.gpu_device({"type": "ivf_flat", "dim": 1280}) == 1
