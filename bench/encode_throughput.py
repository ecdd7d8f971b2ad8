"""Encoder throughput: the raw model in one Python process vs the Spark stage.

    python bench/encode_throughput.py --items 2000 --images 200 --cores 2

Prints one table:
  * text: items/s of all-MiniLM-L6-v2 called directly (one process, `cores` torch
    threads) and through `encoding.encode` on Spark `local[cores]` (one task per
    core, one torch thread each), on the same items; ratio = spark / raw (target
    >= 0.85 on CPU). The Spark run is timed warm (Python workers already hold the
    model, as they do for every batch after the first of a nightly run); the cold
    run, model loads included, is printed too.
  * text+image: the same with EfficientNet-Lite0 on `--images` items that have an
    image file (drawn with Pillow; decode + resize + encode).
  * incremental: the encode_items stage on a catalog of `--incremental-items`
    (default `--items`), then on the next day with 1% of the titles changed (target
    <= 0.10 of the full time). The incremental run has a fixed cost (Spark jobs,
    reading and rewriting the carried-over rows) that a full run amortises, so the
    ratio falls as the catalog grows.
Self-contained: writes its data and warehouse under a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 60), "black": (15, 15, 15),
           "white": (245, 245, 245), "yellow": (240, 220, 30)}
PRODUCTS = ["shirt", "mug", "desk lamp", "backpack", "trail running shoe", "wool scarf", "phone case", "kettle"]
WORDS = ("soft durable lightweight classic modern handmade recycled waterproof compact ergonomic premium "
         "everyday travel organic cotton steel ceramic leather bamboo").split()


def catalog_rows(n: int, images: int, folder: Path) -> list[dict]:
    """Deterministic product rows with descriptions of varied length; the first
    `images` items get a JPEG (a coloured shape on a plain background)."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(7)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        product = PRODUCTS[(i // len(COLOURS)) % len(PRODUCTS)]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
        uri = None
        if i < images:
            uri = str(folder / "images" / f"item-{i}.jpg")
            picture = Image.new("RGB", (400, 300), (250, 250, 250))
            ImageDraw.Draw(picture).ellipse((60 + i % 50, 40, 340, 260), fill=COLOURS[colour])
            picture.save(uri, quality=85)
        rows.append({"item_id": f"item-{i}", "title": f"{colour} {product} {i}", "description": f"A {colour} "
                     f"{product}: {words}.", "category": f"Shop > {product}", "brand": f"brand{i % 40}",
                     "price": 5.0 + i % 300, "image_uri": uri, "updated_at": "2024-04-01T00:00:00Z"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def settings_for(tmp: Path, cores: int, image_backend: str = "none"):
    from fusionrank.core.config import load_config

    return load_config(ROOT / "conf" / "local.yaml", overrides={
        "spark": {"master": f"local[{cores}]", "ui_enabled": False,
                  "conf": {"spark.sql.shuffle.partitions": str(cores)}},
        "storage": {"root": str(tmp / "warehouse")},
        "inputs": {"catalog": {"path": str(tmp / "catalog.jsonl")}, "events": {"path": str(tmp / "events.jsonl")}},
        "behaviour": {"enabled": False},
        "models": {"image": {"backend": image_backend}},
    })


def raw_encode(rows: list[dict], settings, cores: int) -> float:
    """Seconds for the models called directly in this process (models already loaded)."""
    from fusionrank.vectors import encode as encoding
    from fusionrank.vectors import encoders as models

    models.set_torch_threads(cores)
    text_cfg = settings.models.text
    encoder = models.get_text_encoder(models.text_model_path(settings), device="cpu", dtype=text_cfg.dtype)
    texts = [". ".join(x for x in (r["title"], r["category"], r["brand"], r["description"][:2000]) if x) for r in rows]
    image = models.image_options(settings)
    image_encoder = None
    if image:
        image_encoder = models.get_image_encoder(image["backend"], image["path"], device="cpu",
                                                 image_size=image["image_size"])
    encoder.encode(texts[:64], batch_size=text_cfg.batch_size, max_length=text_cfg.max_length)  # warm-up
    started = time.perf_counter()
    # The same batching as the stage: Arrow batches of arrow_batch_rows rows.
    step = settings.encode.arrow_batch_rows
    for start in range(0, len(texts), step):
        encoder.encode(texts[start:start + step], batch_size=text_cfg.batch_size, max_length=text_cfg.max_length)
        if image_encoder is not None:
            loaded = [encoding.load_image(r["image_uri"], max(2 * image["image_size"], 512))[0]
                      for r in rows[start:start + step]]
            good = [img for img in loaded if img is not None]
            if good:
                image_encoder.encode(good, batch_size=image["batch_size"])
    return time.perf_counter() - started


def spark_encode(spark, rows: list[dict], settings, cores: int) -> tuple[float, float]:
    """(cold, warm) seconds for `encoding.encode` over the same rows on local[cores]."""
    from fusionrank.vectors import encode as encoding

    frame = spark.createDataFrame(
        [(r["item_id"], "h", r["title"], r["category"], r["brand"], r["description"], r["image_uri"]) for r in rows],
        "item_id string, content_hash string, title string, category string, brand string, description string, "
        "image_uri string",
    ).repartition(cores).cache()
    frame.count()
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        encoding.encode(frame, settings).write.format("noop").mode("overwrite").save()
        timings.append(time.perf_counter() - started)
    frame.unpersist()
    return timings[0], timings[1]


def incremental(tmp: Path, rows: list[dict], cores: int, spark) -> tuple[float, float, dict]:
    """encode_items seconds: full (day 1) and with 1% of titles changed (day 2)."""
    from fusionrank.core.context import make_context
    from fusionrank.pipeline import run_stage

    tmp.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp / "catalog.jsonl", rows)
    write_jsonl(tmp / "events.jsonl", [])
    settings = settings_for(tmp, cores)
    days = [dt.date(2024, 5, 1), dt.date(2024, 5, 2)]
    results = []
    for day in days:
        ctx = make_context(settings, day, spark)
        run_stage("clean_catalog", settings, day, ctx=ctx)
        results.append(run_stage("encode_items", settings, day, ctx=ctx))
        for row in rows[:: 100]:  # 1% of the items get a new title for the next day
            row["title"] = "new " + row["title"]
        write_jsonl(tmp / "catalog.jsonl", rows)
    return results[0].seconds, results[1].seconds, results[1].counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--images", type=int, default=200, help="items with an image (0: skip the image rows)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--incremental-items", type=int, default=0,
                        help="catalog size for the full-vs-incremental part (default: --items)")
    parser.add_argument("--parts", default="text,image,incremental",
                        help="comma-separated subset of text,image,incremental to run")
    args = parser.parse_args(argv)

    from fusionrank.core.spark import get_session

    with tempfile.TemporaryDirectory(prefix="fr-bench-") as name:
        tmp = Path(name)
        rows = catalog_rows(args.items, args.images, tmp)
        settings = settings_for(tmp, args.cores)
        spark = get_session(settings)
        print(f"\nencode throughput, {args.cores} cores (torch threads: raw {args.cores} in one process; "
              f"Spark local[{args.cores}], 1 per task), CPU")
        print(f"{'workload':<27} {'items':>6} {'raw it/s':>9} {'spark it/s':>11} {'ratio':>6} {'cold it/s':>10}")

        def row(label: str, n: int, raw: float, cold: float, warm: float) -> None:
            print(f"{label:<27} {n:>6} {n / raw:>9.1f} {n / warm:>11.1f} {raw / warm:>6.2f} {n / cold:>10.1f}",
                  flush=True)

        parts = set(args.parts.split(","))
        if "text" in parts:
            raw = raw_encode(rows, settings, args.cores)
            cold, warm = spark_encode(spark, rows, settings, args.cores)
            row("text (MiniLM-L6)", len(rows), raw, cold, warm)

        if args.images and "image" in parts:
            with_images = rows[:args.images]
            image_settings = settings_for(tmp, args.cores, "efficientnet_lite0")
            raw = raw_encode(with_images, image_settings, args.cores)
            cold, warm = spark_encode(spark, with_images, image_settings, args.cores)
            row("text+image (EffNet-Lite0)", len(with_images), raw, cold, warm)

        if "incremental" not in parts:
            spark.stop()
            return 0
        n_incremental = args.incremental_items or args.items
        catalog = rows if n_incremental == len(rows) else catalog_rows(n_incremental, 0, tmp / "incremental-catalog")
        full, incr, counts = incremental(tmp / "incremental", [dict(r, image_uri=None) for r in catalog], args.cores,
                                         spark)
        spark.stop()

    print(f"\nincremental encode_items on {n_incremental} items (text only, behaviour off)")
    print(f"{'full (s)':>9} {'1% changed (s)':>15} {'encoded':>8} {'ratio':>6}")
    print(f"{full:>9.1f} {incr:>15.1f} {counts['encoded']:>8} {incr / full:>6.2f}")
    print("targets: spark/raw >= 0.85 on CPU; incremental/full <= 0.10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
