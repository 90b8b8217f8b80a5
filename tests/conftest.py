"""Shared fixtures: the two real models (fetched once into the user cache) and oracle detection."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.fetch import model_path

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_oracle = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama_cpp is not importable")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return model_path("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return model_path("gemma3")
