"""A Hugging Face model directory: its config and its Safetensors tensors as NumPy arrays."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
from safetensors import SafetensorError

from engine.errors import EngineError


class ConvertError(EngineError):
    """The directory cannot be converted: a file is missing or malformed, or shapes disagree."""


# Safetensors dtype -> how its bytes read in NumPy; BF16 is widened to F32 on read. Integer
# tensors (position-id buffers) are read so they can be skipped; none is converted.
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
           "U8": np.uint8}  # fmt: skip
FLOAT_DTYPES = ("F32", "F16", "F64", "BF16")


@dataclass(frozen=True)
class RawTensor:
    """One tensor as stored: its Safetensors dtype name, shape and data bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def array(self) -> np.ndarray:
        """The values, F16 and F32 as stored, BF16 and F64 widened or narrowed to F32."""
        raw = np.frombuffer(self.data, dtype=_DTYPES[self.dtype]).reshape(self.shape)
        if self.dtype == "BF16":  # bf16 is the top half of an f32
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if self.dtype == "F64":
            return raw.astype(np.float32)
        return raw


def read_json(path: Path, required: bool = True, kind: type = dict) -> Any:
    """The JSON value of `path` (an object unless `kind` says otherwise), None if absent."""
    if not path.is_file():
        if required:
            raise ConvertError(f"{path.name} is missing from the model directory")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(value, kind):
        raise ConvertError(f"{path.name} must hold a JSON {kind.__name__}")
    return value


def read_config(directory: Path) -> dict[str, Any]:
    """config.json, with a multimodal `text_config` lifted to the top level as llama.cpp does."""
    config = read_json(directory / "config.json")
    assert config is not None
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    return config


def read_tensors(directory: Path) -> dict[str, RawTensor]:
    """Every tensor of the directory's `*.safetensors` files, by name (files in name order,
    tensors sorted by name within each, so the GGUF written is the same bytes every time).

    The safetensors package parses each file (header, offsets, coverage), so a truncated or
    malformed file fails here with its own message.
    """
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConvertError("no .safetensors files in the model directory")
    tensors: dict[str, RawTensor] = {}
    for path in files:
        try:
            entries = safetensors.deserialize(path.read_bytes())
        except SafetensorError as e:
            raise ConvertError(f"{path.name} is not a valid safetensors file: {e}") from None
        for name, entry in sorted(entries, key=lambda e: e[0]):  # deserialize's order varies
            if entry["dtype"] not in _DTYPES:
                raise ConvertError(f"tensor {name!r} has unsupported dtype {entry['dtype']}")
            if name in tensors:
                raise ConvertError(f"tensor {name!r} appears in more than one file")
            tensors[name] = RawTensor(entry["dtype"], tuple(entry["shape"]), bytes(entry["data"]))
    return tensors
