"""A synthetic e-commerce shop in the canonical raw format (DESIGN.md).

`generate(out, items=..., users=..., days=...)` writes, into `out`:

``catalog.jsonl``
    One row per item: a title, description, category path (``Women > Dresses >
    Maxi``), brand, price, ``image_uri`` and ``updated_at`` (ISO-8601 UTC).
    Titles read like ``Velora Flowy Red Maxi Dress``.
``images/``
    A small PNG per item drawn with Pillow. The picture follows the attributes:
    the leaf category decides the shape and its pattern (24 distinct
    shape/pattern pairs), the colour attribute the fill colour, the department
    the background tint, so two red maxi dresses look alike and a red dress and
    a blue mug do not. ``images="variant"`` draws one picture per (category,
    colour) and points every item of that variant at it (for catalogs of
    millions, where a file per item is the slow part); ``images="none"`` writes
    no pictures and leaves ``image_uri`` null. About 1% of items never have an
    image (``image_uri`` null), as in a real catalog.
``events.jsonl``
    The behaviour log, user by user. Every user has latent tastes (one to three
    favourite leaf categories, two colours, two brands, a price band and an
    activity level); their sessions follow them. A browse session views items of
    a category, and each view leads on with decreasing probability to a click,
    an add_to_cart and a purchase. A search session starts with a ``search``
    event whose query is built from a wanted item's attributes (``red maxi
    dress``, ``velora maxi dress``, ``maxi dress``) and continues in the same
    session with views, clicks and purchases of items that match the query, so
    the logs carry query click-through. Timestamps are epoch seconds within the
    `days` days ending on `end_date` (UTC); a user's events never overlap in
    time, so the clean log has no accidental duplicates.
``query_kinds.json`` (with ``query_noise`` > 0)
    ``{query: kind}``: the share ``query_noise`` of search queries is rewritten
    the way shoppers type (synonyms no title contains, misspellings, brand typos,
    word-order changes, attribute-only queries; vocabulary and rules in
    raw.query_noise), and each query's kind (``clean`` or the noise kind) is
    recorded here so search evaluation can split clean from noisy queries.
``synth.json``
    What was generated (parameters and counts); deterministic like the rest.
``dirty_expected.json`` (with ``dirty=True``)
    Injected bad rows and how the cleaning stages must count them: raw, clean
    and quarantined rows and the quarantine reasons (keyed like the stage
    counts), plus the items whose image file is missing or corrupt.

The same seed gives byte-identical files (for the same `out` folder: image URIs
are absolute paths). Items are held as a few numpy arrays (bytes per item);
events are generated and written user by user, so memory does not grow with the
number of events. Users draw from their own random streams (seeded by (seed,
user number)), so a user's history does not depend on how many users come
before it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from fusionrank.raw.adapters import CATALOG_FILE, EVENTS_FILE, _AtomicOutputs, _catalog_row, _dumps, _event_row
from fusionrank.raw.query_noise import CLEAN, noisy_query

DEFAULT_END_DATE = dt.date(2026, 11, 22)
MANIFEST_FILE = "synth.json"
DIRTY_FILE = "dirty_expected.json"
# With query_noise > 0: {query: kind} for every query written (raw.query_noise).
QUERY_KINDS_FILE = "query_kinds.json"
IMAGE_DIR = "images"
IMAGE_SIZE = 96
IMAGE_MODES = ("item", "variant", "none")
NO_IMAGE_FRACTION = 0.01

# Users never have more than this many events in one day; the bot has BOT_EVENTS.
MAX_SESSIONS_PER_DAY = 4
MAX_VIEWS_PER_SESSION = 8
MAX_EVENTS_PER_DAY = MAX_SESSIONS_PER_DAY * (1 + 4 * MAX_VIEWS_PER_SESSION)  # 132
BOT_EVENTS = 500


@dataclass(frozen=True)
class Leaf:
    path: str
    noun: str
    shape: str
    pattern: str
    base_price: float

    @property
    def department(self) -> str:
        return self.path.split(" > ")[0]


SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "cross", "ring")
PATTERNS = ("solid", "stripes", "dots")

TAXONOMY: tuple[Leaf, ...] = (
    Leaf("Women > Dresses > Maxi", "maxi dress", "triangle", "solid", 69.0),
    Leaf("Women > Dresses > Mini", "mini dress", "triangle", "stripes", 49.0),
    Leaf("Women > Tops > Blouses", "blouse", "square", "dots", 35.0),
    Leaf("Women > Shoes > Heels", "heels", "diamond", "solid", 79.0),
    Leaf("Women > Shoes > Sneakers", "sneakers", "diamond", "stripes", 65.0),
    Leaf("Women > Bags > Handbags", "handbag", "square", "solid", 89.0),
    Leaf("Men > Shirts > Casual", "casual shirt", "square", "stripes", 39.0),
    Leaf("Men > Shirts > Formal", "dress shirt", "hexagon", "solid", 55.0),
    Leaf("Men > Shoes > Running", "running shoes", "star", "solid", 95.0),
    Leaf("Men > Shoes > Boots", "boots", "hexagon", "stripes", 120.0),
    Leaf("Men > Outerwear > Jackets", "jacket", "cross", "solid", 140.0),
    Leaf("Home > Kitchen > Mugs", "mug", "circle", "solid", 14.0),
    Leaf("Home > Kitchen > Teapots", "teapot", "circle", "dots", 32.0),
    Leaf("Home > Decor > Cushions", "cushion", "ring", "solid", 24.0),
    Leaf("Home > Decor > Vases", "vase", "ring", "stripes", 38.0),
    Leaf("Home > Bedding > Blankets", "blanket", "circle", "stripes", 59.0),
    Leaf("Electronics > Audio > Headphones", "headphones", "star", "stripes", 129.0),
    Leaf("Electronics > Audio > Speakers", "speaker", "star", "dots", 89.0),
    Leaf("Electronics > Phones > Cases", "phone case", "cross", "stripes", 19.0),
    Leaf("Electronics > Computers > Keyboards", "keyboard", "cross", "dots", 75.0),
    Leaf("Sports > Fitness > Yoga Mats", "yoga mat", "triangle", "dots", 29.0),
    Leaf("Sports > Fitness > Dumbbells", "dumbbells", "hexagon", "dots", 45.0),
    Leaf("Sports > Outdoor > Backpacks", "backpack", "diamond", "dots", 70.0),
    Leaf("Sports > Cycling > Helmets", "bike helmet", "ring", "dots", 60.0),
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "blue": (40, 90, 210),
    "green": (40, 150, 60),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "yellow": (240, 200, 30),
    "pink": (240, 130, 180),
    "purple": (120, 50, 160),
    "orange": (245, 130, 30),
    "grey": (130, 130, 130),
    "brown": (120, 75, 40),
    "navy": (20, 30, 90),
}
COLOUR_NAMES = tuple(COLOURS)
COLOUR_WEIGHTS = np.array([10, 10, 6, 12, 9, 4, 5, 3, 3, 7, 4, 6], dtype=float)

BACKGROUNDS = {
    "Women": (250, 238, 244),
    "Men": (232, 238, 250),
    "Home": (246, 241, 228),
    "Electronics": (228, 232, 236),
    "Sports": (232, 248, 232),
}

BRANDS: dict[str, tuple[str, ...]] = {
    "Women": ("Velora", "Maison Lune", "Aurelle", "Kiko Rose", "Stellan", "Bloom & Co"),
    "Men": ("Northpeak", "Harlow", "Ironwood", "Dashline", "Kestrel", "Brookman"),
    "Home": ("Hearthly", "Nordhaus", "Casa Verde", "Loom & Lark", "Pebble", "Oakhaven"),
    "Electronics": ("Voltix", "Sonora", "Pixelon", "Arcwave", "Zentro", "Lumen"),
    "Sports": ("Stridewell", "Peakform", "Trailhawk", "Apexa", "Flowfit", "Summitra"),
}
DEPARTMENTS = tuple(BRANDS)
BRAND_NAMES = tuple(b for d in DEPARTMENTS for b in BRANDS[d])
# Price level of each brand (budget .. premium), fixed so titles and prices agree across seeds.
BRAND_TIERS = np.array([0.7, 0.85, 1.0, 1.0, 1.25, 1.6] * len(DEPARTMENTS))

ADJECTIVES: dict[str, tuple[str, ...]] = {
    "Women": ("Flowy", "Classic", "Elegant", "Everyday", "Vintage", "Chic"),
    "Men": ("Classic", "Slim", "Rugged", "Everyday", "Modern", "Tailored"),
    "Home": ("Cozy", "Rustic", "Modern", "Handmade", "Minimal", "Classic"),
    "Electronics": ("Wireless", "Compact", "Pro", "Smart", "Portable", "Ultra"),
    "Sports": ("Lightweight", "Pro", "Trail", "Everyday", "Performance", "Compact"),
}
MATERIALS: dict[str, tuple[str, ...]] = {
    "Women": ("cotton", "linen", "silk", "viscose", "leather", "denim"),
    "Men": ("cotton", "wool", "leather", "canvas", "linen", "nylon"),
    "Home": ("ceramic", "stoneware", "cotton", "wool", "glass", "bamboo"),
    "Electronics": ("aluminium", "plastic", "silicone", "steel", "fabric", "rubber"),
    "Sports": ("mesh", "nylon", "rubber", "foam", "polyester", "steel"),
}
FEATURES = (
    "Easy to care for and built to last.",
    "A customer favourite this season.",
    "Designed for everyday comfort.",
    "Pairs well with the rest of the collection.",
    "Made with responsibly sourced materials.",
    "Free returns within 30 days.",
)


# -- items ---------------------------------------------------------------------------
@dataclass
class Catalog:
    """The item attributes as arrays (index = item number), plus lookup pools."""

    leaf: np.ndarray
    colour: np.ndarray
    brand: np.ndarray
    adjective: np.ndarray
    material: np.ndarray
    feature: np.ndarray
    price: np.ndarray
    relative_price: np.ndarray
    popularity: np.ndarray
    updated_at: np.ndarray
    has_image: np.ndarray
    shape_jitter: np.ndarray  # (n, 4): dx, dy, scale, rotation

    def __len__(self) -> int:
        return len(self.leaf)

    def __post_init__(self) -> None:
        self._pools: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        order = np.lexsort((np.arange(len(self.leaf)), self.leaf))
        bounds = np.searchsorted(self.leaf[order], np.arange(len(TAXONOMY) + 1))
        self.by_leaf = [order[bounds[i]:bounds[i + 1]] for i in range(len(TAXONOMY))]

    def pool(self, leaf: int, colour: int | None = None, brand: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item numbers, cumulative popularity) of the items with these attributes."""
        key = (leaf, colour, brand)
        cached = self._pools.get(key)
        if cached is None:
            members = self.by_leaf[leaf]
            if colour is not None:
                members = members[self.colour[members] == colour]
            if brand is not None:
                members = members[self.brand[members] == brand]
            cached = (members, np.cumsum(self.popularity[members]))
            self._pools[key] = cached
        return cached

    def item_id(self, i: int) -> str:
        return item_id(i)

    def title(self, i: int) -> str:
        leaf = TAXONOMY[self.leaf[i]]
        adjective = ADJECTIVES[leaf.department][self.adjective[i]]
        return f"{BRAND_NAMES[self.brand[i]]} {adjective} {COLOUR_NAMES[self.colour[i]].title()} {leaf.noun.title()}"

    def description(self, i: int) -> str:
        leaf = TAXONOMY[self.leaf[i]]
        adjective = ADJECTIVES[leaf.department][self.adjective[i]].lower()
        material = MATERIALS[leaf.department][self.material[i]]
        article = "An" if adjective[0] in "aeiou" else "A"
        return (f"{article} {adjective} {COLOUR_NAMES[self.colour[i]]} {leaf.noun} by {BRAND_NAMES[self.brand[i]]}, "
                f"made of {material}. {FEATURES[self.feature[i]]}")


