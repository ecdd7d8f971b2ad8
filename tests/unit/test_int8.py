"""int8 text vectors stay close to float32 (the fast CI check of issue 17).

Real texts: MovieLens-100k catalog rows as the pipeline encodes them (title.
category. description) and a few longer product descriptions.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from fusionrank.core.errors import ModelError
from fusionrank.vectors import ort_int8
from fusionrank.vectors.spec import resolve as resolve_spec
from fusionrank.vectors import encoders as models
from fusionrank.vectors.quantize import quantize_linear_int8, resolve_int8
from tests.conftest import make_settings

MOVIELENS = [
    "Toy Story (1995). Movies > Animation. Genres: Animation, Children's, Comedy. Released 1995.",
    'Mad Love (1995). Movies > Drama. Genres: Drama, Romance. Released 1995.',
    "Lion King, The (1994). Movies > Animation. Genres: Animation, Children's, Musical. Released 1994.",
    'Diabolique (1996). Movies > Drama. Genres: Drama, Thriller. Released 1996.',
    "20,000 Leagues Under the Sea (1954). Movies > Adventure. Genres: Adventure, Children's, Fantasy, Sci-Fi. Released 1954.",
    'Aliens (1986). Movies > Action. Genres: Action, Sci-Fi, Thriller, War. Released 1986.',
    'M*A*S*H (1970). Movies > Comedy. Genres: Comedy, War. Released 1970.',
    'Chasing Amy (1997). Movies > Drama. Genres: Drama, Romance. Released 1997.',
    'River Wild, The (1994). Movies > Action. Genres: Action, Thriller. Released 1994.',
    'As Good As It Gets (1997). Movies > Comedy. Genres: Comedy, Drama. Released 1997.',
    'Prophecy II, The (1998). Movies > Horror. Genres: Horror. Released 1998.',
    'Addams Family Values (1993). Movies > Comedy. Genres: Comedy. Released 1993.',
    "William Shakespeare's Romeo and Juliet (1996). Movies > Drama. Genres: Drama, Romance. Released 1996.",
    'Beverly Hills Ninja (1997). Movies > Action. Genres: Action, Comedy. Released 1997.',
    'Adventures of Robin Hood, The (1938). Movies > Action. Genres: Action, Adventure. Released 1938.',
    'Ben-Hur (1959). Movies > Action. Genres: Action, Adventure, Drama. Released 1959.',
    "Mary Shelley's Frankenstein (1994). Movies > Drama. Genres: Drama, Horror. Released 1994.",
    "Hunchback of Notre Dame, The (1996). Movies > Animation. Genres: Animation, Children's, Musical. Released 1996.",
    'Crying Game, The (1992). Movies > Action. Genres: Action, Drama, Romance, War. Released 1992.',
    "Blood For Dracula (Andy Warhol's Dracula) (1974). Movies > Horror. Genres: Horror. Released 1974.",
    'Wonderful, Horrible Life of Leni Riefenstahl, The (1993). Movies > Documentary. Genres: Documentary. Released 1993.',
    'Shadowlands (1993). Movies > Drama. Genres: Drama, Romance. Released 1993.',
    'Johnny Mnemonic (1995). Movies > Action. Genres: Action, Sci-Fi, Thriller. Released 1995.',
    'Menace II Society (1993). Movies > Action. Genres: Action, Crime, Drama. Released 1993.',
    'Glimmer Man, The (1996). Movies > Action. Genres: Action, Thriller. Released 1996.',
    'Money Talks (1997). Movies > Action. Genres: Action, Comedy. Released 1997.',
    'Twilight (1998). Movies > Crime. Genres: Crime, Drama. Released 1998.',
    "Fox and the Hound, The (1981). Movies > Animation. Genres: Animation, Children's. Released 1981.",
    'Dangerous Ground (1997). Movies > Drama. Genres: Drama. Released 1997.',
    'Con Air (1997). Movies > Action. Genres: Action, Adventure, Thriller. Released 1997.',
    'Associate, The (1996). Movies > Comedy. Genres: Comedy. Released 1996.',
    "It's My Party (1995). Movies > Drama. Genres: Drama. Released 1995.",
    'Umbrellas of Cherbourg, The (Parapluies de Cherbourg, Les) (1964). Movies > Drama. Genres: Drama, Musical. Released 1964.',
    'Cyclo (1995). Movies > Crime. Genres: Crime, Drama. Released 1995.',
    'Letter From Death Row, A (1998). Movies > Crime. Genres: Crime, Drama. Released 1998.',
    'Night Falls on Manhattan (1997). Movies > Crime. Genres: Crime, Drama. Released 1997.',
    'Run of the Country, The (1995). Movies > Drama. Genres: Drama. Released 1995.',
    'Indian Summer (1996). Movies > Comedy. Genres: Comedy, Drama. Released 1996.',
    'Last Klezmer: Leopold Kozlowski, His Life and Music, The (1995). Movies > Documentary. Genres: Documentary. Released 1995.',
    'JLG/JLG - autoportrait de décembre (1994). Movies > Documentary. Genres: Documentary, Drama. Released 1994.',
    'M. Butterfly (1993). Movies > Drama. Genres: Drama. Released 1993.',
    'Mr. Jones (1993). Movies > Drama. Genres: Drama, Romance. Released 1993.',
    'Hideaway (1995). Movies > Thriller. Genres: Thriller. Released 1995.',
    'Nelly & Monsieur Arnaud (1995). Movies > Drama. Genres: Drama. Released 1995.',
    'Beans of Egypt, Maine, The (1994). Movies > Drama. Genres: Drama. Released 1994.',
    'Hungarian Fairy Tale, A (1987). Movies > Fantasy. Genres: Fantasy. Released 1987.',
    'Intimate Relations (1996). Movies > Comedy. Genres: Comedy. Released 1996.',
    'Men With Guns (1997). Movies > Action. Genres: Action, Drama. Released 1997.',
]
PRODUCTS = [
    "Trail running shoe. Shop > Shoes > Running. Northpeak. A lightweight trail shoe with a rock plate, a grippy "
    "lugged outsole and a breathable mesh upper that drains quickly after stream crossings.",
    "Stainless steel kettle 1.7 l. Shop > Kitchen > Kettles. Brewline. Boils a full jug in under four minutes, "
    "switches off automatically and keeps a concealed element that is easy to descale.",
    "Merino wool scarf. Shop > Accessories > Scarves. Highland Mills. Soft, warm and itch-free, knitted from "
    "fine merino in a ribbed pattern; machine washable on a wool cycle.",
    "Ergonomic office chair. Shop > Furniture > Chairs. Sitwell. Adjustable lumbar support, 4D armrests and a "
    "breathable mesh back for long working days.",
    "Noise cancelling headphones. Shop > Electronics > Audio. Quietone. Over-ear, 30 hours of battery, "
    "Bluetooth 5.3 with multipoint pairing and a foldable design with a hard travel case.",
    "Ceramic pour-over coffee dripper. Shop > Kitchen > Coffee. Kiln & Co. Fits size 02 filters; the spiral "
    "ribs keep an even flow for a clean, bright cup.",
    "Waterproof hiking backpack 28 l. Shop > Outdoor > Bags. Ridgeline. Roll-top closure, padded laptop "
    "sleeve, hip belt pockets and reflective details for early starts.",
    "Bamboo cutting board set. Shop > Kitchen > Boards. Greengrove. Three sizes with juice grooves, "
    "naturally antibacterial and gentle on knife edges.",
]
TEXTS = MOVIELENS + PRODUCTS


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A fresh ONNX cache for this module: the int8 model is exported and quantised here."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUSIONRANK_ONNX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def vectors(onnx_cache):
    path = models.default_text_model_path()
    fp32 = models.TextEncoder(path, "cpu", "float32")
    int8 = models.TextEncoder(path, "cpu", "int8")
    return fp32, int8, fp32.encode(TEXTS), int8.encode(TEXTS)


def test_int8_text_vectors_stay_within_the_cosine_bound(vectors, onnx_cache):
    import onnx

    fp32, int8, a, b = vectors
    assert not fp32.quantized and int8.quantized
    assert int8.session is not None and int8.model is None  # ONNX Runtime, torch weights dropped
    assert Path(int8.session.path).is_relative_to(onnx_cache)
    ops = [node.op_type for node in onnx.load(str(int8.session.path)).graph.node]
    # 6 layers x 6 Linears, all with one asymmetric activation scale per token but layer 0's
    # FFN output (float32); query, key and value share their input's codes: 4 per layer
    assert ops.count("MatMulIntegerToFloat") == 35 and ops.count("DynamicQuantizeLinear") == 0
    # each coded activation has its layer's zero point: no product adds the row minimum's term
    assert not [i.name for i in onnx.load(str(int8.session.path)).graph.initializer if i.name.endswith("_colsum")]
    assert ops.count("QuantizeLinear") == ops.count("ReduceMax") == ops.count("ReduceMin") == 6 * 4 - 1
    assert b.shape == a.shape == (len(TEXTS), 384) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cosine = (a * b).sum(axis=1)
    assert cosine.mean() >= 0.99, f"int8 mean cosine to float32 {cosine.mean():.4f} < 0.99"
    assert cosine.min() >= 0.97, f"int8 worst cosine {cosine.min():.4f} (text {TEXTS[int(cosine.argmin())]!r})"
    assert cosine.max() < 0.99999  # the int8 path really ran: vectors are close, not identical


def test_int8_keeps_each_texts_nearest_neighbours(vectors):
    _, _, a, b = vectors
    k = 5
    near_a = np.argsort(-(a @ a.T), axis=1)[:, 1:k + 1]
    near_b = np.argsort(-(b @ b.T), axis=1)[:, 1:k + 1]
    recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(near_a, near_b)])
    # A regression guard on near-tie texts (the bar, recall@10 >= 0.95 on whole
    # catalogs, is bench/int8_sweep.py's and bench/encode_throughput.py's): the plain
    # per-batch recipe gave 0.893 here, smoothed with float32 FFN outputs 0.95+.
    assert recall >= 0.92, f"int8 neighbour recall@{k} {recall:.3f}"


def test_a_texts_int8_vector_does_not_depend_on_its_batch(vectors):
    """Every activation scale is a token's own: a query encoded alone (search) gets the
    vector it got in the nightly batch (query_topk), and an item re-encoded with other
    changed items the one it had."""
    _, int8, _, b = vectors
    halves = np.zeros_like(b)
    for start in (0, 1):
        halves[start::2] = int8.encode(TEXTS[start::2])
    alone = np.stack([int8.encode([text])[0] for text in TEXTS[:6]])
    assert (b * halves).sum(axis=1).min() >= 0.99999
    assert (b[:6] * alone).sum(axis=1).min() >= 0.99999


def test_model_version_differs_by_dtype(tmp_path):
    versions = {dtype: resolve_spec(make_settings(tmp_path, models={"text": {"dtype": dtype}})).version
                for dtype in ("auto", "float32", "int8")}
    assert len(set(versions.values())) == 3, versions
    spec = resolve_spec(make_settings(tmp_path, models={"text": {"dtype": "int8"}}))
    assert spec.identity["text_backend"] == ort_int8.backend_id()  # the runtime and recipe are recorded
    other = dict(ort_int8.QUANT, per_channel=not ort_int8.QUANT["per_channel"])
    assert ort_int8.backend_id(other) != ort_int8.backend_id()


def test_the_int8_model_is_built_once_per_cache(vectors, onnx_cache):
    _, int8, _, _ = vectors
    path = models.default_text_model_path()
    built = Path(int8.session.path)
    stamp = built.stat().st_mtime_ns
    again = ort_int8.ensure_model(path, models.folder_digest(path))
    assert again == built and built.stat().st_mtime_ns == stamp  # reused, not rebuilt
    recipe = json.loads((built.parent / "recipe.json").read_text())
    assert recipe["layers"] == 36 and recipe["quant"] == ort_int8.QUANT
    assert len(recipe["excluded"]) == 1 and "layer.0/output" in recipe["excluded"][0]
    assert len(recipe["per_token"]) == 35
    assert recipe["smoothed"] == 36  # every Linear smoothed at export
    zero_points = recipe["zero_points"]  # calibrated per coded activation
    assert len(zero_points) == 6 * 4 - 1 and all(1 <= z <= 254 for z in zero_points.values())
    # the FFN outputs' inputs (GELU's, from -0.17 up) get fewer codes below 0 than the rest
    gelu = {name: z for name, z in zero_points.items() if re.search(r"layer\.\d/output/dense", name)}
    rest = [z for name, z in zero_points.items() if name not in gelu]
    assert len(gelu) == 5 and max(gelu.values()) < min(rest), zero_points
    assert not list(built.parent.glob(".*.onnx"))  # no half-written files left behind


def test_smoothing_leaves_the_float_model_unchanged():
    """SmoothQuant moves scale between activations and weights: exact in float arithmetic."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = models.default_text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    model.pooler = None  # as export_float does: the encoder pools itself
    batch = tokenizer(MOVIELENS[:6], padding=True, return_tensors="pt")
    with torch.inference_mode():
        before = model(**batch).last_hidden_state
        assert ort_int8.smooth_linears(model, tokenizer, 0.7, shared=True) == 36
        after = model(**batch).last_hidden_state
    attention = model.encoder.layer[2].attention.self  # query, key and value: one scale
    assert torch.equal(attention.query.inverse, attention.key.inverse)
    assert torch.equal(attention.query.inverse, attention.value.inverse)
    assert not torch.equal(attention.query.inverse, model.encoder.layer[2].intermediate.dense.inverse[:384])
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 36 and all(name.endswith(".lin") for name in linears)  # each inside a smoother
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-4)


