"""Reference quantizers, byte-identical to llama.cpp.

The kernels reproduce ggml's `quantize_row_<type>_ref` (ggml/src/ggml-quants.c), which is what
`llama_model_quantize` and Ollama run when no importance matrix is given (spec:
gguf-and-models.md section 3). Each takes float32 blocks (n_blocks, block_elements) and returns
the block bytes (n_blocks, block_bytes); they vectorize across blocks but walk the positions
inside a block in ggml's order, because float32 sums must be accumulated sequentially (NumPy's
pairwise `sum` rounds differently). Everything stays float32, as in C: no float64 intermediates.
Whole files are re-quantized by engine/gguf/quantize.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import UnsupportedQuantType
from engine.gguf.quants.types import TYPE_SIZES

F32 = np.float32
U8 = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int32]

GROUP_MAX_EPS = F32(1e-15)  # ggml: below this max |x| a group is "all zero"


# --- arithmetic primitives (spec 3.2) ---------------------------------------------------------


def nearest_int(v: Floats) -> Ints:
    """ggml's nearest_int: add 1.5 * 2^23 and read the mantissa (round half to even)."""
    bits = (v.astype(F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def roundf(v: Floats) -> Floats:
    """C roundf: round half away from zero, exactly (no `+ 0.5` double rounding)."""
    a = np.abs(v)
    floored = np.floor(a)
    return np.copysign(floored + np.floor(F32(2) * (a - floored)), v)


def fp16_bytes(v: Floats) -> U8:
    """(n,) float32 -> (n, 2) bytes of the binary16 rounded to nearest even (GGML_FP32_TO_FP16)."""
    return v.astype("<f2").view(np.uint8).reshape(-1, 2)


def fp16_round(v: Floats) -> Floats:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)): what a stored scale reads back as."""
    return v.astype(np.float16).astype(F32)


def seq_sum(terms: Floats) -> Floats:
    """(n, m) -> (m,): float32 sum over axis 0 from 0, in index order, as a C loop does.

    The K-quant helpers keep a group's n positions on axis 0 and the m groups on axis 1, so
    each step of this loop adds one contiguous row.
    """
    total = np.zeros(terms.shape[1:], F32)
    for row in terms:
        total += row
    return total


def _first_max_abs(x: Floats, axis: int = -1) -> Floats:
    """The signed x with the largest |x| along `axis`, the first on ties; 0 if all are 0.

    ggml scans with `if (amax < fabsf(v))` from amax = 0, so a block of zeros keeps max = +0.
    """
    i = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    pick = np.squeeze(np.take_along_axis(x, i, axis=axis), axis)
    return np.where(np.abs(pick) > 0, pick, F32(0))


def _first_min(x: Floats) -> Floats:
    """(n, k) -> (n,): the first minimum of each row, as ggml's `if (v < min)` scan finds it.

    Which of several equal zeros comes first decides between -0.0 and +0.0, whose fp16 bytes
    differ; np.argmin returns the first of equal values, np.min does not promise one.
    """
    return np.take_along_axis(x, np.argmin(x, axis=1)[:, None], axis=1)[:, 0]


def _first_max(x: Floats) -> Floats:
    """(n, k) -> (n,): the first maximum of each row (ggml's `if (v > max)` scan)."""
    return np.take_along_axis(x, np.argmax(x, axis=1)[:, None], axis=1)[:, 0]


def _pack_nibbles(q: npt.NDArray[np.integer]) -> U8:
    """(n, 32) codes 0..15 -> (n, 16): element j in the low nibble of byte j, j + 16 in the high."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def _pack_high_bits(q: npt.NDArray[np.integer]) -> U8:
    """(n, 32) 5-bit codes -> (n, 4) bytes: bit 4 of element e is bit e of a little-endian u32."""
    return np.packbits((q >> 4).astype(np.uint8) & 1, axis=-1, bitorder="little")


# --- legacy 32-element types (spec 3.3) -------------------------------------------------------


# Q8_0 (34 bytes: d f16, qs int8[32]): d = amax / 127, qs = roundf(x / d).
# ggml: quantize_row_q8_0_ref.
def quantize_q8_0(x: Floats) -> U8:
    amax = np.abs(x).max(axis=-1)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0))
    qs = roundf(x * inv[:, None]).astype(np.int8).view(np.uint8)
    return np.concatenate([fp16_bytes(d), qs], axis=1)


def _scaled_codes(x: Floats, d: Floats, offset: float, top: int, lo: Floats | None) -> Ints:
    """min(top, (int8_t)((x - lo) * id + offset)) with id = 1/d (0 if d = 0), as in ggml."""
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0))[:, None]
    v = x if lo is None else x - lo[:, None]
    q = np.trunc(v * inv + F32(offset)).astype(np.int32)  # C float -> int8 truncates
    return np.minimum(top, q)


# Q4_0 (18 bytes: d f16, qs[16]): d = max / -8 with max the signed largest-magnitude value;
# q = min(15, trunc(x / d + 8.5)).  ggml: quantize_row_q4_0_ref.
def quantize_q4_0(x: Floats) -> U8:
    d = _first_max_abs(x) / F32(-8)
    q = _scaled_codes(x, d, 8.5, 15, None)
    return np.concatenate([fp16_bytes(d), _pack_nibbles(q)], axis=1)


# Q4_1 (20 bytes: d f16, m f16, qs[16]): d = (max - min) / 15, q = min(15, trunc((x - min) / d
# + 0.5)).  ggml: quantize_row_q4_1_ref.
def quantize_q4_1(x: Floats) -> U8:
    lo, hi = _first_min(x), _first_max(x)
    d = (hi - lo) / F32(15)
    q = _scaled_codes(x, d, 0.5, 15, lo)
    return np.concatenate([fp16_bytes(d), fp16_bytes(lo), _pack_nibbles(q)], axis=1)


# Q5_0 (22 bytes: d f16, qh[4], qs[16]): d = max / -16, q = min(31, trunc(x / d + 16.5)).
# ggml: quantize_row_q5_0_ref.
def quantize_q5_0(x: Floats) -> U8:
    d = _first_max_abs(x) / F32(-16)
    q = _scaled_codes(x, d, 16.5, 31, None)
    return np.concatenate([fp16_bytes(d), _pack_high_bits(q), _pack_nibbles(q & 15)], axis=1)


# Q5_1 (24 bytes: d f16, m f16, qh[4], qs[16]): d = (max - min) / 31, q = trunc((x - min) / d
# + 0.5) (no clamp in ggml; it cannot exceed 31).  ggml: quantize_row_q5_1_ref.
def quantize_q5_1(x: Floats) -> U8:
    lo, hi = _first_min(x), _first_max(x)
    d = (hi - lo) / F32(31)
    q = _scaled_codes(x, d, 0.5, 255, lo) & 0xFF  # C: (uint8_t) of the truncated value
    return np.concatenate(
        [fp16_bytes(d), fp16_bytes(lo), _pack_high_bits(q), _pack_nibbles(q & 15)], axis=1
    )


# --- K-quants (spec 3.4, 3.5) -----------------------------------------------------------------


def _qx_trial(x: Floats, iscale: Floats, nmax: int) -> tuple[Ints, Floats, Floats]:
    """Levels l = clamp(nearest_int(iscale x), -nmax, nmax - 1) and the sums of
    make_qx_quants with weights w = x^2: sumlx = sum((w x) l), suml2 = sum((w l) l)."""
    levels = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
    lf = levels.astype(F32)
    w = x * x
    return levels, seq_sum(w * x * lf), seq_sum(w * lf * lf)


def make_qx_quants(x: Floats, nmax: int) -> tuple[Ints, Floats]:
    """ggml make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for m groups at once.

    x: (n, m), a group per column. Returns codes L = l + nmax (n, m), 0 for an all-zero group,
    and the float32 scale (m,).
    """
    vmax = _first_max_abs(x, axis=0)
    zero = np.abs(vmax) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        levels, sumlx, suml2 = _qx_trial(x, F32(-nmax) / vmax, nmax)
        codes = levels + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in (*range(-9, 0), *range(1, 10)):
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
            levels, sumlx, suml2 = _qx_trial(x, iscale, nmax)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            codes = np.where(better, levels + nmax, codes)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    codes[:, zero] = 0
    scale[zero] = 0
    return codes, scale


def make_qkx2_quants(
    x: Floats, w: Floats, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[Ints, Floats, Floats]:
    """ggml make_qkx2_quants(..., use_mad=false) for m groups at once.

    x, w: (n, m), a group per column. Returns codes 0..nmax (n, m), scale (m,) and
    the_min = -min >= 0 (m,). A trial that lowers the weighted error replaces `min`, and later
    trials use the new min (spec 3.5).
    """
    lo, hi = x[0].copy(), x[0].copy()
    sum_w, sum_x = w[0].copy(), w[0] * x[0]
    for xi, wi in zip(x[1:], w[1:], strict=True):
        lo = np.where(xi < lo, xi, lo)
        hi = np.where(xi > hi, xi, hi)
        sum_w += wi
        sum_x += wi * xi
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (hi - lo)
        scale = F32(1) / iscale
        codes = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
        diff = scale * codes.astype(F32) + lo - x
        best_error = seq_sum(w * (diff * diff))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo)
            trial = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
            tf = trial.astype(F32)
            wl = w * tf
            sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * tf), seq_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = this_scale * tf + this_min - x
            error = seq_sum(w * (diff * diff))
            better = (det > 0) & (error < best_error) & ~flat
            codes = np.where(better, trial, codes)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    codes[:, flat] = 0
    scale = np.where(flat, F32(0), scale)
    return codes, scale, -lo


def _pack_scale_min_k4(ls: Ints, lm: Ints) -> U8:
    """(n, 8) 6-bit scales and mins -> (n, 12) bytes, the inverse of get_scale_min_k4."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    low = np.concatenate([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6)])
    n = len(ls)
    return np.concatenate([low[:n], low[n:], (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)], axis=1)


def _quantize_k4(x: Floats, nmax: int, rmin: float, nstep: int) -> tuple[U8, U8, U8, Ints]:
    """Shared body of Q4_K / Q5_K: (n, 256) -> d, dmin (n, 2), scales (n, 12), codes (n, 256)."""
    n = len(x)
    sub = np.ascontiguousarray(x.reshape(n * 8, 32).T)  # (32, n * 8): a sub-block per column
    av_x = np.sqrt(seq_sum(sub * sub) / F32(32))
    w = av_x + np.abs(sub)
    codes, scales, mins = make_qkx2_quants(sub, w, nmax, rmin, 0.1, nstep)
    codes = codes.T  # (n * 8, 32)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)  # ggml: from 0, strict `>`
    max_scale = np.where(max_scale > 0, max_scale, F32(0))
    max_min = np.where(max_min > 0, max_min, F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)  # (uint8_t) then MIN
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    d, dmin = max_scale / F32(63), max_min / F32(63)
    dl = fp16_round(d)[:, None] * ls.astype(F32)  # (n, 8)
    ml = fp16_round(dmin)[:, None] * lm.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = nearest_int((x.reshape(n, 8, 32) + ml[:, :, None]) / dl[:, :, None])
    again = np.clip(again, 0, nmax)
    codes = np.where((dl != 0)[:, :, None], again, codes.reshape(n, 8, 32)).reshape(n, 256)
    return fp16_bytes(d), fp16_bytes(dmin), _pack_scale_min_k4(ls, lm), codes


# Q4_K (144 bytes: d f16, dmin f16, scales[12], qs[128]): eight sub-blocks of 32 via
# make_qkx2_quants(nmax 15, rmin -1, rdelta 0.1, nstep 20), 6-bit scales/mins against d/dmin,
# codes redone with the stored scales.  ggml: quantize_row_q4_K_ref.
def quantize_q4_k(x: Floats) -> U8:
    d, dmin, scales, codes = _quantize_k4(x, 15, -1.0, 20)
    q = codes.reshape(len(x), 4, 2, 32).astype(np.uint8)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(x), 128)
    return np.concatenate([d, dmin, scales, qs], axis=1)