def item_id(i: int) -> str:
    return f"P{i:07d}"


def user_id(u: int) -> str:
    return f"U{u:07d}"


def make_catalog(n_items: int, seed: int, end_ts: int) -> Catalog:
    rng = np.random.default_rng([seed, 0])
    leaf_weights = rng.gamma(3.0, 1.0, len(TAXONOMY))
    leaf = rng.choice(len(TAXONOMY), size=n_items, p=leaf_weights / leaf_weights.sum())
    colour = rng.choice(len(COLOURS), size=n_items, p=COLOUR_WEIGHTS / COLOUR_WEIGHTS.sum())
    department = np.array([DEPARTMENTS.index(TAXONOMY[x].department) for x in leaf], dtype=np.int64)
    per_department = len(BRAND_NAMES) // len(DEPARTMENTS)
    brand = department * per_department + rng.integers(0, per_department, n_items)
    relative_price = BRAND_TIERS[brand] * rng.lognormal(0.0, 0.25, n_items)
    base = np.array([TAXONOMY[x].base_price for x in leaf])
    price = np.floor(base * relative_price) + 0.99
    return Catalog(
        leaf=leaf.astype(np.int16),
        colour=colour.astype(np.int16),
        brand=brand.astype(np.int16),
        adjective=rng.integers(0, 6, n_items).astype(np.int8),
        material=rng.integers(0, 6, n_items).astype(np.int8),
        feature=rng.integers(0, len(FEATURES), n_items).astype(np.int8),
        price=np.round(price, 2),
        relative_price=relative_price.astype(np.float32),
        popularity=rng.lognormal(0.0, 1.0, n_items),
        updated_at=end_ts - rng.integers(86_400 * 30, 86_400 * 400, n_items),
        has_image=rng.random(n_items) >= NO_IMAGE_FRACTION,
        shape_jitter=np.column_stack([
            rng.integers(-6, 7, n_items), rng.integers(-6, 7, n_items),
            rng.uniform(0.85, 1.1, n_items), rng.uniform(-12.0, 12.0, n_items),
        ]).astype(np.float32),
    )


