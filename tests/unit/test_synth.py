"""The synthetic e-commerce shop: determinism, contract, tastes, dirty rows, and
(with Spark) that the cleaning stages quarantine exactly the injected rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from fusionrank.raw.contract import CATALOG_FIELDS, EVENT_FIELDS
from fusionrank.raw.synth import (
    BOT_EVENTS,
    COLOUR_NAMES,
    DIRTY_FILE,
    MANIFEST_FILE,
    MAX_EVENTS_PER_DAY,
    TAXONOMY,
    generate,
)

END = dt.date(2026, 11, 22)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "shop"
    generate(out, items=300, users=120, days=30, seed=7, end_date=END)
    return out


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    out = tmp_path / "shop"
    generate(out, items=150, users=40, days=10, seed=3, end_date=END, dirty=True)
    first = _digest(out)
    for path in sorted(out.rglob("*"), reverse=True):  # regenerate from nothing
        path.unlink() if path.is_file() else path.rmdir()
    generate(out, items=150, users=40, days=10, seed=3, end_date=END, dirty=True)
    assert _digest(out) == first
    assert len(first) > 150  # the images are part of it

    generate(tmp_path / "other", items=150, users=40, days=10, seed=4, end_date=END)
    assert (tmp_path / "other" / "events.jsonl").read_bytes() != (out / "events.jsonl").read_bytes()


def test_rows_follow_the_contract(shop):
    catalog = _jsonl(shop / "catalog.jsonl")
    events = _jsonl(shop / "events.jsonl")
    manifest = json.loads((shop / MANIFEST_FILE).read_text())
    assert len(catalog) == manifest["items"] == 300
    assert len(events) == manifest["events"] == sum(manifest["events_by_type"].values())
    assert not (shop / DIRTY_FILE).exists()

    paths = {leaf.path for leaf in TAXONOMY}
    assert len({r["item_id"] for r in catalog}) == 300
    for row in catalog:
        assert list(row) == CATALOG_FIELDS
        assert row["title"] and row["brand"] and row["description"]
        assert row["category"] in paths and row["category"].count(" > ") == 2
        assert isinstance(row["price"], float) and 0 < row["price"] < 1000
        dt.datetime.strptime(row["updated_at"], "%Y-%m-%dT%H:%M:%SZ")
        assert row["image_uri"] is None or Path(row["image_uri"]).is_file()
    assert manifest["items_without_image"] == sum(r["image_uri"] is None for r in catalog)

    item_ids = {r["item_id"] for r in catalog}
    first = dt.datetime(2026, 10, 24, tzinfo=dt.timezone.utc).timestamp()  # 30 days ending on END
    end = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc).timestamp()
    types = Counter()
    for event in events:
        assert list(event) == EVENT_FIELDS
        types[event["event_type"]] += 1
        assert isinstance(event["event_ts"], int) and first <= event["event_ts"] < end
        assert event["session_id"].startswith(event["user_id"])
        if event["event_type"] == "search":
            assert event["query"] and event["item_id"] is None
        else:
            assert event["item_id"] in item_ids and event["query"] is None
    assert set(types) == {"view", "click", "add_to_cart", "purchase", "search"}
    # The funnel narrows.
    assert types["view"] > types["click"] > types["add_to_cart"] > types["purchase"] > 0


def test_users_stay_under_the_bot_threshold_and_never_repeat_an_event(shop):
    per_day = Counter()
    keys = Counter()
    for e in _jsonl(shop / "events.jsonl"):
        per_day[(e["user_id"], e["event_ts"] // 86_400)] += 1
        keys[(e["user_id"], e["event_type"], e["item_id"], e["event_ts"], e["value"], e["query"])] += 1
    assert max(per_day.values()) <= MAX_EVENTS_PER_DAY
    assert max(keys.values()) == 1


def test_searches_are_followed_by_matching_items(shop):
    """Query click-through exists: after a search, the session's clicks are on items
    whose title holds every word of the query."""
    titles = {r["item_id"]: r["title"].lower() for r in _jsonl(shop / "catalog.jsonl")}
    query_of_session: dict[str, str] = {}
    clicks = matching = 0
    for e in _jsonl(shop / "events.jsonl"):
        if e["event_type"] == "search":
            query_of_session[e["session_id"]] = e["query"]
        elif e["event_type"] == "click" and e["session_id"] in query_of_session:
            clicks += 1
            matching += all(w in titles[e["item_id"]] for w in query_of_session[e["session_id"]].split())
    assert clicks > 50
    assert matching == clicks


def test_users_follow_their_tastes(shop):
    """A user's interactions concentrate on few categories (far above the catalog's mix)."""
    category = {r["item_id"]: r["category"] for r in _jsonl(shop / "catalog.jsonl")}
    by_user: dict[str, Counter] = {}
    for e in _jsonl(shop / "events.jsonl"):
        if e["item_id"]:
            by_user.setdefault(e["user_id"], Counter())[category[e["item_id"]]] += 1
    shares = [c.most_common(1)[0][1] / sum(c.values()) for c in by_user.values() if sum(c.values()) >= 10]
    assert len(shares) > 30
    assert sum(shares) / len(shares) > 0.4  # uniform over 24 categories would be ~0.1


def test_images_open_and_follow_colour_and_category(shop):
    from PIL import Image

    rows = [r for r in _jsonl(shop / "catalog.jsonl") if r["image_uri"]]
    assert len(rows) >= 290
    for row in rows[:40]:
        with Image.open(row["image_uri"]) as image:
            image.verify()
    # The centre pixel carries the item's colour (every shape covers the centre but the ring).
    by_colour: dict[str, list] = {}
    for row in rows:
        if not row["category"].endswith(("Cushions", "Vases", "Helmets")):
            colour = next(c for c in COLOUR_NAMES if c in row["title"].lower().split())
            with Image.open(row["image_uri"]) as image:
                by_colour.setdefault(colour, []).append(image.convert("RGB").getpixel((48, 48)))
    reds = by_colour["red"]
    assert sum(1 for r, g, b in reds if r > 150 and g < 120 and b < 120) >= 0.6 * len(reds)
    blues = by_colour["blue"]
    assert sum(1 for r, g, b in blues if b > 150 and r < 120) >= 0.6 * len(blues)


def test_variant_and_no_image_modes(tmp_path):
    variant = generate(tmp_path / "v", items=200, users=5, days=3, seed=1, end_date=END, images="variant")
    rows = _jsonl(tmp_path / "v" / "catalog.jsonl")
    uris = {r["image_uri"] for r in rows if r["image_uri"]}
    assert variant["images_written"] == len(uris) < 200
    assert all("/variants/" in u for u in uris)
    none = generate(tmp_path / "n", items=50, users=5, days=3, seed=1, end_date=END, images="none")
    assert none["images_written"] == 0
    assert all(r["image_uri"] is None for r in _jsonl(tmp_path / "n" / "catalog.jsonl"))
    assert not (tmp_path / "n" / "images").exists()


def test_dirty_rows_are_counted(tmp_path):
    manifest = generate(tmp_path / "d", items=120, users=30, days=10, seed=2, end_date=END, dirty=True)
    expected = json.loads((tmp_path / "d" / DIRTY_FILE).read_text())
    lines = (tmp_path / "d" / "events.jsonl").read_text().splitlines()
    assert len(lines) == expected["events"]["raw_rows"] == manifest["events"] + expected["events"]["quarantined_rows"]
    assert expected["events"]["quarantine_reasons"]["bot filter"] == BOT_EVENTS
    assert len((tmp_path / "d" / "catalog.jsonl").read_text().splitlines()) == expected["catalog"]["raw_rows"]
    for reason in ("missing item_id", "missing title", "price is not a number", "negative price",
                   "unparseable updated_at", "malformed record", "duplicate item_id"):
        assert expected["catalog"]["quarantine_reasons"][reason] > 0
    for item in expected["images"]["missing_file"]:
        assert not any(p.stem == item for p in (tmp_path / "d" / "images").rglob("*.png"))
    from PIL import Image, UnidentifiedImageError

    for item in expected["images"]["corrupt_file"]:
        path = next(p for p in (tmp_path / "d" / "images").rglob(f"{item}.png"))
        with pytest.raises(UnidentifiedImageError):
            Image.open(path)


def test_cli_writes_the_shop(tmp_path, capsys):
    from fusionrank.interfaces.cli import main

    assert main(["data", "synth", "--items", "40", "--users", "6", "--days", "5", "--no-images",
                 "--out", str(tmp_path / "c")]) == 0
    assert "40 items" in capsys.readouterr().out
    assert len(_jsonl(tmp_path / "c" / "catalog.jsonl")) == 40
    with pytest.raises(SystemExit, match="must be positive"):
        main(["data", "synth", "--items", "0", "--out", str(tmp_path / "z")])


