"""Bit-exact emulation of llama.cpp's CPU forward pass, one token at a time (decode regime).

Slow and explicit on purpose: every float operation llama.cpp performs for a single-token
`llama_decode` on an x86-64 build with -march=native is done here in the same order with the
same rounding, so the logits agree bit for bit. Two builds are emulated, chosen by `isa`:
"avx512" (AVX512F/VL/BW/DQ/VNNI, FMA, F16C) and "avx2" (AVX2, FMA, F16C, no AVX512), both GCC 12,
which contracts scalar `a*b + c` into FMA. They differ only where ggml's code has an AVX512
branch of its own: `ggml_vec_dot_f16`'s accumulator width and reduction, `ggml_v_expf` (a
different formulation on AVX2) and the lane width of the softmax sum. The quantized dot
products take the same AVX2 branch in both builds (VNNI only changes how the exact integer lane
sums are formed), and norms and RoPE are scalar code.

Scope: the llama architecture with Q4_1 weight matrices, a Q8_0 token embedding (tied output or
Q8_0 output), F32 norms, F16 KV cache, no flash attention, no RoPE scaling:
SmolLM2-135M-Instruct Q4_1. Anything else raises UnsupportedArchitecture /
UnsupportedQuantType naming what is missing. gemma3 (Gemma 3 270M Q4_K_M: Q5_0, Q4_K, Q6_K
kernels) is emulated in engine/exact/gemma3.py; `engine.exact.gemma3.load_exact(path, isa=...)`
returns the emulator for a GGUF's architecture.

Kernels emulated (ggml/src/ggml-cpu, file: function):
- get_rows Q8_0 (`dequantize_row_q8_0`): d * q, exact.
- rms_norm + mul (ops.cpp `ggml_compute_forward_rms_norm_f32`): double sum of float32
  squares in index order, mean = (float)(sum/n), scale = 1.0f/sqrtf(mean + eps), y = x*scale*w.
- matmul Q4_1 x Q8_1 (arch/x86/quants.c `quantize_row_q8_1`, `ggml_vec_dot_q4_1_q8_1`):
  the activation row is quantized per 32-block (d = amax/127, q = round-half-even(x*127/amax),
  s = fp16(d * sum q)); VNNI `dpbusd` sums 4 adjacent integer products into 8 lanes; per block
  acc = fma(fp32(d_w*d_a), lanes, acc) and summs = fma(m_w, s_a, summs); out = hsum8(acc)+summs.
- matmul Q8_0 x Q8_0 (`quantize_row_q8_0`, `ggml_vec_dot_q8_0_q8_0`): same lanes, no summs.
- rope, normal mode (ops.cpp `ggml_rope_cache_init`, `rotate_pairs`, GCC-contracted scalar loop):
  theta_0 = pos, theta_{i+1} = theta_i * powf(base, -2/n_dims) in float32, glibc sincosf;
  y0 = fma(x0, cos, -fp32(x1*sin)), y1 = fma(sin, x0, fp32(cos*x1)).
- q.k and p.v (vec.cpp `ggml_vec_dot_f16`; q and p rounded to F16). AVX512 without FP16: 4
  accumulators of 16 lanes, step 64, reduce (a0+a2)+(a1+a3), then `_mm512_reduce_add_ps`.
  AVX2: 4 accumulators of 8 lanes, step 32, the same (a0+a2)+(a1+a3), then `GGML_F32x8_REDUCE`'s
  halves added and two `hadd`s.
- soft_max_ext (ops.cpp / vec.cpp `ggml_vec_soft_max_f32`): x*scale + mask, max, `ggml_v_expf`
  (AVX512: polynomial + 1 then `scalef`; AVX2: fma(k, poly, k) with k = 2**n built from the
  exponent bits, and its own scaling for |n| > 126), double sum of 16- (AVX512) or 8-lane (AVX2)
  reductions, y *= (float)(1/sum).
- swiglu (`ggml_vec_swiglu_f32`): x / (1 + v_expf(0 - x)) * g, v_expf of the build.
- the KV cache spans n_kv = max(256, pad256(n_used)) cells (llama-kv-cache.cpp `get_n_kv`).

Cost: ~0.35 s per token and ~0.8 GB resident for SmolLM2 (quants unpacked to float32 so that
each block's integer lane sums are one exact BLAS matmul).

FMA: NumPy has none. a*b of two float32 is exact in float64; a*b + c in float64 then rounded to
float32 is the correctly rounded fma except when the float64 sum lands exactly on a float32
rounding midpoint while the exact sum does not. Such sums are redone with an error-free TwoSum
and rounded to odd first, which makes the final rounding exact (`_round_sum`, `fma_chain`).
Measured over 10 SmolLM2 tokens: 369M emulated FMAs in the matmuls, 4% of float64 sums on a
midpoint (almost all true ties), none where the correction changed the float32 result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import ContextOverflow, UnsupportedArchitecture, UnsupportedQuantType
from engine.gguf.quants.dequant import codes_q4_1, codes_q8_0
from engine.gguf.reader import GGUFFile
from engine.models.config import ModelConfig

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]
Array64 = npt.NDArray[np.float64]
QK = 32  # elements per Q4_1 / Q8_0 / Q8_1 block
LANES = 8  # float lanes of the AVX2 accumulators in the quantized dot products
ISAS = ("avx512", "avx2")  # the llama.cpp builds emulated (module docstring)
KV_PAD = 256  # llama_kv_cache::get_n_kv pads the attended cell count to a multiple of this

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.powf.restype = ctypes.c_float
_LIBM.powf.argtypes = [ctypes.c_float, ctypes.c_float]
_LIBM.sincosf.restype = None
_LIBM.sincosf.argtypes = [
    ctypes.c_float,
    ctypes.POINTER(ctypes.c_float),
    ctypes.POINTER(ctypes.c_float),
]


# --- exact float32 arithmetic -------------------------------------------------------------


def _round_to_odd(s: Array64, p: Array64, c: Array64) -> Array64:
    """s = fl64(p + c) rounded to odd instead: then fp32(result) == fp32(p + c) exactly."""
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # TwoSum: s + err == p + c exactly
    even = (s.view(np.int64) & 1) == 0
    fix = (err != 0) & even & np.isfinite(s)
    return np.where(fix, np.nextafter(s, np.copysign(np.inf, err)), s)


def _round_sum(p: Array64, c: Array) -> Array:
    """fp32(p + c) with one rounding; p is an exact float64 product of two float32 values."""
    c64 = np.asarray(c, dtype=F64)
    with np.errstate(invalid="ignore"):
        s = _round_to_odd(p + c64, p, c64)
    return s.astype(F32)


def fma(a: Array, b: Array, c: Array) -> Array:
    """Correctly rounded float32 fused multiply-add a*b + c, elementwise."""
    return _round_sum(np.multiply(a, b, dtype=F64), np.asarray(c, dtype=F32))


def round_f16(x: Array) -> Array:
    """float32 -> F16 -> float32, round to nearest even (F16C `vcvtps2ph`, imm 0)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def hsum8(acc: Array) -> Array:
    """`hsum_float_8` over the last axis (8 lanes): ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))."""
    q = acc[..., 4:8] + acc[..., 0:4]
    h = q[..., 0:2] + q[..., 2:4]
    return h[..., 0] + h[..., 1]