def iso(ts: int | float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- images ----------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    def ring(points: int, radii: tuple[float, ...], start: float) -> list[tuple[float, float]]:
        out = []
        for k in range(points):
            angle = math.radians(start + rotation + 360.0 * k / points)
            radius = radii[k % len(radii)]
            out.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return out

    if shape == "square":
        return ring(4, (r,), 45)
    if shape == "triangle":
        return ring(3, (r,), -90)
    if shape == "diamond":
        return [(x, cy + (y - cy) * 1.4) for x, y in ring(4, (r * 0.75,), 0)]
    if shape == "hexagon":
        return ring(6, (r,), 0)
    if shape == "star":
        return ring(10, (r, r * 0.45), -90)
    if shape == "cross":
        a, b = r, r * 0.35
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]
    raise ValueError(f"no polygon for shape {shape!r}")


def draw_item_image(leaf: Leaf, colour: str, jitter=(0, 0, 1.0, 0.0), size: int = IMAGE_SIZE):
    """A product picture: the category's shape and pattern in the item's colour."""
    from PIL import Image, ImageDraw

    dx, dy, scale, rotation = (float(v) for v in jitter)
    image = Image.new("RGB", (size, size), BACKGROUNDS[leaf.department])
    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    cx, cy, r = size / 2 + dx, size / 2 + dy, size * 0.36 * scale
    outline: list | None = None
    if leaf.shape in ("circle", "ring"):
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if leaf.shape == "ring":
            pen.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=0)
    else:
        outline = _polygon(leaf.shape, cx, cy, r, rotation)
        pen.polygon(outline, fill=255)
    rgb = COLOURS[colour]
    fill = Image.new("RGB", (size, size), rgb)
    accent = tuple(int(c * 0.6) if sum(rgb) > 200 else min(255, c + 90) for c in rgb)
    brush = ImageDraw.Draw(fill)
    if leaf.pattern == "stripes":
        for y in range(0, size, 8):
            brush.rectangle((0, y, size, y + 2), fill=accent)
    elif leaf.pattern == "dots":
        for y in range(4, size, 10):
            for x in range(4 + (y // 10 % 2) * 5, size, 10):
                brush.ellipse((x - 2, y - 2, x + 2, y + 2), fill=accent)
    image.paste(fill, (0, 0), mask)
    edge = ImageDraw.Draw(image)
    if outline:
        edge.polygon(outline, outline=(60, 60, 60))
    else:
        edge.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(60, 60, 60))
    return image


def _save_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)


