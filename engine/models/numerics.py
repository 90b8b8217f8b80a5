"""Emulation of llama.cpp's CPU rounding (the default; FLOAT32 turns it off).

llama.cpp never multiplies float32 activations by dequantized weights: `ggml_compute_forward_
mul_mat` first converts each activation row to the weight type's `vec_dot_type` (Q8_0 / Q8_1 for
the 32-element quants, Q8_K for K-quants and IQ4_XS, F16 for F16, BF16 for BF16) and does integer
or low-precision dot products. It also stores the KV cache as F16, converts q to F16 for q.k and
the softmax output to F16 for p.v (non-flash path), and evaluates GELU from an F16 table (spec:
gguf-and-models.md section 4.9). Rounding an activation row the same way and then multiplying by
the float32 weights gives the same products; only the float summation order still differs.
For Q4_1/Q5_1 the Q8_1 block sum term is added separately (see quantize_q8_block32).

Measured on the tiny model (tests/tiny_model.py) against llama.cpp with an F32 KV cache, every
matrix of one type: max |logit difference| ~5e-5 (the golden's 4-decimal rounding) for Q4_0,
Q4_1 and Q8_0. Only the float summation order still differs, and each rounding step (Q8
activations, F16 k/v/q/probabilities) turns a last-bit difference into a whole quantization step
now and then; such flips grow layer by layer (0.05-0.2 on the tiny model with mixed types or an
F16 cache). llama.cpp shows the same growth against itself when it batches rows differently
(tests/golden/llama_cpp_self_agreement.py). Bit-exact agreement needs llama.cpp's own summation
order: engine/exact/llama.py emulates it, slowly, for one-token evaluation.

Each function here is row-wise (a row's result never depends on other rows), so the forward
pass keeps its batch-shape independence. References: ggml-cpu `quantize_row_q8_0/q8_1` (x86
AVX path: id = 127 / amax, round to nearest even), `quantize_row_q8_K_ref`, `ggml_vec_geglu_f32`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

Array = npt.NDArray[np.float32]
F32 = np.float32


@dataclass(frozen=True)
class Numerics:
    """Which of llama.cpp's roundings the forward pass reproduces."""

    quantize_activations: bool  # activations -> weight's vec_dot type before every matmul
    kv_f16: bool  # F16 KV cache, q and softmax output rounded to F16, F16-table GELU


LLAMA_CPP = Numerics(quantize_activations=True, kv_f16=True)  # llama.cpp / Ollama defaults
FLOAT32 = Numerics(quantize_activations=False, kv_f16=False)  # plain float32 arithmetic


class Rounding(Enum):
    NONE = "none"  # F32 weights: activations stay float32
    Q8_BLOCK32 = "q8_0"  # Q8_0 / Q8_1: blocks of 32, scale amax/127 stored as F16
    Q8_K = "q8_K"  # blocks of 256, scale 1/(-127/max) stored as float32
    F16 = "f16"
    BF16 = "bf16"


_Q8_BLOCK32_TYPES = {
    GGMLType.Q4_0,
    GGMLType.Q4_1,
    GGMLType.Q5_0,
    GGMLType.Q5_1,
    GGMLType.Q8_0,
    GGMLType.IQ4_NL,
}
_F32_TYPES = {GGMLType.F32, GGMLType.F64}


def vec_dot_rounding(ggml_type: GGMLType) -> Rounding:
    """How llama.cpp rounds activations multiplied by a weight of `ggml_type`."""
    if ggml_type in _Q8_BLOCK32_TYPES:
        return Rounding.Q8_BLOCK32
    if ggml_type == GGMLType.F16:
        return Rounding.F16
    if ggml_type == GGMLType.BF16:
        return Rounding.BF16
    if ggml_type in _F32_TYPES:
        return Rounding.NONE
    return Rounding.Q8_K  # K-quants, IQ2/IQ3/IQ1, IQ4_XS, TQ


