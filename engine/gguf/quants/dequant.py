"""Dequantization kernels for ggml tensor types, vectorized over blocks in NumPy.

Each `dequantize_<type>(blocks)` takes the raw bytes reshaped to (n_blocks, block_bytes) and
returns float32 (n_blocks, block_elements); for the 32-element types `codes_<type>(blocks)`
gives their integers q, int8 (n_blocks, 32), of which the kernel takes d * q (+ m). Layouts
follow ggml's `ggml-common.h` and the reference `dequantize_row_*` in `ggml-quants.c` (spec:
gguf-and-models.md section 2); results match gguf-py's `gguf.quants.dequantize` bit for bit
(tests/engine/test_quants.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import UnsupportedQuantType
from engine.gguf.quants.types import TYPE_SIZES

Kernel = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
Codes = npt.NDArray[np.int8]


# F32 / F16 / BF16: one element per "block". F32 is returned as a view of the bytes, as in
# gguf-py (read-only when the bytes are a view of a read-only memory map).
def dequantize_f32(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return blocks.view("<f4")


def dequantize_f16(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return blocks.view("<f2").astype(np.float32)


def dequantize_bf16(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    # bf16 is the upper half of a float32.
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)


_SHIFTS_1BIT = np.arange(8, dtype=np.uint8)[:, None]  # (8, 1)
_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]  # (4, 1)
_SHIFTS_IQ4XS = np.arange(0, 16, 2, dtype=np.uint16)  # (8,)


def _f16(blocks: npt.NDArray[np.uint8], at: int) -> npt.NDArray[np.float32]:
    """The f16 field at byte `at` of every block: (n, 1) float32."""
    return blocks[:, at : at + 2].view("<f2").astype(np.float32)


def _nibbles(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n, g, w) bytes -> (n, g, 2, w): low nibbles of a group, then its high nibbles."""
    return np.stack((qs & 15, qs >> 4), axis=-2)


