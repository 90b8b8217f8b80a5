"""Check a directory against its config, then write the GGUF (tensor types as llama.cpp's f16).

Every family (decoder.py, bert.py) gives its GGUF architecture, the shape each Hugging Face
tensor must have, the metadata, the vocabulary and the per-tensor rewrite (name, layout, values).
Types follow `convert_hf_to_gguf.py --outtype f16`: 1-D tensors, norms, biases, position and
token-type embeddings stay F32, other weights become F16; `quantize` on create re-quantizes
from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from engine.gguf.convert import bert, decoder
from engine.gguf.convert.family import Family
from engine.gguf.convert.source import (
    FLOAT_DTYPES,
    ConvertError,
    RawTensor,
    read_config,
    read_tensors,
)

__all__ = ["Conversion", "ConvertError", "open_directory"]

FAMILIES = {**decoder.ARCHITECTURES, **bert.ARCHITECTURES}
# Tensors that stay F32 whatever their rank (llama.cpp keeps them so for every file type).
_F32_TENSORS = (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)


@dataclass
class Conversion:
    """A checked directory, ready to write."""

    directory: Path
    config: dict[str, Any]
    family: Family
    tensors: dict[str, RawTensor]

    @property
    def architecture(self) -> str:
        return self.family.gguf_arch

    @property
    def total_bytes(self) -> int:
        return sum(len(t.data) for t in self.tensors.values())

    def write(self, out: Path) -> Iterator[tuple[str, int, int]]:
        """Write the GGUF to `out`, yielding (tensor name, bytes done, bytes in all) per tensor.

        The file is complete only once the iterator is exhausted.
        """
        arch = self.family.gguf_arch
        writer = gguf.GGUFWriter(str(out), arch)
        writer.add_type(gguf.GGUFType.MODEL)
        self.family.write_metadata(writer)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        self.family.write_vocab(writer)
        total, done = self.total_bytes, 0
        for hf_name, raw in self.tensors.items():
            for name, data in self.family.rewrite(hf_name, _as_computed(raw.array())):
                data = data.astype(_gguf_type(name, data), copy=False)
                writer.add_tensor(name, data)
            done += len(raw.data)
            yield hf_name, done, total
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _gguf_type(name: str, data: np.ndarray) -> type:
    keep = (
        data.ndim <= 1
        or name.endswith("_norm.weight")
        or not name.endswith(".weight")
        or any(name == f"{gguf.TENSOR_NAMES[t]}.weight" for t in _F32_TENSORS)
    )
    return np.float32 if keep else np.float16


def _as_computed(values: np.ndarray) -> np.ndarray:
    """F16 and F32 stay as stored; the rest (BF16, F64) are computed in F32, as llama.cpp does."""
    return values if values.dtype in (np.float16, np.float32) else values.astype(np.float32)


def open_directory(directory: Path) -> Conversion:
    """Read and check `directory` (config.json, *.safetensors, tokenizer files).

    Raises ConvertError naming the first problem: a missing file, an architecture outside
    FAMILIES, a tensor missing, unexpected or of the wrong shape, or an unreadable tokenizer.
    """
    config = read_config(directory)
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise ConvertError("config.json has no architectures list")
    arch = architectures[0]
    if arch not in FAMILIES:
        raise ConvertError(
            f"unsupported architecture {arch!r}; supported: {', '.join(sorted(FAMILIES))}"
        )
    family = FAMILIES[arch](directory, config)
    tensors = {name: raw for name, raw in read_tensors(directory).items() if not family.skip(name)}
    expected = family.expected_shapes()
    for name, raw in tensors.items():
        key = family.check_name(name)
        if raw.dtype not in FLOAT_DTYPES:
            raise ConvertError(f"tensor {name!r} has dtype {raw.dtype}; weights must be floats")
        if key not in expected:
            raise ConvertError(f"unexpected tensor {name!r} for {arch}")
        if raw.shape != expected[key]:
            raise ConvertError(
                f"tensor {name!r} has shape {list(raw.shape)}, but config.json implies "
                f"{list(expected[key])}"
            )
    present = {family.check_name(n) for n in tensors}
    missing = [n for n in expected if n not in present and n not in family.optional]
    if missing:
        raise ConvertError(f"tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    family.load_vocab()
    return Conversion(directory, config, family, tensors)
