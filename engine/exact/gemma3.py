"""Bit-exact emulation of llama.cpp's one-token decode pass for gemma3 (Gemma 3 270M Q4_K_M).

Companion of engine/exact/llama.py (llama / SmolLM2), whose float32 helpers it reuses (the FMA
emulation, lane sums, hsum8, Q8_0 matmul, rms_norm, RoPE cache, F16 q.k / p.v, soft_max): read
that docstring first. Same builds (x86-64, -march=native, `isa` "avx512" or "avx2", GCC
contracting scalar a*b + c into FMA; the K-quant kernels below have no AVX512 branch of their
own, so only q.k, p.v and the softmax differ between the two), same regime: every token
evaluated alone, F16 KV cache, no flash attention. `load_exact(path, isa=...)` picks the
emulator for the GGUF's architecture.

The gemma3 graph (src/models/gemma3.cpp), op by op:
- get_rows Q8_0, then `ggml_scale` by sqrtf(n_embd): one float32 multiply.
- rms_norm + mul (attn_norm, per-head q_norm / k_norm over Dh, attn_post_norm, ffn_norm,
  ffn_post_norm, output_norm): exact.rms_norm. Gemma's (1 + w) is already folded into w.
- neox RoPE (pairs i, i + Dh/2), the same compiled `rotate_pairs` as exact.rope_normal; base
  rope_base_swa (10000) on sliding-window layers, rope_base (1e6) on the others (every 6th).
- q times f_attention_scale = 1/sqrt(Dh) (`ggml_scale`), then soft_max with scale 1.
- GQA q.k / p.v in F16 as exact.dot_f16; the sliding-window layers have their own KV cache
  (llama-kv-cache-iswa), 512 cells for n_ctx 512, so the same n_kv = max(256, pad256(n_used));
  their mask (p1 - p0 >= 512) never fires while n_ctx <= the window, which the model enforces.
- GEGLU (`ggml_vec_geglu_f32`, the GGML_GELU_FP16 branch is live): x <= -10 -> 0, x >= 10 ->
  x*g, else table[fp16(x)] * g, the table holding fp16(gelu(f)) with
  gelu(f) = 0.5f*f*(1 + tanhf(SQRT_2_OVER_PI*f*fma(GELU_COEF_A*f, f, 1))) (GCC contracts the
  inner 1 + a*f*f; checked against the library's ggml_table_gelu_f16, all 65536 entries).
- matmuls, by weight type:
  * Q8_0 and Q5_0 (tinyBLAS_Q0_AVX / vec_dot, identical here): x quantized to Q8_0, 8 `dpbusd`
    lane sums per 32-block, acc = fma(fp32(d_w*d_x), lane, acc), hsum8 (exact.matvec).
  * Q4_K: repacked at load to q4_K_8x8 (repack.cpp, AVX2 and rows % 8 == 0), so a one-token
    matmul is `ggml_gemv_q4_K_8x8_q8_K`: x quantized to Q8_K (`quantize_row_q8_K_ref`: 256-blocks,
    iscale = -127/max with max the first largest |x| *signed*, q = rint(iscale*x), d = 1/iscale
    in float32, bsums per 16); per super-block exact integers S = sum_s sc_s*dot_s and
    M = sum_s m_s*bsum_s (s: 8 sub-blocks of 32); acc = fma(float(S), fp32(d_w*d_x), acc),
    accm = fma(float(M), fp32(dmin_w*d_x), accm); out = acc - accm.
  * Q6_K (not repacked on x86): `ggml_vec_dot_q6_K_q8_K`, AVX2 branch: per super-block 8 int32
    lanes, lane l = sum over 32-chunks c of sc[2c + l//4] * dot(q6[32c+4l : +4], q8[...]) with
    q6 unsigned (0..63), minus 32*(bsum[2l]*sc[2l] + bsum[2l+1]*sc[2l+1]);
    acc = fma(fp32(d_x*d_w), float(lane), acc); hsum8.
- output: the tied token_embd Q8_0 (no final soft-capping in this model's metadata).

The K-quant integer sums can exceed 2**24, so they are formed with float64 matmuls (exact for
integers below 2**53); the float32 accumulation then goes through exact.fma_chain.

Measured against llama-cpp-python 0.3.36 (n_ctx 512, 2 threads, one `eval([tok])` per token):
logits bit-identical at all 1352 positions of the 30 golden prompts (32-token greedy
continuations) and at all 280 positions of a text crossing n_kv 256 -> 512. Cost: ~0.6 s per
token on one core, 0.34 s of it the 262144-row output matmul; load 1.6 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import ContextOverflow, UnsupportedArchitecture, UnsupportedQuantType
from engine.exact import llama as exact
from engine.gguf.reader import GGUFFile
from engine.models.config import ModelConfig

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]
Array64 = npt.NDArray[np.float64]
QK = exact.QK  # 32
QK_K = 256  # elements per K-quant super-block
OUT_CHUNK = 16384  # output-matrix rows per exact.matvec call (bounds the float64 temporaries)

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.tanhf.restype = ctypes.c_float
_LIBM.tanhf.argtypes = [ctypes.c_float]


# --- Q8_K activations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Q8KRow:
    """An activation row quantized to Q8_K blocks (`block_q8_K`)."""

    q: Array64  # (nb, 256) integer quants
    d: Array  # (nb,) float32 scale (negative when the block's largest |x| is positive)
    bsums: Array64  # (nb, 16) sums of 16 consecutive quants


def quantize_q8_k(x: Array) -> Q8KRow:
    """`quantize_row_q8_K` (x86 calls the reference). (n,) -> nb blocks of 256."""
    blocks = np.asarray(x, dtype=F32).reshape(-1, QK_K)
    first_max = np.abs(blocks).argmax(axis=1)  # the first of equal |x|, as the strict `>` loop
    mx = blocks[np.arange(blocks.shape[0]), first_max]
    with np.errstate(divide="ignore"):
        iscale = np.where(mx != 0, F32(-127) / mx, F32(0)).astype(F32)
        d = np.where(mx != 0, F32(1) / iscale, F32(0)).astype(F32)
    q = np.minimum(np.rint(blocks * iscale[:, None]), 127).astype(F64)
    return Q8KRow(q, d, q.reshape(-1, QK_K // 16, 16).sum(axis=2))


# --- K-quant weight matrices --------------------------------------------------------------


def _f16_at(blocks: npt.NDArray[np.uint8], offset: int) -> Array:
    """(rows, nb, bytes) -> (nb, rows) float32 of the F16 at byte offset."""
    half = blocks[..., offset : offset + 2].copy().view(np.float16)[..., 0]
    return np.ascontiguousarray(half.T.astype(F32))


@dataclass(frozen=True)
class Q4KMatrix:
    """Q4_K weights as the repacked gemv uses them, block-major."""

    wsc: Array64  # (nb, rows, 256) quant (0..15) times its sub-block scale, integer
    mins: Array64  # (nb, rows, 8) sub-block mins (6-bit integers)
    d: Array  # (nb, rows) super-block scale
    dmin: Array  # (nb, rows) super-block min scale


def _scales_mins_k4(scales: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], ...]:
    """`get_scale_min_k4` for j = 0..7: (..., 12) bytes -> (..., 8) scales, (..., 8) mins."""
    s = scales.astype(np.int64)
    lo_sc = s[..., 0:4] & 63
    lo_m = s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    hi_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return np.concatenate([lo_sc, hi_sc], axis=-1), np.concatenate([lo_m, hi_m], axis=-1)


def unpack_q4_k(raw: npt.NDArray[np.uint8], rows: int, cols: int) -> Q4KMatrix:
    """Q4_K blocks of 144 bytes: d, dmin (f16), scales[12], qs[128] (64-element chunks: low
    nibbles are elements 0..31 of the chunk, high nibbles 32..63)."""
    blocks = raw.reshape(rows, cols // QK_K, 144)
    sc, mins = _scales_mins_k4(blocks[..., 4:16])
    qs = blocks[..., 16:144].reshape(rows, -1, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, -1, QK_K)  # element order
    wsc = q.astype(F64) * np.repeat(sc, QK, axis=-1)
    return Q4KMatrix(
        wsc=np.ascontiguousarray(wsc.transpose(1, 0, 2)),
        mins=np.ascontiguousarray(mins.transpose(1, 0, 2).astype(F64)),
        d=_f16_at(blocks, 0),
        dmin=_f16_at(blocks, 2),
    )


def matvec_q4_k(w: Q4KMatrix, x: Array) -> Array:
    """`ggml_gemv_q4_K_8x8_q8_K` (AVX2). (D,) -> (rows,)."""
    a = quantize_q8_k(x)
    s = np.matmul(w.wsc, a.q[:, :, None])[..., 0]  # (nb, rows) exact integers
    bsum32 = a.bsums.reshape(-1, 8, 2).sum(axis=2)  # (nb, 8)
    m = np.matmul(w.mins, bsum32[:, :, None])[..., 0]
    scale = w.d * a.d[:, None]  # fp32(d_w * d_x)
    scale_min = w.dmin * a.d[:, None]
    acc = exact.fma_chain(np.multiply(s.astype(F32), scale, dtype=F64))
    accm = exact.fma_chain(np.multiply(m.astype(F32), scale_min, dtype=F64))
    return acc - accm


@dataclass(frozen=True)
class Q6KMatrix:
    """Q6_K weights for the AVX2 vec_dot, block-major."""

    wsc: Array64  # (nb, rows, 256) unsigned quant (0..63) times its 16-element scale, integer
    sc: Array64  # (nb, rows, 16) int8 scales
    d: Array  # (nb, rows) super-block scale


def unpack_q6_k(raw: npt.NDArray[np.uint8], rows: int, cols: int) -> Q6KMatrix:
    """Q6_K blocks of 210 bytes: ql[128], qh[64], scales[16] (int8), d (f16); two halves of
    128 elements, element 32k + l of a half from ql[l + 32(k&1)] nibble k>>1, qh[l] bits 2k."""
    blocks = raw.reshape(rows, cols // QK_K, 210)
    ql = blocks[..., 0:128].reshape(rows, -1, 2, 64).astype(np.int64)
    qh = blocks[..., 128:192].reshape(rows, -1, 2, 32).astype(np.int64)
    parts = [
        (ql[..., 0:32] & 0x0F) | ((qh & 3) << 4),
        (ql[..., 32:64] & 0x0F) | (((qh >> 2) & 3) << 4),
        (ql[..., 0:32] >> 4) | (((qh >> 4) & 3) << 4),
        (ql[..., 32:64] >> 4) | (((qh >> 6) & 3) << 4),
    ]
    q = np.stack(parts, axis=3).reshape(rows, -1, QK_K)  # (rows, nb, 256), 0..63
    sc = blocks[..., 192:208].view(np.int8).astype(F64)  # (rows, nb, 16)
    wsc = q.astype(F64) * np.repeat(sc, 16, axis=-1)
    return Q6KMatrix(
        wsc=np.ascontiguousarray(wsc.transpose(1, 0, 2)),
        sc=np.ascontiguousarray(sc.transpose(1, 0, 2)),
        d=_f16_at(blocks, 208),
    )


_LANE_OF = (np.arange(QK_K) % QK) // 4  # the int32 lane an element's product lands in


def matvec_q6_k(w: Q6KMatrix, x: Array) -> Array:
    """`ggml_vec_dot_q6_K_q8_K` (AVX2 branch). (D,) -> (rows,)."""
    a = quantize_q8_k(x)
    nb = a.q.shape[0]
    spread = np.zeros((nb, QK_K, exact.LANES), dtype=F64)
    spread[:, np.arange(QK_K), _LANE_OF] = a.q
    pos = np.matmul(w.wsc, spread)  # (nb, rows, 8)
    # q8sclsub: lane l holds 32 * (bsum[2l]*sc[2l] + bsum[2l+1]*sc[2l+1])
    pair = (w.sc * a.bsums[:, None, :]).reshape(*w.sc.shape[:2], exact.LANES, 2).sum(axis=3)
    lanes = (pos - 32 * pair).astype(F32)  # cvtepi32_ps
    scale = (a.d[:, None] * w.d)[..., None]  # fp32(d_x * d_w)
    acc = exact.fma_chain(np.multiply(lanes, scale, dtype=F64))
    return exact.hsum8(acc)


def unpack_q5_0(raw: npt.NDArray[np.uint8], rows: int, cols: int) -> exact.QuantMatrix:
    """Q5_0 blocks of 22 bytes: d (f16), qh (u32: bit j is bit 4 of element j), qs[16] (element
    j low nibble, j+16 high); value = 5-bit quant - 16."""
    blocks = raw.reshape(rows, cols // QK, 22)
    qh = blocks[..., 2:6].copy().view("<u4")[..., 0]  # (rows, nb)
    qs = blocks[..., 6:22]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
    high = ((qh[..., None] >> np.arange(QK, dtype=np.uint32)) & 1).astype(np.int16)
    q = (low | (high << 4)) - 16
    return exact.QuantMatrix(
        np.ascontiguousarray(q.transpose(1, 0, 2), dtype=F32), _f16_at(blocks, 0), None
    )


Matrix = exact.QuantMatrix | Q4KMatrix | Q6KMatrix


def matvec(w: Matrix, x: Array) -> Array:
    """W x as llama.cpp computes it for w's weight type. (D,) -> (rows,)."""
    if isinstance(w, Q4KMatrix):
        return matvec_q4_k(w, x)
    if isinstance(w, Q6KMatrix):
        return matvec_q6_k(w, x)
    return exact.matvec(w, x)