def item_image_path(images_root: Path, i: int) -> Path:
    # 1000 files per folder, so a million items do not end up in one directory.
    name = item_id(i)
    return images_root / name[:-3] / f"{name}.png"


def variant_image_path(images_root: Path, leaf: int, colour: int) -> Path:
    return images_root / "variants" / f"{leaf:02d}-{COLOUR_NAMES[colour]}.png"


# -- users and sessions -------------------------------------------------------------------
@dataclass
class Taste:
    leaves: np.ndarray
    leaf_weights: np.ndarray
    colours: tuple[int, ...]
    brands: tuple[int, ...]
    price_level: float
    activity: float
    search_rate: float


def make_taste(rng: np.random.Generator, catalog: Catalog, leaf_sizes: np.ndarray) -> Taste:
    populated = np.flatnonzero(leaf_sizes)
    p = leaf_sizes[populated] / leaf_sizes[populated].sum()
    n = min(len(populated), 1 + int(rng.binomial(2, 0.4)))
    leaves = rng.choice(populated, size=n, replace=False, p=p)
    colours = tuple(int(c) for c in rng.choice(len(COLOURS), size=2, replace=False,
                                               p=COLOUR_WEIGHTS / COLOUR_WEIGHTS.sum()))
    per_department = len(BRAND_NAMES) // len(DEPARTMENTS)
    brands = []
    for _ in range(2):
        department = DEPARTMENTS.index(TAXONOMY[int(rng.choice(leaves))].department)
        brands.append(department * per_department + int(rng.integers(0, per_department)))
    return Taste(
        leaves=leaves, leaf_weights=rng.dirichlet(np.full(n, 2.0)), colours=colours, brands=tuple(brands),
        price_level=float((0.75, 1.0, 1.4)[int(rng.integers(0, 3))]),
        activity=float(rng.lognormal(0.0, 0.6)), search_rate=float(rng.beta(2.0, 3.0)),
    )