# Q5_K (176 bytes: d f16, dmin f16, scales[12], qh[32], qs[128]): as Q4_K with nmax 31,
# rmin -0.5, nstep 15; bit 4 of element 32 b + l goes to bit b of qh[l].
# ggml: quantize_row_q5_K_ref.
def quantize_q5_k(x: Floats) -> U8:
    n = len(x)
    d, dmin, scales, codes = _quantize_k4(x, 31, -0.5, 15)
    q = codes.reshape(n, 4, 2, 32).astype(np.uint8)
    qs = ((q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)).reshape(n, 128)
    high = (codes.reshape(n, 8, 32) >> 4).astype(np.uint8)  # (n, 8, 32): bit b of qh[l]
    qh = np.packbits(high.transpose(0, 2, 1), axis=-1, bitorder="little").reshape(n, 32)
    return np.concatenate([d, dmin, scales, qh, qs], axis=1)


# Q6_K (210 bytes: ql[128], qh[64], scales int8[16], d f16): sixteen sub-blocks of 16 via
# make_qx_quants(nmax 32), int8 scales against d = fp16(max_scale / -128), codes redone with
# the stored scales.  ggml: quantize_row_q6_K_ref.
def quantize_q6_k(x: Floats) -> U8:
    n = len(x)
    codes, scales = make_qx_quants(np.ascontiguousarray(x.reshape(n * 16, 16).T), 32)
    codes, scales = codes.T.reshape(n, 16, 16), scales.reshape(n, 16)
    max_scale = _first_max_abs(scales)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d = F32(1) / iscale
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
        dl = fp16_round(d)[:, None] * sc.astype(F32)  # (n, 16)
        again = nearest_int(x.reshape(n, 16, 16) / dl[:, :, None])
    again = np.clip(again, -32, 31) + 32
    codes = np.where((dl != 0)[:, :, None], again, codes).reshape(n, 2, 4, 32).astype(np.uint8)
    ql = np.concatenate(  # per half: (a | c << 4) then (b | e << 4) for quarters a, b, c, e
        [
            codes[:, :, 0] & 15 | (codes[:, :, 2] & 15) << 4,
            codes[:, :, 1] & 15 | (codes[:, :, 3] & 15) << 4,
        ],
        axis=2,
    ).reshape(n, 128)
    qh = (codes >> 4) << np.array([0, 2, 4, 6], np.uint8)[:, None]  # (n, 2, 4, 32)
    qh = np.bitwise_or.reduce(qh, axis=2).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), fp16_bytes(d)], axis=1)
    out[zero] = 0
    return out


