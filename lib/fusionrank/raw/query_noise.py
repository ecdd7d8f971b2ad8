"""Realistic query noise for the synthetic shop (raw.synth).

Real shoppers do not type the catalog's words. With `generate(query_noise=rate)`,
that share of search sessions rewrites the clean query (``red maxi dress``,
``velora maxi dress``) into one of these kinds, recorded per query in
``query_kinds.json`` so evaluation can split clean from noisy queries:

``synonym``
    The product noun and/or the colour replaced by a word no title or
    description of the shop contains (`NOUN_SYNONYMS`, `COLOUR_SYNONYMS`):
    ``crimson long dress`` for ``red maxi dress``, ``trainers`` for ``sneakers``,
    ``trail running shoe`` for ``running shoes``. Only a model that knows the
    language (or the shop's own query -> click pairs) can match these.
``typo``
    One word of four letters or more misspelt by one keyboard slip (a dropped,
    doubled or swapped letter, or a neighbouring key: `KEYBOARD_NEIGHBOURS`).
``brand_typo``
    A brand query whose brand is misspelt (the same slips).
``word_order``
    The same words, shuffled (``dress maxi red``).
``attribute``
    Attributes without the product noun: ``red velora``, ``red linen``.

The engaged items of a noisy session are the same as its clean query's would be
(the user wanted the same thing). Noise draws from its own random stream
(seeded by (seed, 2, user)), so `query_noise=0` leaves every file byte-identical
to a shop generated without it.
"""

from __future__ import annotations

import numpy as np

NOISE_KINDS = ("synonym", "typo", "brand_typo", "word_order", "attribute")
CLEAN = "clean"
# Relative frequency of each noise kind among the noisy queries.
NOISE_KIND_WEIGHTS = np.array([0.35, 0.25, 0.1, 0.15, 0.15])

# Product nouns (raw.synth.TAXONOMY) -> what shoppers also call them; no phrase here
# occurs in any title or description the generator writes (tests check it).
NOUN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "maxi dress": ("long dress", "floor length gown", "ankle length frock"),
    "mini dress": ("short dress", "cocktail frock", "party frock"),
    "blouse": ("womens top", "ladies tunic", "chiffon top"),
    "heels": ("pumps", "stilettos", "high shoes"),
    "sneakers": ("trainers", "kicks", "canvas shoes"),
    "handbag": ("purse", "tote", "shoulder bag"),
    "casual shirt": ("button up", "flannel top", "weekend tee"),
    "dress shirt": ("office shirt", "business shirt", "work shirt"),
    "running shoes": ("trail running shoe", "jogging trainers", "runners"),
    "boots": ("chelsea booties", "hiking footwear", "ankle booties"),
    "jacket": ("coat", "windbreaker", "parka"),
    "mug": ("coffee cup", "tea cup", "beaker"),
    "teapot": ("tea kettle", "infuser pot", "brewing pot"),
    "cushion": ("throw pillow", "sofa pillow", "bolster"),
    "vase": ("flower jar", "flower vessel", "bud jar"),
    "blanket": ("throw", "duvet", "bedspread"),
    "headphones": ("earphones", "headset", "earbuds"),
    "speaker": ("soundbar", "boombox", "bluetooth box"),
    "phone case": ("iphone cover", "phone cover", "mobile sleeve"),
    "keyboard": ("typing board", "keypad", "mechanical keys"),
    "yoga mat": ("exercise mat", "pilates mat", "workout mat"),
    "dumbbells": ("hand weights", "free weights", "kettlebells"),
    "backpack": ("rucksack", "daypack", "school bag"),
    "bike helmet": ("cycling helmet", "bicycle headgear", "cycle lid"),
}