_U32 = np.uint32
_EXP_BITS = _U32(0x7F800000)
_TO_F16_ULP = _U32(13 << 23)  # adds 13 to a float32 exponent: 2**e -> 2**(e + 13)
_F16_MAX = F32(65504.0)
_BEYOND_F16 = F32(2.0**17)  # rounds to inf like every value from 65520 up
_F16_SUBNORMAL_SHIFT = F32(0.5)  # 2**-24, F16's subnormal spacing, is float32's ulp of 0.5
# round_f16 casts arrays smaller than this: 18 values 1.8-3 us against 8 us by arithmetic; the
# cast costs ~4 ns per value (~70 ns on F16 subnormals) against ~2 ns from a few hundred up
_CAST_BELOW = 64


def round_f16(x: Array) -> Array:
    """float32 -> nearest F16 (ties to even) -> float32, as `x.astype(float16).astype(float32)`.

    By IEEE float32 arithmetic rather than NumPy's cast, which takes a slow path on subnormal
    inputs (softmax probabilities are full of them). For |x| in [2**e, 2**(e+1)) F16 keeps the
    multiples of 2**(e-10); c = 2**(e+13) has float32 ulp 2**(e-10) and |x| < c / 2**12, so
    |x| + c rounds |x| to that grid (ties to even, the grid's parity being F16's last mantissa
    bit) and subtracting c again is exact. Below 2**-14 F16 keeps the multiples of 2**-24, the
    ulp of c = 0.5, hence c = max(2**(e+13), 0.5); zeros and float32 subnormals take 0.5 too.
    Magnitudes are first capped at 2**17 (which, as every value from 65520 up, becomes inf in
    F16), so 2**(e+13) stays finite; beyond 65504 the result is inf; NaN goes through.
    Equal to the cast on all 2**32 float32 inputs (checked once exhaustively;
    tests/engine/test_numerics.py samples them). Below _CAST_BELOW values (a row's block
    scales) the cast itself is used: IEEE too, and its two calls cost less than these ten.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    if x.size < _CAST_BELOW:
        with np.errstate(over="ignore"):  # beyond 65504: inf, as above
            return x.astype(np.float16).astype(F32)
    y = np.minimum(np.abs(x), _BEYOND_F16)  # 2**(e+13) must stay finite; NaN stays NaN
    round_f16_magnitudes(y)
    with np.errstate(invalid="ignore"):
        y[y > _F16_MAX] = np.inf
    return np.copysign(y, x, out=y)


def round_f16_magnitudes(a: Array) -> None:
    """`round_f16` in place of float32 values in [+0, 65504], such as probabilities: the
    passes for signs and overflow are not needed (-0.0 would become +0.0). Equal to the cast on
    all of them (checked once exhaustively)."""
    c = a.view(_U32) & _EXP_BITS
    c += _TO_F16_ULP
    c = c.view(F32)
    np.maximum(c, _F16_SUBNORMAL_SHIFT, out=c)
    with np.errstate(invalid="ignore"):  # signalling NaN inputs stay NaN
        a += c
        a -= c


def _round_bf16(x: Array) -> Array:
    # GGML_FP32_TO_BF16: round to nearest even on the upper 16 bits (NaN handling not needed).
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    bits = (bits + (((bits >> 16) & 1) + np.uint32(0x7FFF))) & np.uint32(0xFFFF0000)
    return bits.view(F32)


def quantize_q8_block32(x: Array) -> tuple[Array, Array, Array]:
    """Q8_0/Q8_1 of rows (T, K): integers q (T, K), scales d (T, K/32) and Q8_1's s (T, K/32).

    Per 32 values (ggml quantize_row_q8_0/q8_1, x86): d = amax/127, q = rint(x * 127/amax), d
    stored as f16; Q8_1 also stores s = f16(d * sum(q)), which Q4_1/Q5_1 dots multiply by the
    weight block's min.
    """
    T, K = x.shape
    b = x.reshape(T, K // 32, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)  # (T, K/32, 1)
    inv = np.divide(F32(127.0), amax, out=np.zeros_like(amax), where=amax > 0)
    q = np.rint(b * inv)
    d = amax / F32(127.0)
    s = round_f16(d * q.sum(axis=-1, keepdims=True))  # the sum is exact: integers below 2**13
    return q.reshape(T, K), round_f16(d)[..., 0], s[..., 0]


def quantize_q8_k(x: Array) -> tuple[Array, Array]:
    """Q8_K of rows (T, K): integers q (T, K) and scales d (T, K/256).

    Per 256 values (ggml quantize_row_q8_K_ref): iscale = -127/max, max the signed value of the
    first largest |x| (ggml's strict '>' scan), q = min(127, rint(x * iscale)), d = 1/iscale.
    """
    T, K = x.shape
    b = x.reshape(T, K // 256, 256)
    idx = np.abs(b).argmax(axis=-1)[..., None]
    vmax = np.take_along_axis(b, idx, axis=-1)  # (T, K/256, 1)
    iscale = np.divide(F32(-127.0), vmax, out=np.zeros_like(vmax), where=vmax != 0)
    d = np.divide(F32(1.0), iscale, out=np.zeros_like(vmax), where=vmax != 0)
    q = np.minimum(np.rint(b * iscale), F32(127.0))
    return q.reshape(T, K), d[..., 0]


def _dequantize_rows(q: Array, d: Array) -> Array:
    T, K = q.shape
    return (q.reshape(T, d.shape[1], -1) * d[..., None]).reshape(T, K)


def round_activations(x: Array, rounding: Rounding) -> Array:
    """Round activation rows (T, K) as llama.cpp does for a dot with weights of that rounding."""
    if rounding is Rounding.Q8_BLOCK32:
        q, d, _ = quantize_q8_block32(x)
        return _dequantize_rows(q, d)
    if rounding is Rounding.Q8_K:
        return _dequantize_rows(*quantize_q8_k(x))
    if rounding is Rounding.F16:
        return round_f16(x)
    if rounding is Rounding.BF16:
        return _round_bf16(x)
    return x


# exp in float32 from IEEE operations only (NumPy's own exp differs by SIMD path, see
# engine/models/blockmatmul.py): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: _LN2_HI has 9
# significant bits, so n * _LN2_HI is exact), e^r by its degree-7 Taylor polynomial (truncation <
# 1.1e-8 relative), times 2**n. Within 2 ulp of the true value on every input checked.
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693359375)
_LN2_LO = F32(-2.1219444005469057e-4)
_EXP_TAYLOR = tuple(F32(1.0 / math.factorial(k)) for k in range(7, -1, -1))
_EXP_MIN, _EXP_MAX = F32(-105.0), F32(89.0)  # below: 0 after rounding; above: inf
_F32_BIAS, _F32_MANT = np.int32(127), np.int32(23)  # float32 exponent bias, mantissa bits


def exp_f32(x: Array) -> Array:
    """e**x elementwise in float32, the same bits on every CPU. -inf -> 0, NaN -> NaN."""
    x = np.asarray(x, dtype=F32)
    c = np.clip(np.atleast_1d(x), _EXP_MIN, _EXP_MAX)
    n = c * _LOG2E
    np.rint(n, out=n)
    r = n * _LN2_HI
    np.subtract(c, r, out=r)
    np.multiply(n, _LN2_LO, out=c)
    r -= c  # (c - n * _LN2_HI) - n * _LN2_LO
    p = r * _EXP_TAYLOR[0]  # Horner's scheme, in place: the same operations, fewer arrays
    p += _EXP_TAYLOR[1]
    for coef in _EXP_TAYLOR[2:]:
        p *= r
        p += coef
    with np.errstate(over="ignore", invalid="ignore"):
        y = times_pow2(p, n.astype(np.int32))
    y = y.reshape(x.shape)
    nan = np.isnan(x)
    if nan.any():
        y[nan] = x[nan]
    return y


def times_pow2(p: Array, n: npt.NDArray[np.int32]) -> Array:
    """p * 2**n in place, for |n| <= 250: what `np.ldexp(p, n)` gives, at a fifth of its cost.

    n = h + (n - h) with h = n // 2, so both powers of two are normal float32 numbers, built
    from their exponent bits. For p in exp_f32's range [0.5, 2), p * 2**h is then a normal
    number, an exact product; the second product rounds once, to subnormal, normal or inf, as
    ldexp's one correctly rounded result does. (NumPy's ldexp is a scalar loop: 7.7 ns a value
    on the AVX2 EPYC, against 0.2-0.4 ns for an add or a shift.)
    """
    h = n >> 1
    p *= ((h + _F32_BIAS) << _F32_MANT).view(F32)
    p *= ((n - h + _F32_BIAS) << _F32_MANT).view(F32)
    return p


def tanh_f32(x: Array) -> Array:
    """tanh elementwise in float32 from exp_f32: 1 - 2 / (e**2x + 1), odd by construction."""
    a = np.abs(np.asarray(x, dtype=F32))
    t = F32(1.0) - F32(2.0) / (exp_f32(F32(2.0) * a) + F32(1.0))
    return np.copysign(t, x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_LINEAR_ABOVE = 10.0  # ggml: gelu(x) = x for x >= 10 and 0 for x <= -10


def gelu_tanh(x: Array) -> Array:
    c = F32(_SQRT_2_OVER_PI)
    # ggml_gelu_f32's form: tanh(c * x * (1 + a * x^2))
    return F32(0.5) * x * (F32(1.0) + tanh_f32(c * x * (F32(1.0) + F32(0.044715) * x * x)))


_F16_KEY_SHIFT = 13  # float32 bits >> 13 keep sign, exponent and F16's 10 mantissa bits


def _f16_table(fn: Callable[[Array], Array]) -> Array:
    """fn at every F16 value, stored as F16 (ggml's ggml_table_*_f16 lookup tables), indexed
    by the float32 bits of the value >> 13: every F16 value, subnormals and -0 included, is a
    float32 whose low 13 bits are zero, so each has its own key (2**19 of them, 2 MiB). Keys
    no F16 value has (NaN payloads) hold NaN."""
    xh = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
    with np.errstate(invalid="ignore", over="ignore"):
        values = round_f16(fn(xh))
    table = np.full(1 << (32 - _F16_KEY_SHIFT), np.nan, F32)
    table[xh.view(_U32) >> _F16_KEY_SHIFT] = values
    return table


def _f16_lookup(table: Array, x: Array) -> Array:
    """table at f16(x), as ggml's CPU kernels index their F16 tables. f16(x) by `round_f16`:
    NumPy's float16 cast is ~3x slower on this path (its subnormal inputs)."""
    keys = round_f16(x).view(_U32) >> _F16_KEY_SHIFT
    return np.take(table, keys)


_GELU_F16 = _f16_table(gelu_tanh)


def gelu_f16_table(x: Array) -> Array:
    """ggml's GELU: the tanh formula at f16(x), stored as F16 (ggml_table_gelu_f16)."""
    x = np.asarray(x, dtype=F32)
    y = _f16_lookup(_GELU_F16, x)
    np.copyto(y, F32(0.0), where=x <= -GELU_LINEAR_ABOVE)
    np.copyto(y, x, where=x >= GELU_LINEAR_ABOVE)
    return y


_GELU_QUICK_COEF = F32(-1.702)


def gelu_quick(x: Array) -> Array:
    """ggml_gelu_quick_f32: x * (1 / (1 + e**(-1.702 x))), CLIP's quick_gelu."""
    with np.errstate(over="ignore"):
        return x * (F32(1.0) / (F32(1.0) + exp_f32(_GELU_QUICK_COEF * x)))


_GELU_QUICK_F16 = _f16_table(gelu_quick)  # ggml_table_gelu_quick_f16


def gelu_quick_f16_table(x: Array) -> Array:
    """ggml's CPU quick GELU (GGML_GELU_QUICK_FP16): the table at f16(x), no linear ends."""
    return _f16_lookup(_GELU_QUICK_F16, x).astype(F32)