LAYER = "/layer.0/output/dense/MatMul"


def _quantised_matmul(w: np.ndarray, asymmetric: bool, zero_point: int | None = None):
    """x @ w as one MatMul named like a layer, through `quantize_per_token` (`zero_point`:
    the layer's fixed one): (graph, run)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name=LAYER)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    ort_int8.quantize_per_token(graph, {LAYER}, {LAYER} if asymmetric else set(),
                                {"x": zero_point} if zero_point is not None else None)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return graph, lambda x: session.run(None, {"x": x})[0]


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def _relative_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.sqrt(((got - want) ** 2).mean(axis=1)) / np.sqrt((want ** 2).mean(axis=1))


def _int8_weights(w: np.ndarray) -> np.ndarray:
    """w as its int8 codes (per column) in float: against it, what is left is the activations' rounding."""
    scale = np.abs(w).max(axis=0) / 127.0
    return np.round(w / scale) * scale


def test_per_token_quantisation_tracks_a_float_matmul_with_one_outlier_row():
    """A row 1,000x larger than the rest would flatten the others under one per-batch
    scale; with a scale per row every row keeps int8 precision."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 16)).astype(np.float32)
    graph, run = _quantised_matmul(w, asymmetric=False)
    assert [n.op_type for n in graph.node].count("MatMulIntegerToFloat") == 1
    assert "w" not in {init.name for init in graph.initializer}  # the float weight is gone
    x = rng.normal(size=(5, 64)).astype(np.float32)
    x[0] *= 1000.0
    got, want = run(x), x @ w
    for row in range(5):  # each row within 2% of its own size
        assert np.abs(got[row] - want[row]).max() <= 0.02 * np.abs(want[row]).max(), row


def test_asymmetric_rows_halve_the_error_on_a_one_sided_activation():
    """GELU outputs run from -0.17 up: codes from each row's minimum to its maximum use
    all 255 steps where symmetric ones use half, and the min_row * colsum(W) term keeps
    the product exact but for the rounding."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(256, 32)).astype(np.float32)
    x = _gelu(rng.normal(size=(40, 256))).astype(np.float32)
    x[3] *= 50.0  # rows of very different sizes keep their own scale
    want = x @ _int8_weights(w)
    errors = {}
    for asymmetric in (False, True):
        graph, run = _quantised_matmul(w, asymmetric)
        ops = [n.op_type for n in graph.node]
        assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("ReduceMin") == int(asymmetric)
        got = run(x)
        assert (np.abs(got - x @ w).max(axis=1) <= 0.025 * np.abs(x @ w).max(axis=1)).all()  # both close
        errors[asymmetric] = _relative_error(got, want)
    assert np.median(errors[True]) < 0.6 * np.median(errors[False]), (errors[True], errors[False])