def _choose(rng: np.random.Generator, catalog: Catalog, pool: tuple[np.ndarray, np.ndarray], taste: Taste,
            n: int) -> list[int]:
    """Up to `n` distinct items of `pool`, the user's likely picks first: candidates
    drawn by popularity, ordered by how well they fit the user's taste."""
    members, cumulative = pool
    if len(members) == 0:
        return []
    draws = min(len(members), 2 * n + 2)
    picks = np.searchsorted(cumulative, rng.random(draws) * cumulative[-1], side="right")
    candidates = np.unique(members[np.minimum(picks, len(members) - 1)])
    fit = (1.2 * np.isin(catalog.colour[candidates], taste.colours)
           + 0.8 * np.isin(catalog.brand[candidates], taste.brands)
           - 1.5 * np.abs(np.log(catalog.relative_price[candidates] / taste.price_level))
           + rng.gumbel(0.0, 0.7, len(candidates)))
    order = np.argsort(-fit, kind="stable")
    return [int(candidates[k]) for k in order[:n]]


def _funnel(rng, catalog: Catalog, taste: Taste, items: list[int], ts: int, user: str, session: str,
            click_rate: float) -> tuple[list[dict], int]:
    """View each item; some views go on to a click, a cart and a purchase."""
    events = []
    for rank, i in enumerate(items):
        iid = item_id(i)
        ts += int(rng.integers(5, 90))
        events.append(_event_row(user_id=user, event_type="view", event_ts=ts, item_id=iid, session_id=session))
        likes = (catalog.colour[i] in taste.colours) + (catalog.brand[i] in taste.brands)
        if rng.random() < click_rate * (0.6 + 0.4 * likes) / (1.0 + 0.3 * rank):
            ts += int(rng.integers(3, 40))
            events.append(_event_row(user_id=user, event_type="click", event_ts=ts, item_id=iid, session_id=session))
            if rng.random() < 0.3:
                ts += int(rng.integers(10, 120))
                quantity = 2.0 if rng.random() < 0.1 else 1.0
                events.append(_event_row(user_id=user, event_type="add_to_cart", event_ts=ts, item_id=iid,
                                         value=quantity, session_id=session))
                if rng.random() < 0.5:
                    ts += int(rng.integers(30, 600))
                    events.append(_event_row(user_id=user, event_type="purchase", event_ts=ts, item_id=iid,
                                             value=quantity, session_id=session))
    return events, ts


def search_query(rng, catalog: Catalog, taste: Taste, leaf: int, noise_rng=None,
                 noise_rate: float = 0.0) -> tuple[str, tuple, str]:
    """A query for something the user wants in `leaf`, the pool it matches, and its
    kind (`clean`, or a raw.query_noise kind for the `noise_rate` share of queries,
    drawn from `noise_rng`)."""
    noun = TAXONOMY[leaf].noun
    members = catalog.by_leaf[leaf]
    wanted = members[int(rng.integers(0, len(members)))]
    colour = taste.colours[0] if rng.random() < 0.6 else int(catalog.colour[wanted])
    if len(catalog.pool(leaf, colour=colour)[0]) == 0:
        colour = int(catalog.colour[wanted])
    brand = next((b for b in taste.brands if len(catalog.pool(leaf, brand=b)[0])), int(catalog.brand[wanted]))
    form = rng.random()
    if form < 0.5:
        parts, pool = (COLOUR_NAMES[colour], None), catalog.pool(leaf, colour=colour)
    elif form < 0.7:
        parts, pool = (None, None), catalog.pool(leaf)
    elif form < 0.9 or len(catalog.pool(leaf, colour=colour, brand=brand)[0]) == 0:
        parts, pool = (None, BRAND_NAMES[brand].lower()), catalog.pool(leaf, brand=brand)
    else:
        parts, pool = (COLOUR_NAMES[colour], BRAND_NAMES[brand].lower()), catalog.pool(leaf, colour=colour, brand=brand)
    clean = " ".join(p for p in (*parts, noun) if p)
    if noise_rng is None or noise_rate <= 0 or noise_rng.random() >= noise_rate:
        return clean, pool, CLEAN
    material = MATERIALS[TAXONOMY[leaf].department][int(catalog.material[wanted])]
    query, kind = noisy_query(noise_rng, parts[0], parts[1], noun, material)
    return query, pool, kind


