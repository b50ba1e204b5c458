"""Worker-side fixtures: the tiny model on disk and a warm backend over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model (safetensors + tokenizer), built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
