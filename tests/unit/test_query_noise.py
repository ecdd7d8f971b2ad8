"""Noisy queries in the synthetic shop: the kinds are recorded, synonyms are words
no title or description holds, typos stay close, and noise 0 changes nothing."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from fusionrank.raw.query_noise import COLOUR_SYNONYMS, NOISE_KINDS, NOUN_SYNONYMS, misspell
from fusionrank.raw.synth import COLOUR_NAMES, MANIFEST_FILE, QUERY_KINDS_FILE, TAXONOMY, generate


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def noisy_shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy")
    generate(out, items=600, users=400, days=30, seed=3, images="none", query_noise=0.5)
    return out


def test_vocabulary_covers_the_taxonomy():
    assert set(NOUN_SYNONYMS) == {leaf.noun for leaf in TAXONOMY}
    assert set(COLOUR_SYNONYMS) == set(COLOUR_NAMES)


def test_synonyms_occur_in_no_title_or_description(noisy_shop):
    text = " ".join(r["title"].lower() + " " + r["description"].lower() for r in _jsonl(noisy_shop / "catalog.jsonl"))
    for phrase in [p for ps in NOUN_SYNONYMS.values() for p in ps] + [p for ps in COLOUR_SYNONYMS.values() for p in ps]:
        assert not re.search(rf"\b{re.escape(phrase)}\b", text), phrase


def test_every_query_has_a_kind_at_the_configured_rate(noisy_shop):
    kinds = json.loads((noisy_shop / QUERY_KINDS_FILE).read_text())
    searches = [e["query"] for e in _jsonl(noisy_shop / "events.jsonl") if e["event_type"] == "search"]
    assert set(searches) == set(kinds)
    per_search = Counter(kinds[q] for q in searches)
    assert set(per_search) <= {"clean", *NOISE_KINDS} and set(NOISE_KINDS) <= set(per_search)
    noisy = sum(v for k, v in per_search.items() if k != "clean") / len(searches)
    assert 0.4 < noisy < 0.6
    manifest = json.loads((noisy_shop / MANIFEST_FILE).read_text())
    assert manifest["params"]["query_noise"] == 0.5
    assert sum(manifest["queries_by_kind"].values()) == len(kinds)


def test_typos_are_one_slip_away():
    rng = np.random.default_rng(0)
    for word in ("velora", "sneakers", "backpack", "headphones"):
        for _ in range(50):
            typo = misspell(rng, word)
            assert typo != word and typo[0] == word[0] and abs(len(typo) - len(word)) <= 1
    assert misspell(rng, "mug") == "mug"


def test_no_noise_leaves_the_shop_unchanged(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, items=200, users=100, days=10, seed=1, images="none")
    generate(b, items=200, users=100, days=10, seed=1, images="none", query_noise=0.0)
    assert (a / "events.jsonl").read_bytes() == (b / "events.jsonl").read_bytes()
    assert not (b / QUERY_KINDS_FILE).exists()
    with pytest.raises(ValueError, match="query_noise"):
        generate(tmp_path / "c", items=10, users=10, days=2, query_noise=1.5)
