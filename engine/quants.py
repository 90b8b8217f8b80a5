"""Dequantization kernels for ggml tensor types, vectorized over blocks in NumPy.

Each `dequantize_<type>(blocks)` takes the raw bytes reshaped to (n_blocks, block_bytes) and
returns float32 (n_blocks, block_elements). Layouts follow ggml's `ggml-common.h` and the
reference `dequantize_row_*` in `ggml-quants.c` (spec: gguf-and-models.md section 2); results
match gguf-py's `gguf.quants.dequantize` bit for bit (tests/engine/test_quants.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import UnsupportedQuantType

Kernel = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]

# (elements per block, bytes per block) for every type id a GGUF file may name. Types that were
# removed from ggml (4, 5, 31-33, 36-38) are absent, so a file naming them is rejected.
# Q8_1 is 36 bytes as in ggml's C struct (gguf-py 0.19.0 lists 40).
TYPE_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
    GGMLType.NVFP4: (64, 36),
    GGMLType.Q1_0: (128, 18),
}


def ggml_type(type_id: int) -> GGMLType | None:
    """The named type for a type id, or None when the id is unknown or removed."""
    try:
        t = GGMLType(type_id)
    except ValueError:
        return None
    return t if t in TYPE_SIZES else None


def block_elements(t: GGMLType) -> int:
    return TYPE_SIZES[t][0]


def tensor_nbytes(t: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of NumPy `shape` occupies; shape[-1] must be a multiple of the block."""
    block, size = TYPE_SIZES[t]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


# F32 / F16 / BF16: one element per "block".
def dequantize_f32(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return blocks.view("<f4").astype(np.float32)


def dequantize_f16(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return blocks.view("<f2").astype(np.float32)


def dequantize_bf16(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    # bf16 is the upper half of a float32.
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)


QUANTS: dict[GGMLType, Kernel] = {
    GGMLType.F32: dequantize_f32,
    GGMLType.F16: dequantize_f16,
    GGMLType.BF16: dequantize_bf16,
}


def dequantize(
    raw: npt.NDArray[np.uint8], ggml_type: GGMLType | int, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """Dequantize `raw` bytes of type `ggml_type` into a float32 array of NumPy `shape`."""
    t = GGMLType(ggml_type)
    kernel = QUANTS.get(t)
    if kernel is None:
        raise UnsupportedQuantType(t.name)
    _, size = TYPE_SIZES[t]
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, size)
    return kernel(blocks).reshape(shape)
