"""The tuned text encoder: deterministic contrastive tuning into a safetensors folder,
and models.text.use_tuned resolving to the accepted one (changing model_version)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusionrank.core.catalog import layout
from fusionrank.core.errors import ModelError
from fusionrank.vectors import spec as model_spec
from fusionrank.vectors.encoders import TextEncoder, default_text_model_path, folder_digest, text_model_path
from fusionrank.vectors.tune_text import TuneParams, tune_text_encoder
from tests.conftest import make_settings

PAIRS = [("crimson long dress", "Velora Flowy Red Maxi Dress. Women > Dresses > Maxi"),
         ("trainers", "Apexa Pro Blue Sneakers. Women > Shoes > Sneakers"),
         ("coffee cup", "Hearthly Cozy White Mug. Home > Kitchen > Mugs"),
         ("rucksack", "Trailhawk Compact Green Backpack. Sports > Outdoor > Backpacks")] * 2


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    params = TuneParams(epochs=2, max_steps=3, batch_size=4, freeze_layers=4, lr=2e-4, seed=1)
    a = tune_text_encoder(default_text_model_path(), out / "a", PAIRS, None, params)
    b = tune_text_encoder(default_text_model_path(), out / "b", PAIRS, None, params)
    return out, a, b


def test_tuning_is_deterministic_and_moves_the_pairs_closer(tuned):
    out, a, b = tuned
    assert a["steps"] == 3 and (out / "a" / "model.safetensors").exists()
    assert folder_digest(out / "a") == folder_digest(out / "b")  # same seed, same bytes
    queries, docs = [p[0] for p in PAIRS[:4]], [p[1] for p in PAIRS[:4]]

    def margin(path):
        enc = TextEncoder(path, "cpu", "float32")
        sims = enc.encode(queries) @ enc.encode(docs).T
        return float(np.mean(np.diag(sims)) - np.mean(sims[~np.eye(4, dtype=bool)]))

    assert margin(out / "a") > margin(default_text_model_path())


def test_use_tuned_follows_the_accepted_verdict(tuned, tmp_path):
    out, _, _ = tuned
    settings = make_settings(tmp_path, models={"text": {"use_tuned": True}})
    base = default_text_model_path()
    assert text_model_path(settings) == base  # nothing tuned yet
    pointer = Path(layout(settings).tuned_text_pointer())  # a local URI here
    pointer.parent.mkdir(parents=True)
    verdict = {"path": str(out / "a"), "digest": folder_digest(out / "a"), "accepted": True}
    pointer.write_text(json.dumps(verdict))
    assert text_model_path(settings) == out / "a" and text_model_path(settings, tuned=False) == base
    before = model_spec.resolve(make_settings(tmp_path)).version
    assert model_spec.resolve(settings).version != before  # the next encode re-embeds
    pointer.write_text(json.dumps({**verdict, "accepted": False}))
    assert text_model_path(settings) == base  # rejected: the base stays
    pointer.write_text(json.dumps({**verdict, "digest": "0" * 64}))
    with pytest.raises(ModelError, match="changed since it was accepted"):
        text_model_path(settings)