def user_events(u: int, seed: int, catalog: Catalog, leaf_sizes: np.ndarray, start_ts: int, end_ts: int,
                days: int, query_noise: float = 0.0, kinds: dict | None = None) -> Iterator[dict]:
    """Every event of user `u`, in time order. With `query_noise` > 0, each query's
    kind goes into `kinds` ({query: kind}; a query also written clean stays `clean`)."""
    rng = np.random.default_rng([seed, 1, u])
    noise_rng = np.random.default_rng([seed, 2, u]) if query_noise > 0 else None
    taste = make_taste(rng, catalog, leaf_sizes)
    user = user_id(u)
    n_sessions = max(1, int(rng.poisson(days * 0.15 * taste.activity)))
    starts = np.sort(rng.integers(start_ts, end_ts - 3 * 3600, n_sessions))
    per_day: dict[int, int] = {}
    populated = np.flatnonzero(leaf_sizes)
    cursor = start_ts
    for s, start in enumerate(starts):
        ts = max(int(start), cursor + 60)
        day = ts // 86_400
        if ts >= end_ts - 3 * 3600 or per_day.get(day, 0) >= MAX_SESSIONS_PER_DAY:
            continue
        per_day[day] = per_day.get(day, 0) + 1
        session = f"{user}-s{s:04d}"
        if rng.random() < 0.85:
            leaf = int(rng.choice(taste.leaves, p=taste.leaf_weights))
        else:
            leaf = int(rng.choice(populated))
        n_views = min(MAX_VIEWS_PER_SESSION, 1 + int(rng.poisson(2.0)))
        if rng.random() < taste.search_rate:
            query, pool, kind = search_query(rng, catalog, taste, leaf, noise_rng, query_noise)
            if kinds is not None and kinds.get(query) != CLEAN:
                kinds[query] = kind
            yield _event_row(user_id=user, event_type="search", event_ts=ts, query=query, session_id=session)
            items, click_rate = _choose(rng, catalog, pool, taste, n_views), 0.55
        else:
            items, click_rate = _choose(rng, catalog, catalog.pool(leaf), taste, n_views), 0.3
        events, ts = _funnel(rng, catalog, taste, items, ts, user, session, click_rate)
        yield from events
        cursor = ts


# -- dirty rows ------------------------------------------------------------------------------
def dirty_catalog_rows(catalog: Catalog, end_ts: int) -> tuple[list[str], dict[str, int]]:
    """Bad catalog lines and the quarantine reason each must get."""
    lines: list[str] = []
    reasons: dict[str, int] = {}

    def add(reason: str, line: str) -> None:
        lines.append(line)
        reasons[reason] = reasons.get(reason, 0) + 1

    good = dict(title="Bad Row Item", description="injected", category=TAXONOMY[0].path, brand=BRAND_NAMES[0],
                price=10.0, image_uri=None, updated_at=iso(end_ts - 86_400 * 40))
    for k in range(3):
        add("missing item_id", _dumps(_catalog_row(**{**good, "item_id": None if k else "   "})))
        add("missing title", _dumps(_catalog_row(**{**good, "item_id": f"PBAD-T{k}", "title": None if k else ""})))
        add("price is not a number", _dumps(_catalog_row(**{**good, "item_id": f"PBAD-P{k}", "price": "abc"})))
    for k in range(2):
        add("negative price", _dumps(_catalog_row(**{**good, "item_id": f"PBAD-N{k}", "price": -5.0 - k})))
        add("unparseable updated_at",
            _dumps(_catalog_row(**{**good, "item_id": f"PBAD-U{k}", "updated_at": "last tuesday"})))
        add("malformed record", '{"item_id": "PBAD-M%d", "title": "broken\n' % k)
    # Older versions of real items: the newer row wins, the old one is superseded.
    for k in range(min(4, len(catalog))):
        i = (k * 7919) % len(catalog)
        old = _catalog_row(item_id=item_id(i), title=f"Old {catalog.title(i)}", description=catalog.description(i),
                           category=TAXONOMY[catalog.leaf[i]].path, brand=BRAND_NAMES[catalog.brand[i]],
                           price=float(catalog.price[i]) + 5.0, image_uri=None,
                           updated_at=iso(int(catalog.updated_at[i]) - 86_400 * 10))
        add("duplicate item_id", _dumps(old))
    return lines, reasons


