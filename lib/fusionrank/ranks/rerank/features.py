"""The second stage's inputs: candidates per user and their features, in numpy.

Everything is indexed by item *position* (the item's row in the index artifact, or
any dense code 0..n-1) and works on batches of users at once (no per-user Python),
so the rank pass can call it on each search batch on the executors and the bench
can call it in-process on the same arrays.

Inputs
- `ItemStats` (built once per night by `item_stats` from the training events before a
  cutoff and the catalog attributes): category and brand codes, log price,
  freshness, popularity percentile, 7-day vs 30-day trend, purchase rate, query
  click-through, the top co-occurring items of every item and the trending items of
  every category.
- `UserBatch`: per user the profile vector, the history (positions, weights; the
  profile's, heaviest first), the most recent items (positions, newest first), the
  event-type mix, the seen items, and optionally the interest vectors
  (`profiles.interests` > 1, from fusionrank.profiles.interests).
- `vectors(positions) -> (.., d)`: the ranking-space vectors; the first
  `behaviour_dim` components are the behaviour part, the rest the content part;
  optional per-modality content vectors (`text`, `image`) for their own similarity.

No feature reads anything at or after the cutoff the stats were built with: the
caller builds them from training events only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusionrank.core.arrays import unique_in_range

# Event-type codes of `Events.kind` and their label grades (purchase > add_to_cart >
# click > view; a rating is graded by its value).
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "search")
TYPE_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
GRADE = np.array([1, 2, 3, 4, 0, 0], dtype=np.int32)  # rating: by value, search: none

# Candidate sources (bit flags). FROM_INTEREST: the ANN results of one of the user's
# interest vectors (profiles.interests > 1).
FROM_ANN, FROM_COOC, FROM_TREND, FROM_INTEREST = 1, 2, 4, 8

DAY = 86_400.0


@dataclass
class Events:
    """Integer-coded events (one row per event)."""

    user: np.ndarray      # int64 user code
    item: np.ndarray      # int64 item position, -1 none (search)
    ts: np.ndarray        # int64 epoch seconds
    kind: np.ndarray      # int8 code in EVENT_TYPES
    value: np.ndarray | None = None    # float (rating value, quantity), nan none
    session: np.ndarray | None = None  # int64 session code, -1 none

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "ts", "kind"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Events.{name} has {len(getattr(self, name))} rows, user has {n}")
        if self.value is None:
            self.value = np.full(n, np.nan)
        if self.session is None:
            self.session = np.full(n, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> "Events":
        return Events(self.user[mask], self.item[mask], self.ts[mask], self.kind[mask], self.value[mask],
                      self.session[mask])


@dataclass
class ItemStats:
    """Per-item arrays (length n) and two small tables, built before a cutoff."""

    category: np.ndarray     # int64 code, -1 none
    brand: np.ndarray        # int64 code, -1 none
    log_price: np.ndarray    # float32, nan unknown
    age_days: np.ndarray     # float32 days since updated_at at the cutoff, nan unknown
    pop_pct: np.ndarray      # float32 popularity percentile in [0, 1] (events, whole window)
    trend: np.ndarray        # float32 log((7-day + 1) / (30-day / 30 * 7 + 1))
    purchase_rate: np.ndarray  # float32 (purchases + carts) / (views + clicks + 5)
    query_ctr: np.ndarray    # float32 engagements in search sessions / (search-session views + 5)
    cooc_items: np.ndarray   # (n, M) int64 most co-occurring items, -1 pad
    cooc_counts: np.ndarray  # (n, M) float32 their co-occurrence counts (users in common)
    cooc_cosine: np.ndarray  # (n, M) float32 count / sqrt(users of each item)
    trending: np.ndarray     # (n_categories, T) int64 top 7-day items of each category, -1 pad
    # float32 the item's distinct users / its category's (0 without a category). Times the
    # user's category share it is the "taste for the category, then its popular items" prior.
    pop_in_category: np.ndarray | None = None
    n_categories: int = 0
    n_brands: int = 0
    cutoff: float = 0.0

    @property
    def n(self) -> int:
        return len(self.category)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__
               if isinstance(getattr(self, name), np.ndarray)}
        out["_meta"] = np.array([self.n_categories, self.n_brands, self.cutoff], dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "ItemStats":
        meta = np.asarray(arrays["_meta"])
        names = [n for n in cls.__dataclass_fields__ if n not in ("n_categories", "n_brands", "cutoff")]
        # Stats saved before pop_in_category existed still load; their model then fails
        # apply's feature-name check, which says to retrain.
        optional = {"pop_in_category"}
        missing = [n for n in names if n not in arrays and n not in optional]
        if missing:
            raise ValueError(f"re-ranker item stats: missing arrays {missing}")
        return cls(**{n: np.asarray(arrays[n]) for n in names if n in arrays}, n_categories=int(meta[0]),
                   n_brands=int(meta[1]), cutoff=float(meta[2]))

    def __post_init__(self):
        if self.pop_in_category is None:
            self.pop_in_category = np.zeros(len(self.category), np.float32)


def _percentile(values: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return values.astype(np.float32)
    order = np.argsort(values, kind="stable")
    pct = np.empty(len(values), dtype=np.float32)
    pct[order] = np.arange(len(values)) / max(len(values) - 1, 1)
    # Ties share their lowest percentile (an item with no events is 0 however many there are).
    sorted_vals = values[order]
    first = np.searchsorted(sorted_vals, sorted_vals, side="left")
    pct[order] = first / max(len(values) - 1, 1)
    return pct


def cooccurrence(user: np.ndarray, item: np.ndarray, n_items: int, top: int, max_per_user: int = 100):
    """(n, top) items sharing the most users with each item, and the counts. Users'
    item sets are cut to their `max_per_user` most recent distinct items (the caller
    orders rows by time) so the pair count stays bounded."""
    import scipy.sparse as sp

    keep = item >= 0
    user, item = user[keep], item[keep]
    # distinct (user, item), keeping the last occurrence order: rows are in time order.
    key = user.astype(np.int64) * n_items + item
    _, last = np.unique(key[::-1], return_index=True)
    last = np.sort(len(key) - 1 - last)
    user, item = user[last], item[last]
    # newest max_per_user per user
    order = np.lexsort((-np.arange(len(user)), user))
    u_sorted = user[order]
    starts = np.r_[0, np.flatnonzero(u_sorted[1:] != u_sorted[:-1]) + 1] if len(u_sorted) else np.zeros(0, int)
    nth = np.arange(len(u_sorted)) - np.repeat(starts, np.diff(np.r_[starts, len(u_sorted)]))
    sel = order[nth < max_per_user]
    users, codes = np.unique(user[sel], return_inverse=True)
    x = sp.csr_matrix((np.ones(len(sel), dtype=np.float32), (codes, item[sel])), shape=(len(users), n_items))
    co = (x.T @ x).tocsr()
    users_of = np.asarray(co.diagonal(), np.float64)
    co.setdiag(0)
    co.eliminate_zeros()
    ids = np.full((n_items, top), -1, dtype=np.int64)
    counts = np.zeros((n_items, top), dtype=np.float32)
    cosine = np.zeros((n_items, top), dtype=np.float32)
    indptr, indices, data = co.indptr, co.indices, co.data
    lengths = np.diff(indptr)
    if len(data) == 0:
        return ids, counts, cosine
    rows = np.repeat(np.arange(n_items, dtype=np.int64), lengths)
    # sort each row by (-count, item) and keep the first `top`: the counts are whole numbers
    # (sums of ones, exact below 2^24), so (row, -count, item) packs into one int64 key
    # where the bits allow, and one sort replaces a three-key lexsort (half of item_stats).
    most = int(data.max())
    item_bits, count_bits = max(int(n_items - 1).bit_length(), 1), max(most.bit_length(), 1)
    if 2 * item_bits + count_bits <= 63 and most < 1 << 24:
        order = np.argsort((rows << (count_bits + item_bits)) | ((most - data.astype(np.int64)) << item_bits)
                           | indices.astype(np.int64))
    else:
        order = np.lexsort((indices, -data, rows))
    nth = np.arange(len(order)) - np.repeat(indptr[:-1], lengths)
    keep = nth < top
    kept = order[keep]
    r, j = rows[kept], nth[keep]
    ids[r, j] = indices[kept]
    counts[r, j] = data[kept]
    cosine[r, j] = data[kept] / np.sqrt(np.maximum(users_of[r] * users_of[indices[kept]], 1.0))
    return ids, counts, cosine


def item_stats(events: Events, n_items: int, cutoff: float, category: np.ndarray | None = None,
               brand: np.ndarray | None = None, price: np.ndarray | None = None,
               updated_ts: np.ndarray | None = None, cooc_top: int = 100, trending_top: int = 50) -> ItemStats:
    """ItemStats from the events strictly before `cutoff` (epoch seconds)."""
    ev = events.take(events.ts < cutoff)
    order = np.argsort(ev.ts, kind="stable")
    ev = ev.take(order)
    has_item = ev.item >= 0
    item = ev.item[has_item]
    kind = ev.kind[has_item]
    ts = ev.ts[has_item]

    def count(mask):
        return np.bincount(item[mask], minlength=n_items).astype(np.float64)

    total = count(np.ones(len(item), bool))
    c7 = count(ts >= cutoff - 7 * DAY)
    c30 = count(ts >= cutoff - 30 * DAY)
    views = count((kind == TYPE_CODE["view"]) | (kind == TYPE_CODE["click"]))
    buys = count((kind == TYPE_CODE["purchase"]) | (kind == TYPE_CODE["add_to_cart"]))
    # Query click-through: engagement in sessions that had a search event.
    searched = np.unique(ev.session[(ev.kind == TYPE_CODE["search"]) & (ev.session >= 0)])
    in_search = np.isin(ev.session[has_item], searched) & (ev.session[has_item] >= 0)
    s_views = count(in_search & (kind == TYPE_CODE["view"]))
    s_engaged = count(in_search & np.isin(kind, [TYPE_CODE["click"], TYPE_CODE["add_to_cart"], TYPE_CODE["purchase"]]))
    category = np.full(n_items, -1, np.int64) if category is None else np.asarray(category, np.int64)
    brand = np.full(n_items, -1, np.int64) if brand is None else np.asarray(brand, np.int64)
    log_price = (np.full(n_items, np.nan, np.float32) if price is None
                 else np.log1p(np.where(np.asarray(price, float) > 0, price, np.nan)).astype(np.float32))
    age = (np.full(n_items, np.nan, np.float32) if updated_ts is None
           else ((cutoff - np.asarray(updated_ts, float)) / DAY).astype(np.float32))
    n_cat = int(category.max(initial=-1)) + 1
    trending = np.full((max(n_cat, 1), trending_top), -1, dtype=np.int64)
    if n_cat:
        known = np.flatnonzero((category >= 0) & (c7 > 0))
        order = np.lexsort((known, -c7[known], category[known]))
        cats = category[known][order]
        starts = np.searchsorted(cats, np.arange(n_cat))
        nth = np.arange(len(cats)) - starts[cats]
        keep = nth < trending_top
        trending[cats[keep], nth[keep]] = known[order][keep]
    cooc_items, cooc_counts, cooc_cosine = cooccurrence(ev.user[has_item], item, n_items, cooc_top)
    return ItemStats(
        pop_in_category=_popularity_in_category(ev.user[has_item], item, category, n_items, n_cat),
        category=category, brand=brand, log_price=log_price, age_days=age,
        pop_pct=_percentile(total), trend=np.log((c7 + 1.0) / (c30 / 30.0 * 7.0 + 1.0)).astype(np.float32),
        purchase_rate=(buys / (views + 5.0)).astype(np.float32),
        query_ctr=(s_engaged / (s_views + 5.0)).astype(np.float32),
        cooc_items=cooc_items, cooc_counts=cooc_counts, cooc_cosine=cooc_cosine, trending=trending,
        n_categories=n_cat, n_brands=int(brand.max(initial=-1)) + 1, cutoff=float(cutoff),
    )


def _popularity_in_category(user: np.ndarray, item: np.ndarray, category: np.ndarray, n_items: int,
                            n_categories: int) -> np.ndarray:
    """Each item's distinct users over its category's distinct (user, item) pairs."""
    out = np.zeros(n_items, np.float32)
    if not n_categories or not len(item):
        return out
    pairs = np.unique(user.astype(np.int64) * n_items + item)
    users_of = np.bincount(pairs % n_items, minlength=n_items).astype(np.float64)
    known = category >= 0
    per_category = np.bincount(category[known], weights=users_of[known], minlength=n_categories)
    out[known] = (users_of[known] / np.maximum(per_category[category[known]], 1.0)).astype(np.float32)
    return out


@dataclass
class UserBatch:
    """A batch of U users, padded arrays (-1: no item)."""

    profile: np.ndarray        # (U, d) ranking-space profile
    hist: np.ndarray           # (U, H) history positions, heaviest first
    hist_w: np.ndarray         # (U, H) their weights (0 pad)
    recent: np.ndarray         # (U, L) most recent distinct items, newest first
    type_mix: np.ndarray       # (U, len(EVENT_TYPES)) share of each event type
    seen_rows: np.ndarray      # seen pairs: row in the batch
    seen_items: np.ndarray     # and item position
    text_profile: np.ndarray | None = None   # (U, dt) mean text vector of the history
    image_profile: np.ndarray | None = None  # (U, di)
    interests: np.ndarray | None = None      # (U, N, d) interest vectors, zero rows: none
    # History co-occurrence scores, computed once per batch (`history_knn`): candidates
    # and compute_features both need them.
    _knn: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.profile)


def pad_lists(rows: np.ndarray, values: np.ndarray, n_rows: int, width: int | None = None, fill=-1) -> np.ndarray:
    """Ragged (row, value) pairs, in order within each row, as an (n_rows, width) matrix."""
    counts = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, np.int64)
    w = int(counts.max(initial=0)) if width is None else width
    out = np.full((n_rows, max(w, 1)), fill, dtype=np.asarray(values).dtype if len(values) else np.int64)
    if len(rows) == 0:
        return out
    order = np.argsort(rows, kind="stable")
    r = rows[order]
    slot = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = slot < out.shape[1]
    out[r[keep], slot[keep]] = np.asarray(values)[order][keep]
    return out


def interest_ann(search: Callable, users: UserBatch, per_interest: int, n_items: int) -> np.ndarray | None:
    """(U, N x per_interest) the first `per_interest` unseen ANN results of each of the
    users' interest vectors (`users.interests`; zero rows search nothing), interleaved
    by rank (each interest's best, then each one's second, ...), -1 pad. One
    `search(queries, k) -> (scores, positions)` call for the whole batch over an index
    of `n_items`."""
    if users.interests is None or per_interest <= 0:
        return None
    n_users, n_interests, dim = users.interests.shape
    flat = users.interests.reshape(-1, dim)
    asked = np.flatnonzero(np.abs(flat).sum(axis=1) > 0)
    out = np.full((n_users * n_interests, per_interest), -1, np.int64)
    if len(asked) == 0:
        return out.reshape(n_users, n_interests, per_interest).transpose(0, 2, 1).reshape(n_users, -1)
    seen_counts = np.bincount(users.seen_rows, minlength=n_users) if len(users.seen_rows) else np.zeros(n_users, int)
    fetch = min(int(n_items), per_interest + int(seen_counts.max(initial=0)))  # room for the seen ones
    _, found = search(np.ascontiguousarray(flat[asked], np.float32), fetch)
    found = np.asarray(found, np.int64)
    user_of = asked // n_interests
    # drop seen items (and FAISS's -1), keep the first `per_interest` of each row
    n = int(max(found.max(initial=0), users.seen_items.max(initial=0))) + 1
    keep = found >= 0
    if len(users.seen_rows):
        key = user_of[:, None] * n + np.maximum(found, 0)
        keep &= ~np.isin(key, users.seen_rows.astype(np.int64) * n + users.seen_items)
    rank = np.cumsum(keep, axis=1) - 1
    keep &= rank < per_interest
    r, c = np.nonzero(keep)
    out[asked[r], rank[r, c]] = found[r, c]
    return out.reshape(n_users, n_interests, per_interest).transpose(0, 2, 1).reshape(n_users, -1)


_ORDER_BITS = 22  # candidates' source order keys (below 2_100_000) fit in this many bits


def candidates(ann: np.ndarray, users: UserBatch, stats: ItemStats, n_cooc: int = 50, n_trend: int = 20,
               width: int | None = None, interest: np.ndarray | None = None,
               ann_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, W) candidate positions (-1 pad) and their source flags: the ANN results
    `ann` (U, A), the interest vectors' ANN results `interest` (U, B; `interest_ann`),
    the items co-occurring most with the user's recent items and the trending items
    of the user's top two categories (by history weight), unioned, seen items
    removed. ANN candidates keep their order first, then the interests'.

    `ann_limit`: each user keeps their first `ann_limit` unseen ANN results. A batch's
    search fetches rerank.candidates plus its longest seen list; without the cut a
    user's deepest candidates (and features relative to the list) would depend on who
    shares the batch."""
    n_users = users.n
    if ann_limit is not None:
        ann = first_unseen(ann, users, ann_limit)
    parts_rows, parts_items, parts_flag, parts_order = [], [], [], []

    def add(matrix: np.ndarray, flag: int, base: int):
        r, c = np.nonzero(matrix >= 0)
        parts_rows.append(r)
        parts_items.append(matrix[r, c])
        parts_flag.append(np.full(len(r), flag, np.int64))
        parts_order.append(base + c)

    add(ann, FROM_ANN, 0)
    if interest is not None:
        add(interest, FROM_INTEREST, 500_000)
    if n_cooc > 0:
        # co-occurrence with the recent items (counts), and with the whole history
        # (cosine-normalised, weighted like the profile: an item-kNN score)
        sources = [(_cooc_scores(users.recent, stats), 1_000_000, max(n_cooc // 2, 1)),
                   (history_knn(users, stats), 1_500_000, n_cooc)]
        for scores, base, count in sources:
            if scores is None:
                continue
            rows, items = _top_per_row(*scores, n_users, count)
            add(pad_lists(rows, items, n_users, count), FROM_COOC, base)
    if n_trend > 0 and stats.n_categories:
        cats = _top_categories(users, stats, 2)
        for j in range(cats.shape[1]):
            trend = np.where(cats[:, j:j + 1] >= 0, stats.trending[np.maximum(cats[:, j], 0), :n_trend], -1)
            add(trend, FROM_TREND, 2_000_000 + j * 1000)
    rows = np.concatenate(parts_rows)
    items = np.concatenate(parts_items)
    flags = np.concatenate(parts_flag)
    order_key = np.concatenate(parts_order)
    n = max(stats.n, int(items.max(initial=0)) + 1)
    key = rows.astype(np.int64) * n + items
    # Union: one entry per (user, item), flags OR-ed, the order of its first source; one
    # sort by (key, order) does it (both packed in one int64 where they fit).
    if int(key.max(initial=0)) < (1 << (62 - _ORDER_BITS)) and int(order_key.max(initial=0)) < (1 << _ORDER_BITS):
        order = np.argsort((key << _ORDER_BITS) | order_key)
    else:
        order = np.lexsort((order_key, key))
    key, flags, order_key = key[order], flags[order], order_key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    merged = np.bitwise_or.reduceat(flags, starts) if len(starts) else np.zeros(0, np.int64)
    first, uniq = order_key[starts], key[starts]
    if len(users.seen_rows) and len(uniq):  # drop seen
        keep = ~_seen(users, uniq, n)
        uniq, merged, first = uniq[keep], merged[keep], first[keep]
    u_rows = (uniq // n).astype(np.int64)
    u_items = uniq % n
    # by user, then source order (unique within a user: one item per source column)
    order = (np.argsort((u_rows << _ORDER_BITS) | first) if int(first.max(initial=0)) < (1 << _ORDER_BITS)
             else np.lexsort((first, u_rows)))
    cand = pad_lists(u_rows[order], u_items[order], n_users, width)
    flag = pad_lists(u_rows[order], merged[order], n_users, cand.shape[1], fill=0)
    return cand, flag


def first_unseen(ann: np.ndarray, users: UserBatch, limit: int) -> np.ndarray:
    """`ann` (U, A) with all but each row's first `limit` valid unseen entries set to -1."""
    keep = ann >= 0
    if len(users.seen_rows) and keep.any():
        n = int(max(ann.max(), users.seen_items.max())) + 1
        keep &= ~_seen(users, np.arange(len(ann), dtype=np.int64)[:, None] * n + np.maximum(ann, 0), n)
    keep &= np.cumsum(keep, axis=1) <= limit
    return np.where(keep, ann, -1)


def _seen(users: UserBatch, key: np.ndarray, n: int) -> np.ndarray:
    """Whether each (row * n + item) key is one of the batch's seen pairs (n above every
    seen item position)."""
    seen_key = np.unique(users.seen_rows.astype(np.int64) * n + users.seen_items)
    at = np.minimum(np.searchsorted(seen_key, key), len(seen_key) - 1)
    return seen_key[at] == key


def _top_per_row(rows: np.ndarray, items: np.ndarray, vals: np.ndarray, n_rows: int, count: int):
    """(rows, items) of a sparse triple (sorted by row) ordered by row, then value
    (descending), then item, keeping every entry that can be among a row's first
    `count`: each row's count-th largest value is found by a partition, and only the
    entries at or above it are sorted (a history's co-occurrence lists run to
    thousands of entries per user, of which tens are kept)."""
    sizes = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, np.int64)
    if len(rows) and int(sizes.max()) > count:
        slot = np.arange(len(rows)) - (np.cumsum(sizes) - sizes)[rows]
        dense = np.full((n_rows, int(sizes.max())), -np.inf)
        dense[rows, slot] = vals
        kth = np.partition(dense, -count, axis=1)[:, -count]  # -inf for rows with fewer entries
        keep = vals >= kth[rows]
        rows, items, vals = rows[keep], items[keep], vals[keep]
    order = np.lexsort((items, -vals, rows))
    return rows[order], items[order]


class _CandidateSlots:
    """The valid entries of a (U, W) candidate matrix as sorted (row, item) keys: a
    sparse (row, item, value) triple smaller than the matrix is put in place by one
    search of its keys, without sorting the triple."""

    def __init__(self, cand: np.ndarray, n: int):
        self.shape, self.n = cand.shape, n
        flat = np.flatnonzero(cand.ravel() >= 0)
        keys = (flat // cand.shape[1]).astype(np.int64) * n + cand.ravel()[flat]
        order = np.argsort(keys)
        self.keys, self.at = keys[order], flat[order]

    def scatter(self, rows: np.ndarray, items: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """(U, W) float32: each candidate's value in the triple (items distinct within a
        row), 0 where absent."""
        out = np.zeros(self.shape, np.float32)
        if len(rows) == 0 or len(self.keys) == 0:
            return out
        key = rows.astype(np.int64) * self.n + items
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        hit = self.keys[pos] == key
        out.ravel()[self.at[pos[hit]]] = vals[hit]
        return out


def history_knn(users: UserBatch, stats: ItemStats):
    """Sparse (row, item, score) item-kNN scores of the users' histories: co-occurrence
    cosines with every history item, weighted like the profile (weights summing to
    1). Cached on the batch for these stats."""
    key = id(stats)
    if key not in users._knn:
        wsum = np.maximum(np.where(users.hist >= 0, users.hist_w, 0).sum(axis=1), 1e-12)
        users._knn.clear()
        users._knn[key] = (stats, _cooc_scores(users.hist, stats, users.hist_w / wsum[:, None], stats.cooc_cosine))
    return users._knn[key][1]


def _cooc_scores(recent: np.ndarray, stats: ItemStats, weights: np.ndarray | None = None, table=None):
    """Sparse (row, item, summed co-occurrence count with the items of `recent`),
    each source item weighted by `weights` (same shape) if given; `table` the
    per-neighbour values (default the counts)."""
    r, c = np.nonzero(recent >= 0)
    if len(r) == 0:
        return None
    neigh = stats.cooc_items[recent[r, c]]          # (P, M)
    cnt = (stats.cooc_counts if table is None else table)[recent[r, c]]
    if weights is not None:
        cnt = cnt * weights[r, c][:, None]
    rows = np.repeat(r, neigh.shape[1])
    items = neigh.ravel()
    vals = cnt.ravel()
    ok = items >= 0
    rows, items, vals = rows[ok], items[ok], vals[ok]
    if len(rows) == 0:
        return None
    n = stats.n
    uniq, summed = _sums_by_key(rows.astype(np.int64) * n + items, vals, int(recent.shape[0]) * n)
    return uniq // n, uniq % n, summed


# Largest key space `_sums_by_key` gives a presence table (bytes: 5x this).
DENSE_KEYS = 1 << 24


def _sums_by_key(key: np.ndarray, vals: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys ascending, the sum of `vals` per key) for integer keys in
    [0, bound), as np.unique(return_inverse) + bincount: each key's values are summed in
    their original order either way, so the sums are identical. Where the keys are
    dense in a small enough space (a user batch's long histories, a hundred neighbours
    each), a presence table of `bound` flags finds them without a sort (3x faster at
    five keys per hundred slots)."""
    if 0 < bound <= DENSE_KEYS and len(key) * 32 >= bound:
        uniq, inverse = unique_in_range(key, bound, np.int32)
    else:
        uniq, inverse = np.unique(key, return_inverse=True)
    return uniq, np.bincount(inverse, weights=vals, minlength=len(uniq))


def _lookup(sparse, cand: np.ndarray, n: int) -> np.ndarray:
    """(U, W) values of a sparse (row, item, value) triple at the candidates (0 absent;
    items distinct within a row), the triple in (row, item) order (as `_cooc_scores`
    makes it): for a triple larger than the matrix; `_CandidateSlots` for a smaller one."""
    out = np.zeros(cand.shape, np.float32)
    if sparse is None or len(sparse[0]) == 0:
        return out
    rows, items, vals = sparse
    key = rows.astype(np.int64) * n + items  # sorted (from np.unique)
    ckey = np.arange(cand.shape[0], dtype=np.int64)[:, None] * n + np.maximum(cand, 0)
    at = np.searchsorted(key, ckey)
    hit = (at < len(key)) & (key[np.minimum(at, len(key) - 1)] == ckey) & (cand >= 0)
    out[hit] = vals[at[hit]]
    return out


def _shares(users: UserBatch, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """(U, n_codes) share of history weight per code (category, brand)."""
    out = np.zeros((users.n, max(n_codes, 1)), np.float32)
    valid = users.hist >= 0
    code = np.where(valid, codes[np.maximum(users.hist, 0)], -1)
    r, c = np.nonzero(code >= 0)
    np.add.at(out, (r, code[r, c]), users.hist_w[r, c])
    total = out.sum(axis=1, keepdims=True)
    return out / np.maximum(total, 1e-12)


def _top_categories(users: UserBatch, stats: ItemStats, top: int) -> np.ndarray:
    shares = _shares(users, stats.category, stats.n_categories)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :top]
    return np.where(np.take_along_axis(shares, order, 1) > 0, order, -1)


@dataclass
class Features:
    values: np.ndarray         # (U, W, F) float32
    names: list[str]
    reason: np.ndarray         # (U, W) history position with the largest attention weight, -1 none
    cooc_reason: np.ndarray    # (U, W) recent item co-occurring most with the candidate, -1 none
    extra: dict = field(default_factory=dict)


# Features named *_rel are divided by the user's largest absolute value of that feature
# over their candidates (max_interest_score_rel by retrieval_score's). Raw inner products
# and co-occurrence counts grow with the events behind them: the ranker learns on
# features from fewer events (its labels are the last part of training) than the rank
# pass computes them from, and tree thresholds on raw values shift between the two.
# Chosen on validation sets carved from training only (README, "bench/rerank_quality").
RETRIEVAL_SCORE = "retrieval_score_rel"


def feature_names(behaviour_dim: int, has_text: bool, has_image: bool) -> list[str]:
    names = [RETRIEVAL_SCORE, "retrieval_rank"]
    if behaviour_dim:
        names += ["behaviour_score_rel", "content_score_rel"]
    if has_text:
        names.append("text_similarity_rel")
    if has_image:
        names.append("image_similarity_rel")
    names += ["attention_similarity", "max_history_similarity", "last_item_similarity", "recent_similarity",
              "cooc_recent_rel", "cooc_last_item_rel", "cooc_history_cosine_rel", "popularity", "trend_7d_30d", "age_days", "category_share",
              "brand_share", "pop_in_category", "category_share_x_pop_in_category", "same_category_as_last", "price_vs_user", "abs_price_vs_user", "purchase_rate",
              "query_ctr", "user_purchase_share", "user_click_share", "user_history_len", "from_ann",
              "from_cooc", "from_trending", "from_interest", "max_interest_score_rel"]
    return names


def _relative(x: np.ndarray, valid: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """(U, W) `x` over each user's largest |x| among their valid candidates (or over
    `scale`, (U, 1)); 0 where the user has none."""
    if scale is None:
        scale = _best_magnitude(x, valid)
    return np.where(valid, x / np.maximum(scale, 1e-12), 0).astype(np.float32)


def _best_magnitude(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, np.abs(x), 0).max(axis=1, keepdims=True)


def compute_features(cand: np.ndarray, flags: np.ndarray, users: UserBatch, stats: ItemStats,
                     vectors: Callable[[np.ndarray], np.ndarray], behaviour_dim: int = 0,
                     text: Callable[[np.ndarray], np.ndarray] | None = None,
                     image: Callable[[np.ndarray], np.ndarray] | None = None,
                     temperature: float = 0.1) -> Features:
    """Features of every (user, candidate) of `cand` (U, W).

    The list is the same whatever `profiles.interests` is: `from_interest` (the
    FROM_INTEREST flag) and `max_interest_score_rel` (the candidate's largest inner
    product with the user's interest vectors) are always there; without interest
    vectors (`users.interests` None, profiles.interests 1) the first is 0 and the
    second equals retrieval_score_rel, the profile being the one interest. Both come
    last, so every other column keeps its place. Models saved before these two existed,
    or before the *_rel features, fail apply's feature-name check (retrain).

    The *_rel features depend on the user's whole candidate list (its best value):
    compute them over the list the rank pass scores, not over a few of its items."""
    n_users, width = cand.shape
    valid = cand >= 0
    pos = np.maximum(cand, 0)
    cvec = np.asarray(vectors(pos.ravel()), np.float32).reshape(n_users, width, -1)
    profile = users.profile.astype(np.float32)
    cols: list[np.ndarray] = []
    score = np.einsum("uwd,ud->uw", cvec, profile)
    score = np.where(valid, score, -np.inf)
    rank = np.empty_like(score)
    order = np.argsort(-score, axis=1, kind="stable")
    np.put_along_axis(rank, order, np.arange(width, dtype=np.float32)[None, :].repeat(n_users, 0), 1)
    score = np.where(valid, score, 0)
    score_scale = _best_magnitude(score, valid)
    cols += [_relative(score, valid, score_scale), rank]
    if behaviour_dim:
        cols.append(_relative(np.einsum("uwd,ud->uw", cvec[..., :behaviour_dim], profile[:, :behaviour_dim]), valid))
        cols.append(_relative(np.einsum("uwd,ud->uw", cvec[..., behaviour_dim:], profile[:, behaviour_dim:]), valid))
    for fn, prof in ((text, users.text_profile), (image, users.image_profile)):
        if fn is not None:
            m = fn(pos.ravel()).reshape(n_users, width, -1).astype(np.float32)
            cols.append(_relative(np.einsum("uwd,ud->uw", m, prof.astype(np.float32)), valid))

    # Target attention: cosine of the candidate to each history item, softmax-weighted
    # by the history weights (the DIN idea without training).
    unit = cvec / np.maximum(np.linalg.norm(cvec, axis=2, keepdims=True), 1e-12)

    def unit_vectors(matrix):
        v = np.array(vectors(np.maximum(matrix, 0).ravel()), np.float32).reshape(matrix.shape[0], matrix.shape[1], -1)
        v /= np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
        return np.where((matrix >= 0)[..., None], v, 0)

    # Histories are padded to rerank.history: the (U, H, W) arrays below, the features'
    # largest, stop at the batch's last history column that holds an item. They are
    # laid out history-major, so each reduction over the history adds whole rows of W.
    filled = np.flatnonzero((users.hist >= 0).any(axis=0))
    hist = users.hist[:, :int(filled[-1]) + 1 if len(filled) else 1]
    hist_w = users.hist_w[:, :hist.shape[1]]
    hvec = unit_vectors(hist)
    unit_t = unit.transpose(0, 2, 1)
    sim = np.matmul(hvec, unit_t)                                          # (U, H, W)
    hvalid = (hist >= 0)[:, :, None]
    # log weight -inf on padding: its logits are -inf without a masking pass
    logw = np.where(hist >= 0, np.log(np.maximum(hist_w, 1e-12)), -np.inf)[:, :, None]
    # In place where a (U, H, W) temporary would be made; padding's sim is 0 (zero
    # vectors), so att * sim needs no mask. attention = sum(att * sim) / sum(att).
    logits = sim / temperature
    logits += logw
    top = logits.max(axis=1, keepdims=True)
    att = np.subtract(logits, np.where(np.isfinite(top), top, 0))
    np.exp(att, out=att)
    att_total = np.maximum(att.sum(axis=1), 1e-12)
    any_hist = hvalid.any(axis=1)
    att *= sim
    cols.append(np.where(any_hist, att.sum(axis=1) / att_total, 0))
    cols.append(np.where(any_hist, np.max(sim, axis=1, where=hvalid, initial=-1), 0))
    reason = np.where(any_hist & valid, np.take_along_axis(hist, logits.argmax(axis=1), 1), -1)

    rvec = unit_vectors(users.recent)
    rsim = np.matmul(rvec, unit_t)                                         # (U, L, W)
    rvalid = (users.recent >= 0)[:, :, None]
    cols.append(np.where(rvalid[:, 0], rsim[:, 0], 0))
    cols.append(np.where(rvalid, rsim, 0).sum(axis=1) / np.maximum(rvalid.sum(axis=1), 1))

    # Co-occurrence of the candidate with the recent items (from the top-M lists).
    cooc_sum = np.zeros((n_users, width), np.float32)
    cooc_last = np.zeros((n_users, width), np.float32)
    cooc_best = np.zeros((n_users, width), np.float32)
    cooc_reason = np.full((n_users, width), -1, np.int64)
    slots = _CandidateSlots(cand, max(stats.n, int(cand.max(initial=0)) + 1))
    for j in range(users.recent.shape[1]):
        rec = users.recent[:, j]
        if not (rec >= 0).any():
            continue
        neigh = stats.cooc_items[np.maximum(rec, 0)]                       # (U, M), distinct per row
        listed = (rec >= 0)[:, None] & (neigh >= 0)
        rows = np.nonzero(listed)[0]
        # the count of each candidate in its user's list: a sorted-key lookup, not a (U, W, M) match
        c = slots.scatter(rows, neigh[listed], stats.cooc_counts[np.maximum(rec, 0)][listed])
        cooc_sum += c
        if j == 0:
            cooc_last = c
        better = c > cooc_best
        cooc_best = np.where(better, c, cooc_best)
        cooc_reason = np.where(better, rec[:, None], cooc_reason)
    knn = _lookup(history_knn(users, stats), cand, stats.n)
    cols += [_relative(cooc_sum, valid), _relative(cooc_last, valid), _relative(knn, valid)]

    cols += [stats.pop_pct[pos], stats.trend[pos], np.nan_to_num(np.log1p(np.maximum(stats.age_days[pos], 0)), nan=-1)]
    cat_share = _shares(users, stats.category, stats.n_categories)
    cat = stats.category[pos]
    user_cat_share = np.where(cat >= 0, np.take_along_axis(cat_share, np.maximum(cat, 0), 1), 0)
    cols.append(user_cat_share)
    brand_share = _shares(users, stats.brand, stats.n_brands)
    brand = stats.brand[pos]
    cols.append(np.where(brand >= 0, np.take_along_axis(brand_share, np.maximum(brand, 0), 1), 0))
    pop_in_cat = stats.pop_in_category[pos]
    cols += [pop_in_cat, user_cat_share * pop_in_cat]
    last_cat = np.where(users.recent[:, 0] >= 0, stats.category[np.maximum(users.recent[:, 0], 0)], -1)
    cols.append(((cat == last_cat[:, None]) & (cat >= 0)).astype(np.float32))

    # Price against the user's band (weighted mean and spread of the history's log prices).
    hp = np.where(users.hist >= 0, stats.log_price[np.maximum(users.hist, 0)], np.nan)
    w = np.where(np.isnan(hp), 0, users.hist_w)
    wsum = w.sum(axis=1)
    mean = np.where(wsum > 0, np.nansum(np.nan_to_num(hp) * w, axis=1) / np.maximum(wsum, 1e-12), np.nan)
    var = np.where(wsum > 0, np.nansum(np.nan_to_num(hp - mean[:, None]) ** 2 * w, axis=1) / np.maximum(wsum, 1e-12), np.nan)
    z = (stats.log_price[pos] - mean[:, None]) / (np.sqrt(var)[:, None] + 0.1)
    z = np.nan_to_num(z, nan=0.0)
    cols += [z, np.abs(z), stats.purchase_rate[pos], stats.query_ctr[pos]]
    mix = users.type_mix
    cols += [np.repeat(mix[:, [TYPE_CODE["purchase"]]] + mix[:, [TYPE_CODE["add_to_cart"]]], width, 1),
             np.repeat(mix[:, [TYPE_CODE["click"]]], width, 1),
             np.repeat(np.log1p((users.hist >= 0).sum(axis=1, keepdims=True)).astype(np.float32), width, 1)]
    cols += [(flags & FROM_ANN > 0), (flags & FROM_COOC > 0), (flags & FROM_TREND > 0), (flags & FROM_INTEREST > 0)]
    cols.append(cols[0] if users.interests is None
                else _relative(_max_interest_score(cvec, users.interests.astype(np.float32)), valid, score_scale))
    values = np.stack([np.asarray(c, np.float32) for c in cols], axis=2)
    values[~valid] = 0
    names = feature_names(behaviour_dim, text is not None, image is not None)
    if values.shape[2] != len(names):
        raise AssertionError(f"{values.shape[2]} feature columns for {len(names)} names")
    return Features(values, names, reason, np.where(valid, cooc_reason, -1))


def _max_interest_score(cvec: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """(U, W) largest inner product of each candidate with the user's interest vectors
    (zero rows are no interest; 0 for a user without any)."""
    scores = np.einsum("uwd,und->uwn", cvec, interests)
    present = (np.abs(interests).sum(axis=2) > 0)[:, None, :]
    best = np.where(present, scores, -np.inf).max(axis=2)
    return np.where(np.isfinite(best), best, 0)


def _rows_of(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each value in `keys` (-1 where absent)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    at = np.searchsorted(sk, values)
    hit = (at < len(sk)) & (sk[np.minimum(at, len(sk) - 1)] == values)
    return np.where(hit, order[np.minimum(at, len(sk) - 1)], -1).astype(np.int64)


class EventsByUser:
    """Events grouped by user, each user's events in their original order, so that a
    batch of users takes its own rows instead of scanning every event (the training
    loop builds hundreds of batches from millions of events)."""

    def __init__(self, events: Events):
        self.events = events.take(np.argsort(events.user, kind="stable"))
        self.users, self.starts, self.counts = np.unique(self.events.user, return_index=True, return_counts=True)

    def of(self, users: np.ndarray) -> Events:
        """The events of `users` (codes), user by user in that order."""
        if len(self.users) == 0:
            return self.events
        at = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        found = self.users[at] == users
        starts, counts = self.starts[at[found]], self.counts[at[found]]
        rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        return self.events.take(rows)


def user_batch_from_events(events: Events | EventsByUser, users: np.ndarray, profile: np.ndarray, weights_fn,
                           max_history: int = 50, recent: int = 5,
                           text_vectors: np.ndarray | None = None) -> UserBatch:
    """A UserBatch for `users` (codes) from their events (the bench and tests; the
    rank pass builds the same arrays from user_profiles columns). `weights_fn(events)
    -> per-event weight` as the profile uses. `events` grouped (EventsByUser): the same
    batch, faster."""
    if isinstance(events, EventsByUser):
        events = events.of(np.asarray(users, np.int64))
    all_rows = _rows_of(events.user, np.asarray(users, np.int64))
    row = all_rows
    ev = events.take((row >= 0) & (events.item >= 0))
    row = row[(row >= 0) & (events.item >= 0)]
    n = len(users)
    w = weights_fn(ev)
    # history: (user, item) summed weights, heaviest first, ties by item
    key = row * (int(ev.item.max(initial=0)) + 1) + ev.item
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=w)
    h_rows = uniq // (int(ev.item.max(initial=0)) + 1)
    h_items = uniq % (int(ev.item.max(initial=0)) + 1)
    keep = summed > 0
    h_rows, h_items, summed = h_rows[keep], h_items[keep], summed[keep]
    order = np.lexsort((h_items, -summed, h_rows))
    hist = pad_lists(h_rows[order], h_items[order], n, max_history)
    hist_w = pad_lists(h_rows[order], summed[order].astype(np.float32), n, max_history, fill=0.0)
    # recent distinct items, newest first
    order = np.lexsort((-ev.item, -ev.ts, row))
    r_rows, r_items = row[order], ev.item[order]
    k2 = r_rows * (int(ev.item.max(initial=0)) + 1) + r_items
    _, first = np.unique(k2, return_index=True)
    first = np.sort(first)
    rec = pad_lists(r_rows[first], r_items[first], n, recent)
    ok = all_rows >= 0
    mix = np.zeros((n, len(EVENT_TYPES)), np.float32)
    np.add.at(mix, (all_rows[ok], events.kind[ok].astype(np.int64)), 1.0)
    mix /= np.maximum(mix.sum(axis=1, keepdims=True), 1)
    text_profile = None
    if text_vectors is not None:
        tv = text_vectors[np.maximum(hist, 0)] * (hist >= 0)[..., None] * hist_w[..., None]
        text_profile = tv.sum(axis=1)
        text_profile /= np.maximum(np.linalg.norm(text_profile, axis=1, keepdims=True), 1e-12)
    seen_key = np.unique(row * (int(ev.item.max(initial=0)) + 1) + ev.item)
    m = int(ev.item.max(initial=0)) + 1
    return UserBatch(profile=profile, hist=hist, hist_w=hist_w, recent=rec, type_mix=mix,
                     seen_rows=seen_key // m, seen_items=seen_key % m, text_profile=text_profile)
