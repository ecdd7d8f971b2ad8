"""encode_items through Spark: images (ok / absent / missing / corrupt), fusion, and
incremental reruns that encode exactly the changed items.

The image model is a tiny ViT saved as a Hugging Face folder (the `hf` backend's
real code path); one smaller test runs the default EfficientNet-Lite0.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from PIL import Image

from fusionrank.core.catalog import layout
from fusionrank.vectors import fusion
from fusionrank.vectors.spec import resolve as resolve_spec
from fusionrank.core.context import make_context
from fusionrank.pipeline import run_stage
from tests.conftest import make_settings, write_jsonl

pytestmark = pytest.mark.integration

DAY_1 = dt.date(2024, 5, 1)
DAY_2 = dt.date(2024, 5, 2)
COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 60), "black": (15, 15, 15),
           "white": (245, 245, 245)}
PRODUCTS = ["shirt", "mug", "lamp", "backpack", "sneaker", "scarf"]


def make_catalog(folder, n: int) -> tuple[list[dict], dict[str, set]]:
    """n items; every 10th has no image, three have a missing file, three a corrupt one."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows, expected = [], {"absent": set(), "missing": set(), "corrupt": set(), "ok": set()}
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        product = PRODUCTS[(i // len(COLOURS)) % len(PRODUCTS)]
        item_id = f"sku-{i:04d}"
        uri = str(images / f"{item_id}.jpg")
        if i % 10 == 9:
            uri, status = None, "absent"
        elif i in (4, 14, 24):
            status = "missing"  # the URI points nowhere
        elif i in (5, 15, 25):
            status = "corrupt"
            with open(uri, "wb") as handle:
                handle.write(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            status = "ok"
            Image.new("RGB", (48 + i % 7, 40), COLOURS[colour]).save(uri, quality=90)
        expected[status].add(item_id)
        rows.append({"item_id": item_id, "title": f"{colour} {product} no. {i}",
                     "description": f"A {colour} {product}.", "category": f"Shop > {product}s",
                     "brand": "Acme", "price": 10.0 + i, "image_uri": uri, "updated_at": "2024-04-01T00:00:00Z"})
    return rows, expected


def embeddings(settings, day: dt.date) -> pd.DataFrame:
    table = DeltaTable(settings.storage.table_path("item_embeddings"))
    frame = table.to_pandas(filters=[("run_date", "=", day)])
    return frame.set_index("item_id").sort_index()


def run_day(settings, spark, day: dt.date) -> dict:
    ctx = make_context(settings, day, spark)
    run_stage("clean_catalog", settings, day, ctx=ctx)
    return run_stage("encode_items", settings, day, ctx=ctx).counts


@pytest.fixture(scope="module")
def two_days(spark, tiny_vit, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encode_items")
    rows, expected = make_catalog(tmp, 300)
    catalog = write_jsonl(tmp / "catalog.jsonl", rows)
    events = write_jsonl(tmp / "events.jsonl", [])
    settings = make_settings(tmp, catalog, events, behaviour={"enabled": False},
                             models={"image": {"backend": "hf", "path": str(tiny_vit)}})
    first = run_day(settings, spark, DAY_1)
    before = embeddings(settings, DAY_1)

    changed = {"sku-0007", "sku-0123", "sku-0298"}  # 1% of the catalog gets a new title
    for row in rows:
        if row["item_id"] in changed:
            row["title"] = "renamed " + row["title"]
    write_jsonl(catalog, rows)
    second = run_day(settings, spark, DAY_2)
    after = embeddings(settings, DAY_2)
    return {"first": first, "second": second, "before": before, "after": after, "expected": expected,
            "changed": changed}


def test_first_run_encodes_everything_and_counts_image_outcomes(two_days):
    counts, expected = two_days["first"], two_days["expected"]
    assert counts["items"] == counts["encoded"] == 300 and counts["carried_over"] == 0
    assert counts["images_missing"] == 3 and counts["images_corrupt"] == 3
    assert counts["images_absent"] == len(expected["absent"]) == 30
    assert counts["images_ok"] == len(expected["ok"]) == 264
    assert counts["fused_dim"] == 384 + 32


def test_items_without_a_usable_image_still_get_a_fused_vector(two_days):
    emb, expected = two_days["before"], two_days["expected"]
    has_image = emb["image_vec"].notna()
    assert set(emb.index[has_image]) == expected["ok"]
    fused = np.stack(emb["fused_vec"].map(np.asarray).to_numpy())
    assert fused.shape == (300, 384 + 32)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    assert np.allclose(fused[~has_image.to_numpy(), 384:], 0.0)
    assert (np.abs(fused[has_image.to_numpy(), 384:]).sum(axis=1) > 0).all()
    image = np.stack(emb.loc[has_image, "image_vec"].map(np.asarray).to_numpy())
    assert image.shape[1] == 32
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)


def test_rerun_with_one_percent_changed_encodes_exactly_those(two_days):
    counts, before, after, changed = two_days["second"], two_days["before"], two_days["after"], two_days["changed"]
    assert counts["previous_run_date"] == str(DAY_1)
    assert counts["encoded"] == 3 and counts["carried_over"] == 297
    assert counts["images_ok"] == 3  # only the re-encoded items' images were read
    assert list(after.index) == list(before.index)
    re_encoded = set(after.index[after["encoded_at"] != before["encoded_at"]])
    assert re_encoded == changed
    same = [i for i in after.index if i not in changed]
    for column in ("text_vec", "image_vec", "fused_vec"):
        for item in same:
            a, b = before.at[item, column], after.at[item, column]
            assert (a is None and b is None) or np.array_equal(np.asarray(a), np.asarray(b)), (item, column)
    for item in changed:
        assert not np.allclose(before.at[item, "text_vec"], after.at[item, "text_vec"])
        np.testing.assert_allclose(before.at[item, "image_vec"], after.at[item, "image_vec"], atol=1e-6)


def test_default_efficientnet_lite0_through_spark(spark, tmp_path):
    rows, expected = make_catalog(tmp_path, 12)
    settings = make_settings(tmp_path, write_jsonl(tmp_path / "catalog.jsonl", rows),
                             write_jsonl(tmp_path / "events.jsonl", []), behaviour={"enabled": False},
                             models={"image": {"backend": "efficientnet_lite0"}},
                             fusion={"projection": "random_orthogonal", "output_dim": 256})
    counts = run_day(settings, spark, DAY_1)
    assert counts["images_ok"] == len(expected["ok"]) == 9 and counts["fused_dim"] == 256
    emb = embeddings(settings, DAY_1)
    image = np.stack(emb.loc[sorted(expected["ok"]), "image_vec"].map(np.asarray).to_numpy())
    assert image.shape == (9, 1280)
    fused = np.stack(emb["fused_vec"].map(np.asarray).to_numpy())
    assert fused.shape == (12, 256)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    # Red items' images (0, 10) are closer to each other than to the blue one (1).
    red, red_again, blue = (np.asarray(emb.at[f"sku-{i:04d}", "image_vec"]) for i in (0, 10, 1))
    assert red @ red_again > red @ blue


def test_learned_projection_is_trained_once_per_model_version(spark, tmp_path):
    """Users view items of one product each: those items co-occur, W is learned from
    them, saved under storage.root, reused by the next run and by query_vectors."""

    rows, _ = make_catalog(tmp_path, 60)
    for row in rows:
        row["image_uri"] = None
    events = [{"user_id": f"u{u}", "event_type": "view", "item_id": rows[(u % 6) * 10 + k]["item_id"],
               "event_ts": f"2024-04-{10 + k:02d}T12:00:00Z"} for u in range(48) for k in range(4)]
    settings = make_settings(tmp_path, write_jsonl(tmp_path / "catalog.jsonl", rows),
                             write_jsonl(tmp_path / "events.jsonl", events), behaviour={"enabled": False},
                             evaluate={"holdout_days": 1},
                             fusion={"projection": "learned", "output_dim": 32, "learn_batch_size": 4,
                                     "learn_epochs": 3, "learn_pairs": 200})
    ctx = make_context(settings, DAY_1, spark)
    run_stage("clean_catalog", settings, DAY_1, ctx=ctx)
    run_stage("clean_events", settings, DAY_1, ctx=ctx)
    counts = run_stage("encode_items", settings, DAY_1, ctx=ctx).counts
    version = resolve_spec(settings).version
    artifact = Path(layout(settings).learned_projection(version))
    assert artifact.exists() and counts["projection_pairs"] > 0 and counts["fused_dim"] == 32
    matrix = np.load(artifact)
    assert matrix.shape == (384, 32)

    emb = embeddings(settings, DAY_1)
    text = np.stack(emb["text_vec"].map(np.asarray).to_numpy())
    fused = np.stack(emb["fused_vec"].map(np.asarray).to_numpy())
    np.testing.assert_allclose(fused, fusion.l2_normalize(text @ matrix), atol=1e-5)
    np.testing.assert_allclose(resolve_spec(settings).query_vectors(text), fused, atol=1e-5)

    again = run_day(settings, spark, DAY_2)
    assert "projection_pairs" not in again and again["encoded"] == 0  # same W, nothing re-encoded
    np.testing.assert_array_equal(np.load(artifact), matrix)
