"""Model weights load from safetensors only: pickled weights can run code."""

from __future__ import annotations

import shutil

import pytest
import torch

from fusionrank.vectors.encoders import ModelError, TextEncoder, default_text_model_path, text_model_path
from tests.conftest import make_settings


def pickled_copy(tmp_path):
    """The default text model's folder with its weights as pytorch_model.bin."""
    source = default_text_model_path()
    folder = tmp_path / "pickled-model"
    folder.mkdir()
    for file in source.iterdir():
        if file.is_file() and file.suffix != ".safetensors":
            shutil.copy(file, folder / file.name)
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2)}, folder / "pytorch_model.bin")
    return folder


def test_default_model_has_safetensors(tmp_path):
    path = text_model_path(make_settings(tmp_path))
    assert list(path.glob("*.safetensors"))


def test_pickled_weights_are_refused_with_a_clear_error(tmp_path):
    folder = pickled_copy(tmp_path)
    settings = make_settings(tmp_path, models={"text": {"path": str(folder)}})
    with pytest.raises(ModelError) as info:
        text_model_path(settings)
    message = str(info.value)
    assert f"models.text.path: {folder} has no *.safetensors weights" in message
    assert "['pytorch_model.bin']" in message and "safe_serialization=True" in message
    with pytest.raises(ModelError, match="has no \\*.safetensors weights"):
        TextEncoder(folder)