# --- elementwise kernels ------------------------------------------------------------------


@cache
def gelu_table() -> Array:
    """`ggml_table_gelu_f16` as float32: fp16(gelu(f)) for every F16 bit pattern f."""
    f = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = exact.fma(F32(0.044715) * f, f, F32(1))
        arg = (F32(0.79788456080286535587989211986876) * f) * inner
        t = np.array([_LIBM.tanhf(v) for v in arg.tolist()], dtype=F32)
        y = (F32(0.5) * f) * (F32(1) + t)
    return exact.round_f16(y)


def geglu(x: Array, g: Array) -> Array:
    """`ggml_vec_geglu_f32`, GGML_GELU_FP16 branch: gelu(x) * g via the F16 table."""
    idx = np.asarray(x, dtype=F32).astype(np.float16).view(np.uint16)
    y = gelu_table()[idx] * g
    y = np.where(x >= 10, x * g, y)
    return np.where(x <= -10, F32(0), y).astype(F32)


def rope_neox(x: Array, cos: Array, sin: Array) -> Array:
    """Half-split RoPE (pairs i, i + n/2), the compiled `rotate_pairs`. (H, Dh) -> (H, Dh)."""
    half = x.shape[-1] // 2
    x0, x1 = x[:, :half], x[:, half:]
    out = np.empty_like(x)
    out[:, :half] = exact.fma(x0, cos, -(x1 * sin))
    out[:, half:] = exact.fma(sin, x0, cos * x1)
    return out


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    attn_norm: Array
    wq: Matrix
    wk: Matrix
    wv: Matrix
    q_norm: Array
    k_norm: Array
    wo: Matrix
    post_attn_norm: Array
    ffn_norm: Array
    w_gate: Matrix
    w_up: Matrix
    w_down: Matrix
    post_ffn_norm: Array
    swa: bool