def dirty_event_rows(users: int, n_items: int, start_ts: int, end_ts: int) -> tuple[list[str], dict[str, int]]:
    """Bad event lines (besides duplicates and the bot) and the reason each must get."""
    lines: list[str] = []
    reasons: dict[str, int] = {}
    mid = (start_ts + end_ts) // 2

    def add(reason: str, **fields) -> None:
        row = {"user_id": user_id(0), "event_type": "view", "event_ts": mid, "item_id": item_id(0),
               "value": None, "query": None, "session_id": "dirty"}
        row.update(fields)
        lines.append(_dumps({k: row.get(k) for k in ("user_id", "event_type", "event_ts", "item_id", "value",
                                                      "query", "session_id")}))
        reasons[reason] = reasons.get(reason, 0) + 1

    for k in range(3):
        add("missing user_id", user_id=None if k else " ", event_ts=mid + k)
        add("unparseable event_ts", event_ts=["yesterday", "2026-13-45T00:00:00", "1/2/2026 noon"][k])
        add("missing item_id", item_id=None, event_ts=mid + 10 + k)
    for k in range(2):
        add("missing event_type", event_type=None, event_ts=mid + 20 + k)
        add("unknown event_type", event_type="wishlist", event_ts=mid + 30 + k)
        add("missing event_ts", event_ts=None, item_id=item_id(k % n_items))
        add("search event without query", event_type="search", item_id=None, query=" " if k else None,
            event_ts=mid + 40 + k)
        add("value is not a number", event_type="purchase", value="two", event_ts=mid + 50 + k)
        add("event_ts after the run date", event_ts=end_ts + 3600 * (k + 1))
    for k in range(5):
        add("unknown item_id (not in catalog_clean)", item_id=f"PX{k:06d}", event_ts=mid + 60 + k)
    for k in range(2):
        lines.append('{"user_id": "%s", "event_type": "view", "event_ts": %d, "item_id": \n' % (user_id(0), mid + k))
        reasons["malformed record"] = reasons.get("malformed record", 0) + 1
    return lines, reasons


def bot_events(catalog_size: int, day_start: int) -> Iterator[dict]:
    """One user viewing BOT_EVENTS items in one day, every 30 seconds."""
    for k in range(BOT_EVENTS):
        yield _event_row(user_id="UBOT0001", event_type="view", event_ts=day_start + 3600 + 30 * k,
                         item_id=item_id((k * 104729) % catalog_size), session_id="UBOT0001-s0000")