def test_asymmetric_rows_that_are_one_sided_or_constant_are_coded_right():
    """A row's zero point is a code only if its range holds 0: all-positive, all-negative
    and constant rows (and all-zero ones) would otherwise saturate."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 8)).astype(np.float32)
    x = rng.normal(size=(6, 64)).astype(np.float32)
    x[0] = np.abs(x[0]) + 3.0  # all positive, far from 0
    x[1] = -np.abs(x[1]) - 3.0  # all negative
    x[2] = 2.5  # constant
    x[3] = 0.0
    _, run = _quantised_matmul(w, asymmetric=True)
    got, want = run(x), x @ w
    np.testing.assert_array_equal(got[3], 0.0)
    for row in (0, 1, 2, 4, 5):  # within 2% of the row's size
        assert np.abs(got[row] - want[row]).max() <= 0.02 * np.abs(want[row]).max(), (row, got[row], want[row])


def test_the_layer_zero_point_fits_the_rows_shape():
    rng = np.random.default_rng(3)
    gelu = _gelu(rng.normal(size=(500, 256)) * rng.uniform(0.5, 5.0, size=(500, 1)))
    assert 1 <= ort_int8.best_zero_point(gelu.min(axis=1), gelu.max(axis=1)) <= 20  # a few codes below 0
    normal = rng.normal(size=(500, 256))
    assert 110 <= ort_int8.best_zero_point(normal.min(axis=1), normal.max(axis=1)) <= 146
    assert ort_int8.best_zero_point(np.full(4, 1.0), np.full(4, 3.0)) == 1  # all positive: the lowest z
    assert ort_int8.best_zero_point(np.full(4, -3.0), np.full(4, -1.0)) == 254


def test_a_layer_zero_point_drops_the_minimums_term_and_keeps_each_rows_scale():
    """Rows share the layer's zero point but keep their own scale: MatMulIntegerToFloat
    subtracts the zero point, so no Add over the output is left, GELU rows of any size
    keep asymmetric precision, and a row of another shape is coded without saturating."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(256, 32)).astype(np.float32)
    x = _gelu(rng.normal(size=(40, 256))).astype(np.float32)
    x[3] *= 50.0
    z = ort_int8.best_zero_point(x.min(axis=1), x.max(axis=1))
    graph, run = _quantised_matmul(w, asymmetric=True, zero_point=z)
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("Add") == 0
    w_int8 = _int8_weights(w)
    want = x @ w_int8
    errors = {"layer": _relative_error(run(x), want)}
    for label, asymmetric in (("per row", True), ("symmetric", False)):
        errors[label] = _relative_error(_quantised_matmul(w, asymmetric)[1](x), want)
    median = {label: float(np.median(e)) for label, e in errors.items()}
    assert median["layer"] < 1.3 * median["per row"] and median["layer"] < 0.6 * median["symmetric"], median
    odd = rng.normal(size=(5, 256)).astype(np.float32)
    odd[0] = -np.abs(odd[0]) - 3.0  # all negative: the few codes below z still hold it
    odd[1] = np.abs(odd[1]) + 3.0
    odd[2] = 2.5
    odd[3] = 0.0
    got = run(odd)
    np.testing.assert_array_equal(got[3], 0.0)
    for row in (0, 1, 2, 4):  # within half a step of each code, never clipped
        step = max(odd[row].max() / (255 - z), -odd[row].min() / z, 0.0)
        bound = 0.5 * step * np.abs(w_int8).sum(axis=0).max() * 1.01 + 1e-4
        assert np.abs(got[row] - odd[row] @ w_int8).max() <= bound, row


