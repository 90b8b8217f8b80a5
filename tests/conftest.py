"""Shared fixtures: the three real models and llama.cpp's test files (fetched once into the user
cache), and oracle detection."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# One OpenBLAS thread unless the caller says otherwise: the suite runs live servers, subprocesses
# and llama.cpp on two cores, and OpenBLAS's spinning threads slow everything several-fold when
# the cores are oversubscribed. Results do not depend on it (tests check 1 vs 2 threads
# explicitly in subprocesses). Set before anything imports NumPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

from engine.gguf.fetch import llama_cpp_models_dir, model_path

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_oracle = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="llama_cpp is not importable")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return model_path("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return model_path("gemma3")


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    return model_path("qwen2.5-coder")


@pytest.fixture(scope="session")
def llama_cpp_models() -> Path:
    """llama.cpp's `models/` test directory (vocab suites, chat templates), from its sdist."""
    return llama_cpp_models_dir()