@dataclass(frozen=True)
class Embedding:
    """The Q8_0 token embedding, kept as int8 (262144 x 640 would be 671 MB as float32)."""

    q: npt.NDArray[np.int8]  # (nb, V, 32)
    d: Array  # (nb, V)

    def row(self, token: int) -> Array:
        return (self.q[:, token].astype(F32) * self.d[:, token, None]).reshape(-1)

    def matvec(self, x: Array) -> Array:
        """The tied output projection: exact.matvec over row chunks. (D,) -> (V,)."""
        n = self.d.shape[1]
        parts = []
        for r in range(0, n, OUT_CHUNK):
            rows = slice(r, min(n, r + OUT_CHUNK))
            m = exact.QuantMatrix(self.q[:, rows].astype(F32), self.d[:, rows], None)
            parts.append(exact.matvec(m, x))
        return np.concatenate(parts)


_UNPACK = {
    GGMLType.Q8_0: exact.unpack_q8_0,
    GGMLType.Q5_0: unpack_q5_0,
    GGMLType.Q4_K: unpack_q4_k,
    GGMLType.Q6_K: unpack_q6_k,
}
_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_NORMS = (
    "attn_norm",
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "ffn_norm",
    "post_ffw_norm",
)


class Gemma3ExactModel:
    """llama.cpp's single-token gemma3 forward pass, bit for bit, with its own F16 KV cache."""

    def __init__(self, path: str | Path, n_ctx: int = 512, isa: str = "avx512") -> None:
        exact.f16_lanes(isa)  # a known build
        self.isa = isa
        f = GGUFFile(path)
        cfg = ModelConfig.from_gguf(f.metadata)
        if cfg.arch != "gemma3":
            raise UnsupportedArchitecture(f"{cfg.arch} (engine.exact.gemma3 emulates gemma3)")
        if cfg.rope_freq_scale != 1.0 or cfg.rope_yarn or cfg.n_rot != cfg.head_dim:
            raise UnsupportedArchitecture("gemma3 with RoPE scaling or partial rotary dims")
        if cfg.final_softcap:
            raise UnsupportedArchitecture("gemma3 with final logit soft-capping")
        if cfg.head_dim % 64 or cfg.head_dim != cfg.head_dim_v:
            raise UnsupportedArchitecture(f"gemma3 with head_dim {cfg.head_dim}")
        self.cfg, self.n_ctx = cfg, exact.pad_kv(n_ctx)
        if cfg.sliding_window and self.n_ctx > cfg.sliding_window:
            # beyond the window the SWA cache masks and reuses cells: not emulated
            raise UnsupportedArchitecture(
                f"gemma3 with n_ctx {self.n_ctx} above the sliding window {cfg.sliding_window}"
            )
        self._f = f
        info = f.tensors["token_embd.weight"]
        if info.ggml_type != GGMLType.Q8_0:
            raise UnsupportedQuantType(info.ggml_type.name, "emulate token_embd")
        if "output.weight" in f.tensors:
            raise UnsupportedArchitecture("gemma3 with an untied output.weight")
        rows, cols = info.shape
        blocks = f.raw("token_embd.weight").reshape(rows, cols // QK, 34)
        self.embd = Embedding(
            np.ascontiguousarray(blocks[..., 2:34].view(np.int8).transpose(1, 0, 2)),
            _f16_at(blocks, 0),
        )
        self.output_norm = self._norm("output_norm.weight")
        self.layers = [self._layer(i) for i in range(cfg.n_layer)]
        kv = (self.n_ctx, cfg.n_head_kv, cfg.head_dim)
        self.k_cache = np.zeros((cfg.n_layer, *kv), dtype=F32)  # F16 values
        self.v_cache = np.zeros((cfg.n_layer, *kv), dtype=F32)
        self.n_past = 0

    def _norm(self, name: str) -> Array:
        info = self._f.tensors[name]
        if info.ggml_type != GGMLType.F32:
            raise UnsupportedQuantType(info.ggml_type.name, f"emulate norm {name}")
        return self._f.tensor(name)

    def _matrix(self, name: str) -> Matrix:
        info = self._f.tensors[name]
        unpack = _UNPACK.get(info.ggml_type)
        if unpack is None:
            raise UnsupportedQuantType(info.ggml_type.name, f"emulate matmul with {name}")
        rows, cols = info.shape
        if info.ggml_type == GGMLType.Q4_K and rows % 8:
            raise UnsupportedQuantType("Q4_K", f"emulate {name}: not repacked ({rows} rows)")
        return unpack(self._f.raw(name), rows, cols)

    def _layer(self, i: int) -> Layer:
        p = f"blk.{i}."
        known = {f"{p}{n}.weight" for n in (*_MATRICES, *_NORMS)}
        extra = sorted(n for n in self._f.tensors if n.startswith(p) and n not in known)
        if extra:
            raise UnsupportedArchitecture(f"gemma3 with tensor {extra[0]}")
        m = {n: self._matrix(f"{p}{n}.weight") for n in _MATRICES}
        nrm = {n: self._norm(f"{p}{n}.weight") for n in _NORMS}
        return Layer(
            attn_norm=nrm["attn_norm"],
            wq=m["attn_q"],
            wk=m["attn_k"],
            wv=m["attn_v"],
            q_norm=nrm["attn_q_norm"],
            k_norm=nrm["attn_k_norm"],
            wo=m["attn_output"],
            post_attn_norm=nrm["post_attention_norm"],
            ffn_norm=nrm["ffn_norm"],
            w_gate=m["ffn_gate"],
            w_up=m["ffn_up"],
            w_down=m["ffn_down"],
            post_ffn_norm=nrm["post_ffw_norm"],
            swa=bool(self.cfg.swa_layers[i]) if self.cfg.sliding_window else False,
        )

    def reset(self) -> None:
        self.n_past = 0

    def step(self, token: int) -> Array:
        """Evaluate one token at position n_past; return its logits (V,)."""
        cfg = self.cfg
        pos = self.n_past
        if pos >= self.n_ctx:
            raise ContextOverflow(f"the context of {self.n_ctx} tokens is full")
        x = self.embd.row(token) * np.sqrt(F32(cfg.n_embd))
        ropes = {
            swa: exact.rope_cache(pos, cfg.n_rot, cfg.rope_base_swa if swa else cfg.rope_base)
            for swa in {layer.swa for layer in self.layers}
        }
        n_kv = exact.n_kv_cells(pos + 1, self.n_ctx)
        hq, hkv, dh = cfg.n_head, cfg.n_head_kv, cfg.head_dim
        eps = cfg.norm_eps
        for il, layer in enumerate(self.layers):
            h = exact.rms_norm(x, layer.attn_norm, eps)
            q = self._head_norm(matvec(layer.wq, h).reshape(hq, dh), layer.q_norm)
            k = self._head_norm(matvec(layer.wk, h).reshape(hkv, dh), layer.k_norm)
            v = matvec(layer.wv, h).reshape(hkv, dh)
            cos, sin = ropes[layer.swa]
            q = rope_neox(q, cos, sin) * F32(cfg.attention_scale)
            self.k_cache[il, pos] = exact.round_f16(rope_neox(k, cos, sin))
            self.v_cache[il, pos] = exact.round_f16(v)
            attn = self._attention(il, exact.round_f16(q), n_kv, pos + 1)
            x = exact.rms_norm(matvec(layer.wo, attn), layer.post_attn_norm, eps) + x
            h = exact.rms_norm(x, layer.ffn_norm, eps)
            ffn = matvec(layer.w_down, geglu(matvec(layer.w_gate, h), matvec(layer.w_up, h)))
            x = exact.rms_norm(ffn, layer.post_ffn_norm, eps) + x
        self.n_past = pos + 1
        return self.embd.matvec(exact.rms_norm(x, self.output_norm, eps))

    def _head_norm(self, x: Array, w: Array) -> Array:
        """rms_norm of every head's row, times w. (H, Dh) -> (H, Dh)."""
        return np.stack([exact.rms_norm(row, w, self.cfg.norm_eps) for row in x])

    def _attention(self, il: int, q16: Array, n_kv: int, n_valid: int) -> Array:
        """(H, Dh) F16 queries (already scaled) -> (H*Dh,) over the first n_kv cells."""
        cfg = self.cfg
        kv_head = np.arange(cfg.n_head) // (cfg.n_head // cfg.n_head_kv)
        k = self.k_cache[il, :n_kv].transpose(1, 0, 2)  # (Hkv, n_kv, Dh)
        v = self.v_cache[il, :n_kv].transpose(1, 2, 0)  # (Hkv, Dh, n_kv)
        kq = exact.dot_f16(k[kv_head], q16[:, None, :], self.isa)  # (H, n_kv)
        p16 = exact.round_f16(exact.soft_max(kq, 1.0, n_valid, self.isa))
        return exact.dot_f16(v[kv_head], p16[:, None, :], self.isa).reshape(-1)

    def logits(self, tokens: list[int]) -> Array:
        """Reset, then evaluate tokens one at a time. (T,) -> (T, V) float32."""
        self.reset()
        return np.stack([self.step(t) for t in tokens])


def load_exact(
    path: str | Path, n_ctx: int = 512, isa: str = "avx512"
) -> exact.ExactModel | Gemma3ExactModel:
    """The bit-exact emulator of the `isa` llama.cpp build for the GGUF's architecture (llama
    or gemma3)."""
    arch = GGUFFile(path).metadata.get("general.architecture")
    if arch == "gemma3":
        return Gemma3ExactModel(path, n_ctx, isa)
    return exact.ExactModel(path, n_ctx, isa)