def _bit_planes(qh: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(n, 32) bytes -> (n, 8, 32) bits: element 32*b + l is bit b of byte l."""
    return (qh[:, None, :] >> _SHIFTS_1BIT) & 1


# Q4_0: 32 elements per 18-byte block (d: f16, qs: 16 bytes). Element j < 16 is the low nibble
# of qs[j], element j + 16 its high nibble; y = d * (q - 8).  ggml: dequantize_row_q4_0.
def codes_q4_0(blocks: npt.NDArray[np.uint8]) -> Codes:
    return _nibbles(blocks[:, 2:18]).reshape(len(blocks), 32).view(np.int8) - np.int8(8)


def dequantize_q4_0(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _f16(blocks, 0) * codes_q4_0(blocks).astype(np.float32)


# Q4_1: 32 elements per 20-byte block (d: f16, m: f16, qs: 16 bytes); nibbles as Q4_0;
# y = d * q + m.  ggml: dequantize_row_q4_1.
def codes_q4_1(blocks: npt.NDArray[np.uint8]) -> Codes:
    return _nibbles(blocks[:, 4:20]).reshape(len(blocks), 32).view(np.int8)


def dequantize_q4_1(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    return d * codes_q4_1(blocks).astype(np.float32) + m


def _q5_codes(qh: npt.NDArray[np.uint8], qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """5-bit codes (n, 32): nibbles as Q4_0, bit 4 of element e is bit e of qh as a LE u32."""
    n = len(qs)
    high = np.unpackbits(qh, axis=-1, bitorder="little")  # (n, 32)
    return _nibbles(qs).reshape(n, 32) | (high << 4)


# Q5_0: 32 elements per 22-byte block (d: f16, qh: 4 bytes, qs: 16 bytes); y = d * (q - 16).
# ggml: dequantize_row_q5_0.
def codes_q5_0(blocks: npt.NDArray[np.uint8]) -> Codes:
    return _q5_codes(blocks[:, 2:6], blocks[:, 6:22]).view(np.int8) - np.int8(16)


def dequantize_q5_0(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _f16(blocks, 0) * codes_q5_0(blocks).astype(np.float32)


# Q5_1: 32 elements per 24-byte block (d: f16, m: f16, qh: 4 bytes, qs: 16 bytes);
# y = d * q + m.  ggml: dequantize_row_q5_1.
def codes_q5_1(blocks: npt.NDArray[np.uint8]) -> Codes:
    return _q5_codes(blocks[:, 4:8], blocks[:, 8:24]).view(np.int8)


def dequantize_q5_1(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    return d * codes_q5_1(blocks).astype(np.float32) + m


# Q8_0: 32 elements per 34-byte block (d: f16, qs: 32 int8); y = d * q.
# ggml: dequantize_row_q8_0.
def codes_q8_0(blocks: npt.NDArray[np.uint8]) -> Codes:
    return blocks[:, 2:34].view(np.int8)


def dequantize_q8_0(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _f16(blocks, 0) * codes_q8_0(blocks).astype(np.float32)


# Q2_K: 256 elements per 84-byte block (scales: 16 bytes, qs: 64 bytes, d: f16, dmin: f16).
# Element e = 128 h + 32 j + l is bits 2j..2j+1 of qs[32 h + l]; scale byte s = scales[e // 16];
# y = (d * (s & 15)) * q - dmin * (s >> 4).  ggml: dequantize_row_q2_K.
def dequantize_q2_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    scales = blocks[:, 0:16]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)  # (n, 1) each
    dl = (d * (scales & 15).astype(np.float32))[:, :, None]  # (n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]  # (n, 16, 1)
    qs = blocks[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFTS_2BIT  # (n, 2, 4, 32)
    q = (qs & 3).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, 256)


# Q3_K: 256 elements per 110-byte block (hmask: 32 bytes, qs: 64 bytes, scales: 12 bytes,
# d: f16). Low 2 bits as Q2_K; the high bit of e is bit e // 32 of hmask[e % 32], and a clear
# bit subtracts 4 (q in -4..3). Sixteen 6-bit scales: low nibble from scales[i] (i < 8) or
# scales[i - 8] >> 4, top 2 bits from scales[8 + i % 4] >> 2 (i // 4); sc = that - 32.
# y = (d * sc) * q.  ggml: dequantize_row_q3_K.
def dequantize_q3_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    d = _f16(blocks, 108)  # (n, 1)
    packed = blocks[:, 96:108]
    low = np.stack((packed[:, 0:8] & 15, packed[:, 0:8] >> 4), axis=1).reshape(n, 16)
    high = (packed[:, None, 8:12] >> _SHIFTS_2BIT) & 3  # (n, 4, 4): [i // 4, i % 4]
    sc = (low | (high.reshape(n, 16) << 4)).view(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 16, 1)
    low2 = (blocks[:, 32:96].reshape(n, 2, 1, 32) >> _SHIFTS_2BIT) & 3  # (n, 2, 4, 32)
    cleared = _bit_planes(blocks[:, 0:32]) ^ 1  # (n, 8, 32)
    q = low2.reshape(n, 8, 32).view(np.int8) - (cleared << 2).view(np.int8)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


def _scale_min_k4(packed: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], ...]:
    """The 8 six-bit scales and mins of Q4_K / Q5_K from their 12 bytes (ggml get_scale_min_k4).

    Bytes 0-3: sc0..3 and the top 2 bits of sc4..7; bytes 4-7: m0..3 and the top 2 bits of
    m4..7; bytes 8-11: the low nibbles of sc4..7 (low half) and m4..7 (high half).
    """
    s0, s1, s2 = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate((s0 & 63, (s2 & 15) | ((s0 >> 6) << 4)), axis=1)  # (n, 8)
    m = np.concatenate((s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)), axis=1)  # (n, 8)
    return sc, m


# Q4_K: 256 elements per 144-byte block (d: f16, dmin: f16, scales: 12 bytes, qs: 128 bytes).
# Eight sub-blocks of 32 with 6-bit scale sc_j and min m_j (see _scale_min_k4). Element
# e = 64 c + r is qs[32 c + r % 32], low nibble for r < 32, else high.
# y = (d * sc_j) * q - dmin * m_j.  ggml: dequantize_row_q4_K.
def dequantize_q4_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    sc, m = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 8, 1)
    ml = (dmin * m.astype(np.float32))[:, :, None]  # (n, 8, 1)
    q = _nibbles(blocks[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32)
    return (dl * q.astype(np.float32) - ml).reshape(n, 256)


# Q5_K: 256 elements per 176-byte block (d: f16, dmin: f16, scales: 12 bytes, qh: 32 bytes,
# qs: 128 bytes). As Q4_K, plus bit 4 of element e = bit e // 32 of qh[e % 32].
# ggml: dequantize_row_q5_K.
def dequantize_q5_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1) each
    sc, m = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 8, 1)
    ml = (dmin * m.astype(np.float32))[:, :, None]  # (n, 8, 1)
    low = _nibbles(blocks[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    q = low | (_bit_planes(blocks[:, 16:48]) << 4)  # (n, 8, 32)
    return (dl * q.astype(np.float32) - ml).reshape(n, 256)


# Q6_K: 256 elements per 210-byte block (ql: 128 bytes, qh: 64 bytes, scales: 16 int8, d: f16).
# Element e = 128 h + 32 g + l: low 4 bits from ql[64 h + l + 32 (g & 1)] (low nibble for
# g < 2, high for g >= 2), high 2 bits are bits 2g..2g+1 of qh[32 h + l]; q = that - 32.
# y = (d * scales[e // 16]) * q.  ggml: dequantize_row_q6_K.
def dequantize_q6_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    d = _f16(blocks, 208)  # (n, 1)
    dl = (d * blocks[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]  # (n, 16, 1)
    low = _nibbles(blocks[:, 0:128].reshape(n, 2, 64)).reshape(n, 2, 4, 32)
    high = (blocks[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFTS_2BIT) & 3  # (n, 2, 4, 32)
    q = (low | (high << 4)).view(np.int8) - np.int8(32)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


# Q8_K: 256 elements per 292-byte block (d: f32, qs: 256 int8, bsums: 16 int16, unused here);
# y = d * q.  ggml: dequantize_row_q8_K.
def dequantize_q8_k(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    d = blocks[:, 0:4].view("<f4").astype(np.float32)  # (n, 1)
    return d * blocks[:, 4:260].view(np.int8).astype(np.float32)


# The 16 non-linear levels of IQ4_NL / IQ4_XS, indexed by the 4-bit code (ggml kvalues_iq4nl).
_KVALUES_IQ4NL_I8 = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)
_KVALUES_IQ4NL = _KVALUES_IQ4NL_I8.astype(np.float32)


# IQ4_NL: 32 elements per 18-byte block (d: f16, qs: 16 bytes); nibbles as Q4_0;
# y = d * kvalues_iq4nl[code].  ggml: dequantize_row_iq4_nl.
def codes_iq4_nl(blocks: npt.NDArray[np.uint8]) -> Codes:
    return _KVALUES_IQ4NL_I8[_nibbles(blocks[:, 2:18]).reshape(len(blocks), 32)]


def dequantize_iq4_nl(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return _f16(blocks, 0) * codes_iq4_nl(blocks).astype(np.float32)


# IQ4_XS: 256 elements per 136-byte block (d: f16, scales_h: u16, scales_l: 4 bytes,
# qs: 128 bytes). Sub-block ib of 32 has the 6-bit scale ls = nibble ib % 2 of scales_l[ib // 2]
# | bits 2ib..2ib+1 of scales_h << 4; element j < 16 of it is the low nibble of qs[16 ib + j],
# j + 16 the high one. y = (d * (ls - 32)) * kvalues_iq4nl[code].  ggml: dequantize_row_iq4_xs.
def dequantize_iq4_xs(blocks: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    n = len(blocks)
    d = _f16(blocks, 0)  # (n, 1)
    scales_h = blocks[:, 2:4].view("<u2")  # (n, 1)
    high = ((scales_h >> _SHIFTS_IQ4XS) & 3).astype(np.uint8)  # (n, 8)
    low = _nibbles(blocks[:, 4:8]).transpose(0, 2, 1).reshape(n, 8)
    ls = (low | (high << 4)).view(np.int8) - np.int8(32)
    dl = (d * ls.astype(np.float32))[:, :, None]  # (n, 8, 1)
    codes = _nibbles(blocks[:, 8:136].reshape(n, 8, 16)).reshape(n, 8, 32)
    return (dl * _KVALUES_IQ4NL[codes]).reshape(n, 256)


QUANTS: dict[GGMLType, Kernel] = {
    GGMLType.F32: dequantize_f32,
    GGMLType.F16: dequantize_f16,
    GGMLType.BF16: dequantize_bf16,
    GGMLType.Q4_0: dequantize_q4_0,
    GGMLType.Q4_1: dequantize_q4_1,
    GGMLType.Q5_0: dequantize_q5_0,
    GGMLType.Q5_1: dequantize_q5_1,
    GGMLType.Q8_0: dequantize_q8_0,
    GGMLType.Q2_K: dequantize_q2_k,
    GGMLType.Q3_K: dequantize_q3_k,
    GGMLType.Q4_K: dequantize_q4_k,
    GGMLType.Q5_K: dequantize_q5_k,
    GGMLType.Q6_K: dequantize_q6_k,
    GGMLType.Q8_K: dequantize_q8_k,
    GGMLType.IQ4_NL: dequantize_iq4_nl,
    GGMLType.IQ4_XS: dequantize_iq4_xs,
}


# The 32-element types whose values are y = d * q (+ m) with one f16 d (and m) per block: their
# integer codes q as int8 (n, 32), which engine/models/blockmatmul.py multiplies exactly.
CODES: dict[GGMLType, Callable[[npt.NDArray[np.uint8]], Codes]] = {
    GGMLType.Q4_0: codes_q4_0,
    GGMLType.Q4_1: codes_q4_1,
    GGMLType.Q5_0: codes_q5_0,
    GGMLType.Q5_1: codes_q5_1,
    GGMLType.Q8_0: codes_q8_0,
    GGMLType.IQ4_NL: codes_iq4_nl,
}


# Blocks go through a kernel in chunks of about this many output elements, so that each
# kernel's temporaries stay in the CPU cache (measured: benchmarks/bench_quants.py).
CHUNK_ELEMENTS = 1 << 18


def dequantize(
    raw: npt.NDArray[np.uint8], ggml_type: GGMLType | int, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """Dequantize `raw` bytes of type `ggml_type` into a float32 array of NumPy `shape`.

    Non-finite f16 scales propagate as they do in ggml (NaN or inf out, no warning).
    """
    kernel = QUANTS.get(ggml_type)  # GGMLType is an IntEnum: a plain int finds the same entry
    if kernel is None:
        raise UnsupportedQuantType(_type_name(ggml_type))
    block, size = TYPE_SIZES[ggml_type]
    n_elements = math.prod(shape)
    row = shape[-1] if shape else 1
    if row % block or raw.size != n_elements // block * size:
        raise ValueError(
            f"{raw.size} bytes of {_type_name(ggml_type)} cannot hold shape {shape}: expected "
            f"{n_elements // block * size} bytes and rows a multiple of {block} elements"
        )
    if block == 1:  # plain floats: the kernel takes the whole tensor (F32: a view, as in gguf-py)
        return kernel(raw).reshape(shape)
    blocks = raw.reshape(-1, size)
    out = np.empty(n_elements, dtype=np.float32)
    step = max(1, CHUNK_ELEMENTS // block)
    with np.errstate(all="ignore"):
        for i in range(0, len(blocks), step):
            out[i * block : (i + step) * block] = kernel(blocks[i : i + step]).reshape(-1)
    return out.reshape(shape)


def _type_name(type_id: int) -> str:
    try:
        return GGMLType(type_id).name
    except ValueError:
        return f"with unknown id {int(type_id)}"
