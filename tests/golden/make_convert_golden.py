"""Golden data for engine/gguf/convert: what llama.cpp's convert_hf_to_gguf.py writes.

Runs the converter of llama-cpp-python 0.3.36's sdist (`vendor/llama.cpp/`, with its gguf-py;
it imports torch, so it runs in a separate venv, `$CONVERTER_PYTHON`, default
/work/torchvenv/bin/python) with `--outtype f16` on the real all-MiniLM-L6-v2 directory and on
the tiny llama / qwen2 / qwen3 / gemma3 directories of tests/tiny_hf.py, and records for each
tensor its type, shape and the sha256 of its data, plus the metadata that inference reads
(`summarize`). Writes tests/golden/convert_golden.json.

    .venv/bin/python -m tests.golden.make_convert_golden
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

from engine.gguf.fetch import LLAMA_CPP_SDIST, cache_dir, directory_path, sha256_file
from tests.tiny_hf import ARCHS, write_tiny_hf

GOLDEN = Path(__file__).with_name("convert_golden.json")
# the committed record, by case (read when present, so a first run can make it)
CASES = json.loads(GOLDEN.read_text())["cases"] if GOLDEN.exists() else {}
CONVERTER_PYTHON = Path(os.environ.get("CONVERTER_PYTHON", "/work/torchvenv/bin/python"))
_VENDOR = "vendor/llama.cpp/"
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
# Metadata keys that name or describe the model without changing inference.
_DESCRIPTIVE = ("general.name", "general.size_label", "general.organization", "general.license",
                "general.tags", "general.languages", "general.dataset", "general.basename",
                "general.finetune", "general.version", "general.base_model")  # fmt: skip
# bert: llama.cpp names its pre-tokenizer from a hash of sample encodings (jina-v2-en for
# MiniLM); its WordPiece tokenizer does not read the name, and Ollama writes "default".
_IGNORED = {"bert": ("tokenizer.ggml.pre",)}


def converter_dir() -> Path:
    """convert_hf_to_gguf.py with its conversion/ package and gguf-py, from the pinned sdist."""
    target = cache_dir() / "llama-cpp-python-0.3.36-convert"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "-q", "-d", tmp, LLAMA_CPP_SDIST], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        out = Path(tmp) / "convert"
        with tarfile.open(sdist) as tar:
            for member in tar:
                rest = member.name.partition("/")[2]
                if not member.isfile() or not rest.startswith(_VENDOR) or ".." in rest:
                    continue
                relative = rest[len(_VENDOR) :]
                if relative.startswith(_CONVERTER_FILES):
                    dest = out / relative
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    dest.write_bytes(src.read())
        os.replace(out, target)
    return target


def run_converter(directory: Path, out: Path) -> None:
    root = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(root / "gguf-py")}
    cmd = [str(CONVERTER_PYTHON), str(root / "convert_hf_to_gguf.py"), str(directory)]
    cmd += ["--outtype", "f16", "--outfile", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def _value(field: Any) -> Any:
    value = field.contents()
    if isinstance(value, list) and len(value) > 16:  # vocabularies: a digest of the list
        return "sha256:" + hashlib.sha256(json.dumps(value).encode()).hexdigest()
    return value


def summarize(path: Path) -> dict[str, Any]:
    """Per tensor [type, shape (GGUF order), sha256 of data]; metadata inference reads."""
    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    ignored = _IGNORED.get(arch, ())
    metadata = {
        key: _value(field)
        for key, field in reader.fields.items()
        if not key.startswith(("GGUF.", *_DESCRIPTIVE)) and key not in ignored
    }
    tensors = {
        t.name: [
            t.tensor_type.name,
            [int(n) for n in t.shape],
            hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest(),
        ]
        for t in reader.tensors
    }
    return {"metadata": metadata, "tensors": tensors}


def sources(root: Path) -> dict[str, Path]:
    """The five converted directories by case name: minilm and the tiny ones."""
    out = {"minilm": directory_path("minilm")}
    for arch in ARCHS:
        out[arch] = write_tiny_hf(root / arch, arch)
    return out


def main() -> None:
    record: dict[str, Any] = {
        "converter": {
            "sdist": LLAMA_CPP_SDIST,
            "convert_hf_to_gguf.py sha256": sha256_file(converter_dir() / "convert_hf_to_gguf.py"),
            "command": "convert_hf_to_gguf.py DIR --outtype f16",
        },
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for case, directory in sources(Path(tmp)).items():
            out = Path(tmp) / f"{case}.gguf"
            run_converter(directory, out)
            record["cases"][case] = summarize(out)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")


if __name__ == "__main__":
    main()