# F16 / BF16: round to nearest even. BF16 as ggml_compute_fp32_to_bf16: NaNs become quiet NaNs.
def quantize_f16(x: Floats) -> U8:
    return x.astype("<f2").view(np.uint8)


def quantize_bf16(x: Floats) -> U8:
    bits = x.view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # uint32 wraps only for NaNs
    quiet = (bits >> 16) | 64
    return np.where(nan, quiet, rounded).astype("<u2").view(np.uint8)


def quantize_f32(x: Floats) -> U8:
    return x.astype("<f4", copy=False).view(np.uint8)


QUANTIZERS: dict[GGMLType, Callable[[Floats], U8]] = {
    GGMLType.F32: quantize_f32,
    GGMLType.F16: quantize_f16,
    GGMLType.BF16: quantize_bf16,
    GGMLType.Q4_0: quantize_q4_0,
    GGMLType.Q4_1: quantize_q4_1,
    GGMLType.Q5_0: quantize_q5_0,
    GGMLType.Q5_1: quantize_q5_1,
    GGMLType.Q8_0: quantize_q8_0,
    GGMLType.Q4_K: quantize_q4_k,
    GGMLType.Q5_K: quantize_q5_k,
    GGMLType.Q6_K: quantize_q6_k,
}

# Blocks per kernel call (the K-quant kernels make ~40 temporaries the size of their input).
CHUNK_ELEMENTS = 1 << 16