def reduce8(v: Array) -> Array:
    """`GGML_F32x8_REDUCE`'s last step over the last axis (8 lanes): t = lo4 + hi4, then two
    `hadd`s: (t0+t1) + (t2+t3)."""
    t = v[..., 0:4] + v[..., 4:8]
    return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])


def reduce16(v: Array) -> Array:
    """GCC's `_mm512_reduce_add_ps` over the last axis (16 lanes): halve 16 -> 8 -> 4 -> 2 -> 1."""
    v = v[..., 8:16] + v[..., 0:8]
    v = v[..., 4:8] + v[..., 0:4]
    v = v[..., 0:2] + v[..., 2:4]
    return v[..., 0] + v[..., 1]


# --- quantized matmuls --------------------------------------------------------------------


@dataclass(frozen=True)
class QuantRow:
    """An activation row quantized to Q8_0 / Q8_1 blocks."""

    q: npt.NDArray[np.int16]  # (nb, 32) integer quants
    d: Array  # (nb,) F16 scale as float32
    s: Array  # (nb,) F16 d * sum(q) as float32 (read by Q8_1 dot products only)


def quantize_q8(x: Array) -> QuantRow:
    """`quantize_row_q8_1` / `quantize_row_q8_0`, x86 AVX2 path. (n,) -> nb blocks of 32."""
    blocks = x.reshape(-1, QK)
    amax = np.abs(blocks).max(axis=1)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.rint(blocks * inv[:, None]).astype(np.int16)
    s = round_f16(d * q.sum(axis=1).astype(F32))
    return QuantRow(q, round_f16(d), s)