# -- the generator -----------------------------------------------------------------------------
def generate(
    out: str | os.PathLike,
    items: int = 2000,
    users: int = 1000,
    days: int = 60,
    seed: int = 0,
    end_date: dt.date = DEFAULT_END_DATE,
    images: str = "item",
    dirty: bool = False,
    query_noise: float = 0.0,
) -> dict:
    """Write the synthetic shop into `out` and return its manifest (also in synth.json).
    `query_noise` is the share of search queries rewritten by raw.query_noise."""
    if items < 1 or users < 1 or days < 1:
        raise ValueError(f"items, users and days must be positive, got {items}, {users}, {days}")
    if not 0.0 <= query_noise <= 1.0:
        raise ValueError(f"query_noise must be between 0 and 1, got {query_noise}")
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    out = Path(out).resolve()
    end = dt.datetime(end_date.year, end_date.month, end_date.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    end_ts = int(end.timestamp())
    start_ts = end_ts - days * 86_400
    catalog = make_catalog(items, seed, end_ts)
    leaf_sizes = np.bincount(catalog.leaf, minlength=len(TAXONOMY)).astype(float)
    images_root = out / IMAGE_DIR
    counts: dict[str, int] = {"images_written": 0, "items_without_image": 0}
    event_counts = {t: 0 for t in ("view", "click", "add_to_cart", "purchase", "search")}
    expected: dict = {}

    with _AtomicOutputs(out) as outputs:
        # Catalog (and images, one item at a time).
        catalog_file = outputs.open(CATALOG_FILE)
        written_variants: set[tuple[int, int]] = set()
        broken_images = {"missing_file": [], "corrupt_file": []}
        buffer: list[str] = []
        for i in range(items):
            leaf = TAXONOMY[catalog.leaf[i]]
            uri = None
            if images != "none" and catalog.has_image[i]:
                if images == "item":
                    path = item_image_path(images_root, i)
                    _save_png(draw_item_image(leaf, COLOUR_NAMES[catalog.colour[i]], catalog.shape_jitter[i]), path)
                    counts["images_written"] += 1
                else:
                    variant = (int(catalog.leaf[i]), int(catalog.colour[i]))
                    path = variant_image_path(images_root, *variant)
                    if variant not in written_variants:
                        _save_png(draw_item_image(leaf, COLOUR_NAMES[variant[1]]), path)
                        written_variants.add(variant)
                        counts["images_written"] += 1
                uri = str(path)
            else:
                counts["items_without_image"] += 1
            buffer.append(_dumps(_catalog_row(
                item_id=item_id(i), title=catalog.title(i), description=catalog.description(i), category=leaf.path,
                brand=BRAND_NAMES[catalog.brand[i]], price=float(catalog.price[i]), image_uri=uri,
                updated_at=iso(catalog.updated_at[i]))))
            if len(buffer) >= 10_000:
                catalog_file.write("".join(buffer))
                buffer.clear()
        if dirty:
            lines, catalog_reasons = dirty_catalog_rows(catalog, end_ts)
            buffer.extend(lines)
        catalog_file.write("".join(buffer))
        buffer.clear()
        if dirty and images == "item":
            broken_images = _break_images(catalog, images_root)

        # Events, user by user.
        events_file = outputs.open(EVENTS_FILE)
        queries: set[str] = set()
        kinds: dict[str, str] | None = {} if query_noise > 0 else None
        duplicates: list[dict] = []
        sessions = 0
        for u in range(users):
            last_session = None
            for event in user_events(u, seed, catalog, leaf_sizes, start_ts, end_ts, days, query_noise, kinds):
                event_counts[event["event_type"]] += 1
                if event["session_id"] != last_session:
                    sessions += 1
                    last_session = event["session_id"]
                if event["query"] is not None and len(queries) < 100_000:
                    queries.add(event["query"])
                if dirty and len(duplicates) < 6 and u % 3 == 0 and event["event_type"] == "view":
                    duplicates.append(event)
                buffer.append(_dumps(event))
            if len(buffer) >= 10_000:
                events_file.write("".join(buffer))
                buffer.clear()
        clean_events = sum(event_counts.values())
        if dirty:
            lines, event_reasons = dirty_event_rows(users, items, start_ts, end_ts)
            buffer.extend(lines)
            buffer.extend(_dumps(e) for e in duplicates)
            event_reasons["duplicate event"] = len(duplicates)
            bot_day = start_ts + (days // 2) * 86_400
            buffer.extend(_dumps(e) for e in bot_events(items, bot_day))
            event_reasons["bot filter"] = BOT_EVENTS
            expected = {
                "assumes": {
                    "run_date": end_date.isoformat(),
                    "cleaning.bot_max_events_per_day": f">= {MAX_EVENTS_PER_DAY} and < {BOT_EVENTS}",
                },
                "catalog": _expected_counts(items, catalog_reasons),
                "events": _expected_counts(clean_events, event_reasons),
                "images": {k: sorted(v) for k, v in broken_images.items()},
            }
            outputs.open(DIRTY_FILE).write(json.dumps(expected, indent=2, sort_keys=True) + "\n")
        events_file.write("".join(buffer))
        buffer.clear()

        params = {"items": items, "users": users, "days": days, "seed": seed, "end_date": end_date.isoformat(),
                  "images": images, "dirty": dirty}
        if kinds is not None:
            params["query_noise"] = query_noise
            outputs.open(QUERY_KINDS_FILE).write(json.dumps(kinds, indent=0, sort_keys=True) + "\n")
        manifest = {
            "generator": "fusionrank.raw.synth",
            "params": params,
            "first_event_day": iso(start_ts)[:10],
            "items": items,
            "users": users,
            "sessions": sessions,
            "events": clean_events,
            "events_by_type": event_counts,
            "distinct_queries": len(queries),
            **counts,
            **({"queries_by_kind": {k: sum(1 for v in kinds.values() if v == k) for k in sorted(set(kinds.values()))}}
               if kinds is not None else {}),
            "dirty_rows": ({"catalog": expected["catalog"]["quarantined_rows"],
                            "events": expected["events"]["quarantined_rows"]} if dirty else None),
        }
        outputs.open(MANIFEST_FILE).write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _expected_counts(clean: int, reasons: dict[str, int]) -> dict:
    bad = sum(reasons.values())
    return {"raw_rows": clean + bad, "clean_rows": clean, "quarantined_rows": bad,
            "quarantine_reasons": dict(sorted(reasons.items()))}


def _break_images(catalog: Catalog, images_root: Path) -> dict[str, list[str]]:
    """Delete two items' image files and overwrite two with garbage: the catalog rows
    stay valid, the image encoder must cope."""
    with_image = np.flatnonzero(catalog.has_image)
    picks = [int(with_image[(k * 2557) % len(with_image)]) for k in range(4)] if len(with_image) >= 4 else []
    picks = list(dict.fromkeys(picks))
    broken: dict[str, list[str]] = {"missing_file": [], "corrupt_file": []}
    for n, i in enumerate(picks):
        path = item_image_path(images_root, i)
        if n % 2 == 0:
            path.unlink(missing_ok=True)
            broken["missing_file"].append(item_id(i))
        else:
            path.write_bytes(b"this is not a PNG file")
            broken["corrupt_file"].append(item_id(i))
    return broken

