"""Block sizes of the ggml tensor types (ggml's `type_traits`; spec gguf-and-models.md 2.1)."""

from __future__ import annotations

import math

from gguf import GGMLQuantizationType as GGMLType

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

# Byte offsets of each block's f16 scale fields (ggml-common.h's block structs). Random bytes
# there can be NaN or inf, so code drawing random blocks (tests, benchmarks) overwrites them.
F16_SCALE_OFFSETS: dict[GGMLType, tuple[int, ...]] = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
    GGMLType.IQ4_NL: (0,),
    GGMLType.IQ4_XS: (0,),
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
    return math.prod(shape) // block * size  # Python ints: no int64 wrap-around