@dataclass(frozen=True)
class QuantMatrix:
    """A Q4_1 or Q8_0 weight matrix unpacked block-major for the lane-wise dot products."""

    q: Array  # (nb, rows, 32) integer quants as float32, block-major
    d: Array  # (nb, rows) block scales
    m: Array | None  # (nb, rows) Q4_1 block minimums; None for Q8_0


def _f16_field(blocks: npt.NDArray[np.uint8], offset: int) -> Array:
    """(rows, nb, block bytes) -> (nb, rows) float32 of the F16 at byte offset."""
    half = blocks[..., offset : offset + 2].copy().view(np.float16)[..., 0]
    return np.ascontiguousarray(half.T.astype(F32))


def _block_major(q: npt.NDArray[np.int8]) -> Array:
    """(rows, nb, 32) int8 -> (nb, rows, 32) float32."""
    return np.ascontiguousarray(q.transpose(1, 0, 2), dtype=F32)


def unpack_q4_1(raw: npt.NDArray[np.uint8], rows: int, cols: int) -> QuantMatrix:
    """Q4_1 blocks of 20 bytes (d: f16, m: f16, qs: 16; element j low nibble, j+16 high)."""
    blocks = raw.reshape(rows, cols // QK, 20)
    q = codes_q4_1(blocks.reshape(-1, 20)).reshape(rows, -1, QK)
    return QuantMatrix(_block_major(q), _f16_field(blocks, 0), _f16_field(blocks, 2))


def unpack_q8_0(raw: npt.NDArray[np.uint8], rows: int, cols: int) -> QuantMatrix:
    """Q8_0 blocks of 34 bytes (d: f16, qs: 32 int8)."""
    blocks = raw.reshape(rows, cols // QK, 34)
    q = codes_q8_0(blocks.reshape(-1, 34)).reshape(rows, -1, QK)
    return QuantMatrix(_block_major(q), _f16_field(blocks, 0), None)


def stack_rows(parts: list[QuantMatrix]) -> QuantMatrix:
    """Matrices sharing one input, rows concatenated (one matvec instead of several)."""
    m = None if parts[0].m is None else np.concatenate([p.m for p in parts], axis=1)  # type: ignore[misc]
    q = np.concatenate([p.q for p in parts], axis=1)
    return QuantMatrix(q, np.concatenate([p.d for p in parts], axis=1), m)


_ELEMENT = np.arange(QK)
_LOW29 = np.int64(0x1FFFFFFF)  # float64 mantissa bits below float32 precision
_MID = np.int64(0x10000000)  # ... at exactly half a float32 ulp


def fma_chain(terms: Array64) -> Array:
    """acc = fma(.., .., acc) over the first axis, from acc = 0; terms hold the exact products.

    A float64 sum is rounded once more to float32; that double rounding can only go wrong
    when the float64 sum lands exactly on a float32 midpoint (bits below float32 precision ==
    0x10000000), and then the step is redone with round-to-odd. Float32 subnormals, the other
    hazard, cannot occur: every product here is a multiple of 2**-71.
    """
    acc = np.zeros(terms.shape[1:], dtype=F64)
    low = np.empty(acc.shape, dtype=np.int64)
    for t in terms:
        s = t + acc
        np.bitwise_and(s.view(np.int64), _LOW29, out=low)
        hit = np.flatnonzero(low == _MID)  # mostly exact ties, which need no fix
        if hit.size:
            s.flat[hit] = _round_to_odd(s.flat[hit], t.flat[hit], acc.flat[hit])
        acc = s.astype(F32).astype(F64)
    return acc.astype(F32)


def matvec(w: QuantMatrix, x: Array) -> Array:
    """W x with x quantized to Q8_1 (Q4_1 weights) or Q8_0 (Q8_0 weights). (D,) -> (rows,)."""
    a = quantize_q8(x)
    nb, rows = w.d.shape
    # spread[b] puts quant 4l+k of block b in column l: w.q[b] @ spread[b] gives the 8 `dpbusd`
    # lane sums; all are integers below 2**24, so float32 BLAS gets them exactly in any order
    spread = np.zeros((nb, QK, LANES), dtype=F32)
    spread[:, _ELEMENT, _ELEMENT // 4] = a.q
    lanes = np.matmul(w.q, spread)  # (nb, rows, 8)
    # terms[b]: the exact products block b's FMAs add: 8 lanes, then Q4_1's summs
    terms = np.empty((nb, rows, LANES + (w.m is not None)), dtype=F64)
    scale = w.d * a.d[:, None]  # fp32(d_w * d_a)
    np.multiply(lanes, scale[..., None], out=terms[..., :LANES], dtype=F64)
    if w.m is not None:
        np.multiply(w.m, a.s[:, None], out=terms[..., LANES], dtype=F64)
    acc = fma_chain(terms)
    out = hsum8(acc[:, :LANES])
    return out + acc[:, LANES] if w.m is not None else out


# --- elementwise kernels ------------------------------------------------------------------


def rms_norm(x: Array, w: Array, eps: float) -> Array:
    """rms_norm then mul by w. (D,) -> (D,)."""
    sq = (x * x).astype(F64)
    total = np.cumsum(sq)[-1]  # sequential double sum, as the C loop
    mean = F32(total / x.size)
    scale = F32(1) / np.sqrt(mean + F32(eps))
    return x * scale * w


def _c(hexval: str) -> Array:
    return np.asarray(float.fromhex(hexval), dtype=F32)


_SHIFT = _c("0x1.8p23")
_LOG2E = _c("0x1.715476p+0")
_LN2_HI = _c("0x1.62e4p-1")
_LN2_LO = _c("0x1.7f7d1cp-20")
_P = [_c(h) for h in ("0x1.0e4020p-7", "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2")]
_P1 = _c("0x1.ffffecp-1")
_ONE = F32(1)


def v_expf(x: Array, isa: str) -> Array:
    """`ggml_v_expf` of the `isa` build, elementwise, bit for bit."""
    if f16_lanes(isa) == 8:
        return _v_expf_avx2(x)
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        z = fma(x, _LOG2E, _SHIFT)
        n = z - _SHIFT
        b = fma(-n, _LN2_LO, fma(-n, _LN2_HI, x))
        u = b * b
        j = fma(
            fma(fma(_P[0], b, _P[1]), u, fma(_P[2], b, _P[3])),
            u,
            fma(_P1, b, _ONE),
        )
        res = (j.astype(F64) * np.exp2(n.astype(F64))).astype(F32)  # _mm512_scalef_ps
        big = np.abs(n) > 192
        alt = np.where(n <= 0, F32(0), F32(np.inf))
        return np.where(big, alt, res).astype(F32)


_U32 = np.uint32


def _v_expf_avx2(x: Array) -> Array:
    """The AVX2 `ggml_v_expf`: the same reduction and polynomial without its constant 1, then
    fma(k, j, k) with k = 2**n made by shifting z's low bits into the exponent field; lanes with
    |n| > 126 are scaled in two factors s1, s2 instead, and |n| > 192 gives s1 * s1 (inf or 0)."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        z = fma(x, _LOG2E, _SHIFT)
        n = z - _SHIFT
        b = fma(-n, _LN2_LO, fma(-n, _LN2_HI, x))
        e = z.view(_U32) << _U32(23)
        k = (e + _ONE.view(_U32)).view(F32)
        u = b * b
        j = fma(fma(fma(_P[0], b, _P[1]), u, fma(_P[2], b, _P[3])), u, _P1 * b)
        res = fma(k, j, k)
        scaled = np.abs(n) > 126
        if not scaled.any():
            return res
        g = np.where(n <= 0, _U32(0x82000000), _U32(0))
        s1 = (g + _U32(0x7F000000)).view(F32)
        s2 = (e - g).view(F32)
        far = np.where(np.abs(n) > 192, s1 * s1, fma(s2, j, s2) * s1)
        return np.where(scaled, far, res).astype(F32)


def swiglu(g: Array, u: Array, isa: str) -> Array:
    """silu(g) * u with silu(x) = x / (1 + v_expf(0 - x))."""
    return g / (_ONE + v_expf(F32(0) - g, isa)) * u


def rope_cache(pos: int, n_dims: int, base: float) -> tuple[Array, Array]:
    """cos and sin for each of the n_dims/2 pairs at position pos (float32 theta recurrence)."""
    theta_scale = F32(_LIBM.powf(F32(base), F32(-2.0) / F32(n_dims)))
    theta = F32(pos)
    cos = np.empty(n_dims // 2, dtype=F32)
    sin = np.empty(n_dims // 2, dtype=F32)
    c, s = ctypes.c_float(), ctypes.c_float()
    for i in range(n_dims // 2):
        _LIBM.sincosf(theta, ctypes.byref(s), ctypes.byref(c))
        cos[i], sin[i] = c.value, s.value
        theta = F32(theta * theta_scale)
    return cos, sin


def rope_normal(x: Array, cos: Array, sin: Array) -> Array:
    """Adjacent-pair RoPE as the compiled `rotate_pairs` computes it. (H, Dh) -> (H, Dh)."""
    x0, x1 = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2] = fma(x0, cos, -(x1 * sin))
    out[:, 1::2] = fma(sin, x0, cos * x1)
    return out


# --- attention ----------------------------------------------------------------------------


def f16_lanes(isa: str) -> int:
    """Float lanes of the `isa` build's F16 dot product and softmax sum (ValueError: unknown)."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")
    return 16 if isa == "avx512" else 8


def dot_f16(x: Array, y: Array, isa: str) -> Array:
    """`ggml_vec_dot_f16` over the last axis; x, y hold F16 values, length a multiple of 64."""
    lanes = f16_lanes(isa)
    p = x * y  # products of two F16 values are exact in float32
    steps = p.reshape(*p.shape[:-1], -1, 4, lanes)  # 4 accumulators of `lanes` each
    acc = steps[..., 0, :, :]
    for i in range(1, steps.shape[-3]):
        acc = acc + steps[..., i, :, :]
    a = acc[..., 0:2, :] + acc[..., 2:4, :]
    reduce = reduce16 if lanes == 16 else reduce8
    return reduce(a[..., 0, :] + a[..., 1, :])


def soft_max(kq: Array, scale: float, n_valid: int, isa: str) -> Array:
    """soft_max_ext over the last axis (n_kv cells; cells >= n_valid masked with -inf)."""
    lanes = f16_lanes(isa)
    w = kq * F32(scale)
    w[..., n_valid:] = -np.inf
    mx = w.max(axis=-1, keepdims=True)
    val = v_expf(w - mx, isa)
    reduce = reduce16 if lanes == 16 else hsum8  # AVX2's 8-lane sum is hsum_float_8's order
    chunks = reduce(val.reshape(*val.shape[:-1], -1, lanes)).astype(F64)
    total = np.cumsum(chunks, axis=-1)[..., -1]
    inv = (1.0 / total).astype(F32)
    return val * inv[..., None]


def pad_kv(n: int) -> int:
    """n rounded up to a multiple of KV_PAD (llama.cpp pads n_ctx and n_kv alike)."""
    return -(-n // KV_PAD) * KV_PAD


def n_kv_cells(n_used: int, n_ctx: int) -> int:
    """How many cache cells llama.cpp attends over when n_used cells are filled."""
    return min(n_ctx, max(KV_PAD, pad_kv(n_used)))


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    attn_norm: Array
    wqkv: QuantMatrix  # q, k, v rows stacked: (H*Dh + 2*Hkv*Dh, D)
    wo: QuantMatrix
    ffn_norm: Array
    w_gate_up: QuantMatrix  # gate rows then up rows: (2F, D)
    w_down: QuantMatrix


class ExactModel:
    """llama.cpp's single-token forward pass, bit for bit, with its own F16 KV cache."""

    def __init__(self, path: str | Path, n_ctx: int = 512, isa: str = "avx512") -> None:
        f16_lanes(isa)  # a known build
        self.isa = isa
        f = GGUFFile(path)
        cfg = ModelConfig.from_gguf(f.metadata)
        if cfg.arch != "llama":
            raise UnsupportedArchitecture(f"{cfg.arch} (engine.exact.llama emulates llama only)")
        if cfg.rope_freq_scale != 1.0 or cfg.rope_yarn or cfg.n_rot != cfg.head_dim:
            raise UnsupportedArchitecture("llama with RoPE scaling or partial rotary dims")
        if "rope_freqs.weight" in f.tensors:
            raise UnsupportedArchitecture("llama with rope_freqs (llama3 RoPE factors)")
        self.cfg, self.n_ctx = cfg, pad_kv(n_ctx)  # llama_context pads n_ctx to 256 cells
        self._f = f
        self.tok_embd = self._matrix("token_embd.weight", {GGMLType.Q8_0})
        tied = "output.weight" not in f.tensors
        self.output = self.tok_embd if tied else self._matrix("output.weight", {GGMLType.Q8_0})
        self.output_norm = self._norm("output_norm.weight")
        self.layers = [self._layer(i) for i in range(cfg.n_layer)]
        if cfg.head_dim % 64:  # ggml_vec_dot_f16's scalar tail is not emulated
            raise UnsupportedArchitecture(
                f"llama with head_dim {cfg.head_dim}, not a multiple of 64"
            )
        kv = (self.n_ctx, cfg.n_head_kv, cfg.head_dim)
        self.k_cache = np.zeros((cfg.n_layer, *kv), dtype=F32)  # F16 values
        self.v_cache = np.zeros((cfg.n_layer, *kv), dtype=F32)
        self.n_past = 0

    def _norm(self, name: str) -> Array:
        info = self._f.tensors[name]
        if info.ggml_type != GGMLType.F32:
            raise UnsupportedQuantType(info.ggml_type.name, f"emulate norm {name}")
        return self._f.tensor(name)

    def _matrix(self, name: str, types: set[GGMLType]) -> QuantMatrix:
        info = self._f.tensors[name]
        if info.ggml_type not in types:
            raise UnsupportedQuantType(info.ggml_type.name, f"emulate matmul with {name}")
        rows, cols = info.shape
        unpack = unpack_q8_0 if info.ggml_type == GGMLType.Q8_0 else unpack_q4_1
        return unpack(self._f.raw(name), rows, cols)

    def _layer(self, i: int) -> Layer:
        p = f"blk.{i}."
        known = {f"{p}{n}.weight" for n in (*_MATRICES, "attn_norm", "ffn_norm")}
        extra = sorted(n for n in self._f.tensors if n.startswith(p) and n not in known)
        if extra:  # biases, experts, fused qkv, per-layer RoPE factors, ...
            raise UnsupportedArchitecture(f"llama with tensor {extra[0]}")
        q41 = {GGMLType.Q4_1}
        mats = {n: self._matrix(p + n + ".weight", q41) for n in _MATRICES}
        return Layer(
            attn_norm=self._norm(p + "attn_norm.weight"),
            wqkv=stack_rows([mats["attn_q"], mats["attn_k"], mats["attn_v"]]),
            wo=mats["attn_output"],
            ffn_norm=self._norm(p + "ffn_norm.weight"),
            w_gate_up=stack_rows([mats["ffn_gate"], mats["ffn_up"]]),
            w_down=mats["ffn_down"],
        )

    def reset(self) -> None:
        self.n_past = 0

    def step(self, token: int) -> Array:
        """Evaluate one token at position n_past; return its logits (V,)."""
        cfg = self.cfg
        pos = self.n_past
        if pos >= self.n_ctx:
            raise ContextOverflow(f"the context of {self.n_ctx} tokens is full")
        te = self.tok_embd
        x = (te.q[:, token] * te.d[:, token, None]).reshape(-1)  # (nb, 32) -> (D,)
        cos, sin = rope_cache(pos, cfg.n_rot, cfg.rope_base)
        n_kv = n_kv_cells(pos + 1, self.n_ctx)
        hq, hkv, dh = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        for il, layer in enumerate(self.layers):
            h = rms_norm(x, layer.attn_norm, cfg.norm_eps)
            qkv = matvec(layer.wqkv, h)
            q = rope_normal(qkv[: hq * dh].reshape(hq, dh), cos, sin)
            k = rope_normal(qkv[hq * dh : (hq + hkv) * dh].reshape(hkv, dh), cos, sin)
            self.k_cache[il, pos] = round_f16(k)
            self.v_cache[il, pos] = round_f16(qkv[(hq + hkv) * dh :].reshape(hkv, dh))
            attn = self._attention(il, round_f16(q), n_kv, pos + 1)
            x = matvec(layer.wo, attn) + x
            h = rms_norm(x, layer.ffn_norm, cfg.norm_eps)
            gu = matvec(layer.w_gate_up, h)
            x = matvec(layer.w_down, swiglu(gu[: cfg.n_ff], gu[cfg.n_ff :], self.isa)) + x
        self.n_past = pos + 1
        return matvec(self.output, rms_norm(x, self.output_norm, cfg.norm_eps))

    def _attention(self, il: int, q16: Array, n_kv: int, n_valid: int) -> Array:
        """(H, Dh) F16 queries -> (H*Dh,) attention output over the first n_kv cells."""
        cfg = self.cfg
        group = cfg.n_head // cfg.n_head_kv
        k = self.k_cache[il, :n_kv].transpose(1, 0, 2)  # (Hkv, n_kv, Dh)
        v = self.v_cache[il, :n_kv].transpose(1, 2, 0)  # (Hkv, Dh, n_kv)
        kv_head = np.arange(cfg.n_head) // group
        kq = dot_f16(k[kv_head], q16[:, None, :], self.isa)  # (H, n_kv)
        scale = F32(1) / np.sqrt(F32(cfg.head_dim))  # kq_scale = 1.0f/sqrtf(n_embd_head)
        p16 = round_f16(soft_max(kq, scale, n_valid, self.isa))
        return dot_f16(v[kv_head], p16[:, None, :], self.isa).reshape(-1)  # (H*Dh,)

    def logits(self, tokens: list[int]) -> Array:
        """Reset, then evaluate tokens one at a time. (T,) -> (T, V) float32."""
        self.reset()
        return np.stack([self.step(t) for t in tokens])


_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
