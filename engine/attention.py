"""Causal attention over a KV cache in fixed-size key blocks, batch-shape independent.

Every score and value product has a shape fixed per model, (G, Dh) @ (Dh, KEY_BLOCK) and
(G, KEY_BLOCK) @ (KEY_BLOCK, Dv) with G query heads per KV head, so BLAS computes a query row
the same way in any batch (see engine/model.py's docstring for the policy). Softmax sums and the
value sums are added block by block in block order; blocks that are fully masked for a row add
exact zeros, so how many of them a batch carries never changes a row. Follows llama.cpp's
non-flash `build_attn_mha` (spec: gguf-and-models.md section 4.3).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.kvcache import KEY_BLOCK
from engine.numerics import round_f16

F32 = np.float32
Array = npt.NDArray[np.float32]


def _attend_blocks(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    pos0: int,
    blocks: tuple[int, int],
    window: int,
    scale: float,
    f16_probs: bool,
) -> Array:
    """Attention of queries at positions pos0.. over key blocks first..last (inclusive).

    q: (T, Hkv, G, Dh); caches (Hkv, S_cap, D*); returns (T, Hkv, G, Dv). Blocks outside this
    range must be fully masked for every query here: they would only add exact zeros.
    """
    T, Hkv, G, Dh = q.shape
    Dv = v_cache.shape[2]
    first, last = blocks
    nb, lo, hi = last - first + 1, first * KEY_BLOCK, (last + 1) * KEY_BLOCK
    kb = k_cache[:, lo:hi].reshape(Hkv, nb, KEY_BLOCK, Dh).transpose(0, 1, 3, 2)  # (Hkv,nb,Dh,B)
    vb = v_cache[:, lo:hi].reshape(Hkv, nb, KEY_BLOCK, Dv)  # (Hkv, nb, B, Dv)
    scores = np.matmul(q[:, :, None], kb) * F32(scale)  # (T, Hkv, nb, G, B)
    q_pos = np.arange(pos0, pos0 + T)[:, None]  # (T, 1)
    k_pos = np.arange(lo, hi)[None, :]  # (1, nb*B)
    visible = k_pos <= q_pos
    if window:
        visible &= q_pos - k_pos < window
    scores = np.where(visible.reshape(T, 1, nb, 1, KEY_BLOCK), scores, F32(-np.inf))
    m = scores.max(axis=(2, 4), keepdims=True)  # (T, Hkv, 1, G, 1)
    e = np.exp(scores - m)  # (T, Hkv, nb, G, B); masked keys are exactly 0
    den_blocks = e.sum(axis=-1, dtype=np.float64)  # (T, Hkv, nb, G)
    den = den_blocks[:, :, 0]
    for b in range(1, nb):  # in block order: fully masked blocks add exact zeros
        den = den + den_blocks[:, :, b]
    # as ggml's soft_max: the sum in double, then e times float(1 / sum)
    p = e * (1.0 / den).astype(F32)[:, :, None, :, None]  # (T, Hkv, nb, G, B)
    if f16_probs:
        p = round_f16(p)
    out_blocks = np.matmul(p, vb)  # (T, Hkv, nb, G, Dv)
    out = out_blocks[:, :, 0]
    for b in range(1, nb):
        out = out + out_blocks[:, :, b]
    return out


def attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    pos0: int,
    window: int,
    scale: float = 1.0,
    f16_probs: bool = False,
) -> Array:
    """Causal (optionally sliding-window) attention of T new queries over positions 0..pos0+T-1.

    q: (T, H, Dh); k_cache: (Hkv, S_cap, Dh) after RoPE; v_cache: (Hkv, S_cap, Dv), both holding
    the new positions already. Returns (T, H, Dv). softmax(scale * q.k) as llama.cpp's
    soft_max_ext; `f16_probs` rounds the probabilities to F16 before p.v, as llama.cpp does.
    Keys are taken in whole KEY_BLOCKs (see the module docstring). Queries are grouped by the
    key block their own position falls in, and each group skips the blocks that are fully masked
    for all of it (later blocks, and for a sliding window earlier ones): a row's sums are the
    same either way.
    """
    T, H, Dh = q.shape
    Hkv, Dv = v_cache.shape[0], v_cache.shape[2]
    qg = np.ascontiguousarray(q).reshape(T, Hkv, H // Hkv, Dh)  # query head h uses KV head h//G
    out = np.empty((T, Hkv, H // Hkv, Dv), F32)
    t = 0
    while t < T:
        last = (pos0 + t) // KEY_BLOCK
        end = min(T, (last + 1) * KEY_BLOCK - pos0)
        first = max(0, pos0 + t - window + 1) // KEY_BLOCK if window else 0
        out[t:end] = _attend_blocks(
            qg[t:end], k_cache, v_cache, pos0 + t, (first, last), window, scale, f16_probs
        )
        t = end
    return out.reshape(T, H, Dv)
