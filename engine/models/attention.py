"""Causal attention over a KV cache, the same bits whatever the batch, chunking, BLAS or CPU.

q.k and p.v are exactly rounded dot products (engine/models/blockmatmul.py `rounded_matmul`): their
value does not depend on how BLAS orders the sum, nor on which keys a call covers beyond the
visible ones (masked probabilities are exact zeros). The softmax denominator is summed in float64
per fixed block of KEY_BLOCK positions (NumPy's pairwise sum over a fixed length) and the blocks
are added in position order, so a row's denominator is the same whichever query chunk it came in;
fully masked blocks add exact zeros. exp is engine/models/numerics.py's `exp_f32`. Follows
llama.cpp's non-flash `build_attn_mha` (spec: gguf-and-models.md section 4.3): softmax(scale * q.k)
with the probabilities rounded to F16 before p.v when `f16_probs`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.models.blockmatmul import rounded_matmul
from engine.models.kvcache import KEY_BLOCK
from engine.models.numerics import exp_f32, round_f16

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]

QUERY_CHUNK = 128  # at most this many query rows per score matrix
SCORE_ELEMENTS = 1 << 21  # and at most ~this many (H, rows, S) scores: memory stays flat in S


def _norm(x: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    return np.sqrt(np.square(x).sum(axis=axis))


def _attend(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    pos0: int,
    window: int,
    scale: float,
    f16_probs: bool,
    span: tuple[int, int] | None = None,
) -> Array:
    """Queries at positions pos0.. (T, Hkv, G, Dh) over the keys they may see -> (T, Hkv, G, Dv)."""
    T, Hkv, G, Dh = q.shape
    Dv = v_cache.shape[2]
    first = max(0, pos0 - window + 1) // KEY_BLOCK if window else 0
    last = max(pos0 + T, span[1]) if span else pos0 + T
    lo, hi = first * KEY_BLOCK, -(-last // KEY_BLOCK) * KEY_BLOCK
    q64 = q.transpose(1, 0, 2, 3).reshape(Hkv, T * G, Dh).astype(F64)  # (Hkv, T*G, Dh)
    k64 = k_cache[:, lo:hi].astype(F64)  # (Hkv, S, Dh)
    v64 = v_cache[:, lo:hi].astype(F64)  # (Hkv, S, Dv)
    kt = k64.transpose(0, 2, 1)
    scores = rounded_matmul(q64, kt, _norm(q64, -1), _norm(k64, -1))
    scores = scores.reshape(Hkv, T, G, hi - lo) * F32(scale)  # (Hkv, T, G, S)
    q_pos = np.arange(pos0, pos0 + T)[:, None]  # (T, 1)
    k_pos = np.arange(lo, hi)[None, :]  # (1, S)
    visible = k_pos <= q_pos
    if span:  # positions inside the span see each other both ways (llama.cpp causal_attn off)
        visible |= (span[0] <= q_pos) & (q_pos < span[1]) & (span[0] <= k_pos) & (k_pos < span[1])
    if window:
        visible &= q_pos - k_pos < window
    scores = np.where(visible[None, :, None, :], scores, F32(-np.inf))
    m = scores.max(axis=-1, keepdims=True)
    e = exp_f32(scores - m)  # masked keys are exactly 0
    nb = (hi - lo) // KEY_BLOCK
    den_blocks = e.reshape(Hkv, T, G, nb, KEY_BLOCK).sum(axis=-1, dtype=F64)
    den = den_blocks[..., 0]
    for b in range(1, nb):  # in position order
        den = den + den_blocks[..., b]
    # as ggml's soft_max: the sum in double, then e times float(1 / sum)
    p = e * (1.0 / den).astype(F32)[..., None]
    if f16_probs:
        p = round_f16(p)
    p64 = p.reshape(Hkv, T * G, hi - lo).astype(F64)
    # |p.v| <= sum(p) * max|v|: a tighter bound than the norms, since p >= 0 sums to ~1
    out = rounded_matmul(p64, v64, p64.sum(axis=-1), np.abs(v64).max(axis=1))
    return out.reshape(Hkv, T, G, Dv).transpose(1, 0, 2, 3)


def attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    pos0: int,
    window: int,
    scale: float = 1.0,
    f16_probs: bool = False,
    span: tuple[int, int] | None = None,
) -> Array:
    """Causal (optionally sliding-window) attention of T new queries over positions 0..pos0+T-1.

    q: (T, H, Dh); k_cache: (Hkv, S_cap, Dh) after RoPE; v_cache: (Hkv, S_cap, Dv), both holding
    the new positions already. Returns (T, H, Dv). Query head h uses KV head h // (H / Hkv).
    span: positions [start, end) that also see later positions of the span (Gemma 3's image
    tokens); the sliding window still applies to earlier keys.
    """
    T, H, Dh = q.shape
    Hkv, Dv = v_cache.shape[0], v_cache.shape[2]
    qg = np.ascontiguousarray(q).reshape(T, Hkv, H // Hkv, Dh)
    out = np.empty((T, Hkv, H // Hkv, Dv), F32)
    keys = min(pos0 + T, window) if window else pos0 + T
    rows = max(1, min(QUERY_CHUNK, SCORE_ELEMENTS // (H * keys)))  # rows never affect values
    for t in range(0, T, rows):
        end = min(T, t + rows)
        out[t:end] = _attend(qg[t:end], k_cache, v_cache, pos0 + t, window, scale, f16_probs, span)
    return out.reshape(T, H, Dv)