def quantize(values: Floats, ggml_type: GGMLType) -> U8:
    """float32 values of NumPy shape (..., row) -> the ggml bytes of `ggml_type`, (..., row bytes).

    `row` must be a multiple of the type's block size; blocks never straddle rows. For F32 the
    result may share memory with `values`.
    """
    kernel = QUANTIZERS.get(ggml_type)
    if kernel is None:
        raise UnsupportedQuantType(ggml_type.name, "quantize to")
    block, size = TYPE_SIZES[ggml_type]
    if values.ndim == 0 or values.shape[-1] % block:
        raise ValueError(
            f"cannot quantize shape {values.shape} to {ggml_type.name}: the row length must be "
            f"a multiple of {block}"
        )
    out_shape = (*values.shape[:-1], values.shape[-1] // block * size)
    if block == 1:  # plain floats: one conversion of the whole tensor (F32: no copy if possible)
        return kernel(np.ascontiguousarray(values, dtype=F32)).reshape(out_shape)
    blocks = np.ascontiguousarray(values, dtype=F32).reshape(-1, block)
    out = np.empty((len(blocks), size), np.uint8)
    step = max(1, CHUNK_ELEMENTS // block)
    for i in range(0, len(blocks), step):
        out[i : i + step] = kernel(blocks[i : i + step]).reshape(-1, size)
    return out.reshape(out_shape)