# Colours (raw.synth.COLOURS) -> names shoppers use that no title contains.
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "burgundy"),
    "blue": ("cobalt", "azure", "sky"),
    "green": ("olive", "emerald", "sage"),
    "black": ("ebony", "jet", "onyx"),
    "white": ("ivory", "cream", "snow"),
    "yellow": ("mustard", "lemon", "golden"),
    "pink": ("blush", "salmon", "fuchsia"),
    "purple": ("violet", "lilac", "plum"),
    "orange": ("tangerine", "coral", "amber"),
    "grey": ("gray", "charcoal", "slate"),
    "brown": ("tan", "chocolate", "camel"),
    "navy": ("midnight", "indigo", "marine"),
}

# A QWERTY key's neighbours, for "wrong key" typos.
KEYBOARD_NEIGHBOURS: dict[str, str] = {
    "q": "wa", "w": "qes", "e": "wrd", "r": "etf", "t": "ryg", "y": "tuh", "u": "yij", "i": "uok", "o": "ipl",
    "p": "ol", "a": "qsz", "s": "adw", "d": "sfe", "f": "dgr", "g": "fht", "h": "gjy", "j": "hku", "k": "jli",
    "l": "kop", "z": "asx", "x": "zcs", "c": "xvd", "v": "cbf", "b": "vng", "n": "bmh", "m": "nj",
}


def misspell(rng: np.random.Generator, word: str) -> str:
    """`word` with one keyboard slip; words under four letters come back unchanged."""
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))  # keep the first letter, as people mostly do
    slip = int(rng.integers(0, 4))
    if slip == 0:
        out = word[:i] + word[i + 1:]
    elif slip == 1:
        out = word[:i] + word[i] + word[i:]
    elif slip == 2:
        out = word[:i] + word[i + 1] + word[i] + word[i + 2:] if word[i] != word[i + 1] else word[:i] + word[i + 1:]
    else:
        near = KEYBOARD_NEIGHBOURS.get(word[i], "")
        out = word[:i] + near[int(rng.integers(0, len(near)))] + word[i + 1:] if near else word[:i] + word[i + 1:]
    return out if out != word else word[:i] + word[i + 1:]


def noisy_query(rng: np.random.Generator, colour: str | None, brand: str | None, noun: str,
                material: str | None = None) -> tuple[str, str]:
    """(query, kind) for a clean query made of `colour`, `brand` (lower case) and `noun`."""
    kind = NOISE_KINDS[int(rng.choice(len(NOISE_KINDS), p=NOISE_KIND_WEIGHTS / NOISE_KIND_WEIGHTS.sum()))]
    if kind == "brand_typo" and brand is None:
        kind = "typo"
    if kind == "attribute" and colour is None and brand is None:
        kind = "synonym"
    parts = [p for p in (colour, brand, noun) if p]
    if kind == "synonym":
        synonyms = NOUN_SYNONYMS[noun]
        new_noun = synonyms[int(rng.integers(0, len(synonyms)))]
        new_colour = colour
        if colour is not None and rng.random() < 0.6:
            options = COLOUR_SYNONYMS[colour]
            new_colour = options[int(rng.integers(0, len(options)))]
        return " ".join(p for p in (new_colour, brand, new_noun) if p), kind
    if kind == "typo":
        words = " ".join(parts).split()
        long_words = [j for j, w in enumerate(words) if len(w) >= 4] or list(range(len(words)))
        j = long_words[int(rng.integers(0, len(long_words)))]
        words[j] = misspell(rng, words[j])
        return " ".join(words), kind
    if kind == "brand_typo":
        brand_words = brand.split()
        j = max(range(len(brand_words)), key=lambda k: len(brand_words[k]))
        brand_words[j] = misspell(rng, brand_words[j])
        return " ".join(p for p in (colour, " ".join(brand_words), noun) if p), kind
    if kind == "word_order":
        words = " ".join(parts).split()
        if len(words) < 2:
            return " ".join(words), CLEAN
        for _ in range(5):
            shuffled = [words[k] for k in rng.permutation(len(words))]
            if shuffled != words:
                return " ".join(shuffled), kind
        return " ".join(words[::-1]), kind
    # attribute: what it should look like, not what it is
    attributes = [p for p in (colour, brand) if p]
    if len(attributes) == 1 and material:
        attributes.append(material)
    return " ".join(attributes), kind