def test_a_failed_export_names_the_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONRANK_ONNX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not-a-model"):
        ort_int8.ensure_model(folder, "0" * 64)
    assert not list((tmp_path / "cache").rglob("model.int8.onnx"))


def test_int8_on_a_gpu_falls_back_to_the_gpu_dtype_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="fusionrank.vectors.quantize"):
        assert resolve_int8("int8", "cuda:0") == ("auto", False)
    assert "int8 is CPU only" in caplog.text
    assert resolve_int8("int8", "cpu") == ("float32", True)
    assert resolve_int8("bfloat16", "cpu") == ("bfloat16", False)


def test_int8_image_dtype_is_for_hf_models_only(tmp_path, tiny_vit):
    with pytest.raises(Exception, match="EfficientNet-Lite0's feature path is all convolutions"):
        make_settings(tmp_path, models={"image": {"backend": "efficientnet_lite0", "dtype": "int8"}})
    from PIL import Image

    images = [Image.new("RGB", (40, 40), colour) for colour in ((200, 30, 30), (30, 200, 30), (20, 20, 220))]
    fp32 = models.HFImageEncoder(tiny_vit, "cpu", "float32").encode(images)
    encoder = models.HFImageEncoder(tiny_vit, "cpu", "int8")
    int8 = encoder.encode(images)
    assert encoder.quantized and int8.shape == fp32.shape == (3, 32)
    assert (fp32 * int8).sum(axis=1).min() >= 0.95


def test_quantize_linear_int8_replaces_every_linear():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    quantized = quantize_linear_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    x = torch.randn(4, 16)
    with torch.inference_mode():
        cosine = torch.nn.functional.cosine_similarity(model(x), quantized(x)).min()
    assert cosine >= 0.99
