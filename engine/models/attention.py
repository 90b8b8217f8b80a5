"""Causal attention over a KV cache, the same bits whatever the batch, chunking, BLAS or CPU.

q.k and p.v are exactly rounded dot products (engine/models/blockmatmul.py `rounded_matmul`): their
value does not depend on how BLAS orders the sum, nor on which keys a call covers beyond the
visible ones (masked probabilities are exact zeros). The softmax denominator is summed in float64
per fixed block of KEY_BLOCK positions (NumPy's pairwise sum over a fixed length) and the blocks
are added in position order, so a row's denominator is the same whichever query chunk it came in;
fully masked blocks add exact zeros. exp is engine/models/numerics.py's `exp_f32`. Follows
llama.cpp's non-flash `build_attn_mha` (spec: gguf-and-models.md section 4.3): softmax(scale * q.k)
with the probabilities rounded to F16 before p.v when `f16_probs`.

Since keys a query does not see change nothing, a decode step of several sequences
(`attention_steps`) lays their caches side by side over the union of their key blocks and
attends in one call: the per-call cost is paid once per step, not once per sequence. A prompt's
query chunks, and the KV heads of a decode step over long caches, are independent of each
other and run on engine/models/parallel.py's threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine.models import parallel
from engine.models.blockmatmul import norms_and_spans, rounded_matmul
from engine.models.kvcache import KEY_BLOCK, KeyStats, key_stats
from engine.models.numerics import exp_f32, round_f16_magnitudes

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]

QUERY_CHUNK = 128  # at most this many query rows per score matrix
SCORE_ELEMENTS = 1 << 21  # and at most ~this many (H, rows, S) scores: memory stays flat in S
SOFTMAX_ELEMENTS = 1 << 17  # scores per softmax block (`_probabilities`): its passes stay in cache
_GROUP = 16  # decode queries of this many sequences per batched call
_F16_QUANTUM = 2.0**-24  # divides every F16 value (its smallest subnormal)


def _visible(
    q_pos: npt.NDArray[np.int64],
    lo: int,
    hi: int,
    window: int,
    span: tuple[int, int] | None,
) -> npt.NDArray[np.bool_]:
    """(N, T, S) mask: which of the keys at positions lo..hi-1 each query at q_pos (N, T) sees."""
    qp = q_pos[:, :, None]
    k_pos = np.arange(lo, hi)[None, None, :]
    visible = k_pos <= qp
    if span:  # positions inside the span see each other both ways (llama.cpp causal_attn off)
        visible |= (span[0] <= qp) & (qp < span[1]) & (span[0] <= k_pos) & (k_pos < span[1])
    if window:
        visible &= qp - k_pos < window
    return visible


def _attend(
    q: Array,
    k64: npt.NDArray[np.float64],
    v64: npt.NDArray[np.float64],
    stats: KeyStats,
    visible: npt.NDArray[np.bool_],
    scale: float,
    f16_probs: bool,
    v_quantum: float | None,
) -> Array:
    """Queries (N, T, Hkv, G, Dh) of N sequences over their keys (N, Hkv, S, Dh), values
    (N, Hkv, S, Dv) -> (N, T, Hkv, G, Dv). The keys cover whole KEY_BLOCKs; `visible` (N, T, S)
    masks each query's. stats: the keys' norms and spans (N, Hkv, S) and a bound on |v| for
    each value dimension (N, Hkv, Dv). v_quantum: 2**-24 when the values are F16
    (`_f16_quantum`).
    """
    N, T, Hkv, G, Dh = q.shape
    S, Dv = k64.shape[2], v64.shape[3]
    q64 = q.transpose(0, 2, 1, 3, 4).reshape(N, Hkv, T * G, Dh).astype(F64)
    q_norm, q_span = norms_and_spans(q64)
    # the spans prove almost every product of F16 q and k exact: those skip the interval test
    spans = (q_span, stats.k_span)
    scores = rounded_matmul(q64, k64.transpose(0, 1, 3, 2), q_norm, stats.k_norm, spans=spans)
    p64, p_sum = _probabilities(scores.reshape(N, Hkv, T, G, S), visible, scale, f16_probs)
    p64, p_sum = p64.reshape(N, Hkv, T * G, S), p_sum.reshape(N, Hkv, T * G)
    # |p.v| <= sum(p) * max|v|: a tighter bound than the norms, since p >= 0 sums to ~1
    p_quantum = _F16_QUANTUM if f16_probs else None  # F16 probabilities, as the values
    out = rounded_matmul(p64, v64, p_sum, stats.v_max, p_quantum, v_quantum)
    return out.reshape(N, Hkv, T, G, Dv).transpose(0, 2, 1, 3, 4)


def _probabilities(
    scores: Array, visible: npt.NDArray[np.bool_], scale: float, f16_probs: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """softmax(scale * scores) over each query's visible keys, as float64, and its row sums.

    scores (N, Hkv, T, G, S), overwritten; visible (N, T, S). As ggml's soft_max: the
    denominator summed in float64 (per KEY_BLOCK, the blocks in position order: an accumulate
    adds each to the sum of those before it, and blocks a query does not see add exact zeros),
    then e times float(1 / sum), rounded to F16 when `f16_probs`. Every operation is
    elementwise or along a row, so it runs on blocks of ~SOFTMAX_ELEMENTS scores at a time
    while they are in cache, the rows of all heads and sequences alike (a decode step's few
    rows per head then take one block, not one per head); the blocking changes no value.
    """
    N, Hkv, T, G, S = scores.shape
    R = N * Hkv * T  # rows (n, h, t) of G queries each; row r sees what visible[n, t] shows
    flat = scores.reshape(R, G, S)
    hidden = ~visible
    seq, step = np.divmod(np.arange(R), Hkv * T)
    step %= T
    p64 = np.empty((R, G, S), F64)
    p_sum = np.empty((R, G), F64)
    rows = max(1, SOFTMAX_ELEMENTS // (G * S))  # a block may span heads and sequences
    for r0 in range(0, R, rows):
        b = slice(r0, min(R, r0 + rows))
        s = flat[b]  # (rows, G, S)
        s *= F32(scale)
        np.copyto(s, F32(-np.inf), where=hidden[seq[b], step[b]][:, None, :])
        s -= s.max(axis=-1, keepdims=True)
        e = exp_f32(s)  # masked keys are exactly 0
        den_blocks = e.reshape(*e.shape[:2], -1, KEY_BLOCK).sum(axis=-1, dtype=F64)
        den = np.add.accumulate(den_blocks, axis=-1)[..., -1]
        e *= (1.0 / den).astype(F32)[..., None]
        if f16_probs:
            round_f16_magnitudes(e)  # 0 <= p <= 1
        p64[b] = e
        p_sum[b] = p64[b].sum(axis=-1)
    return p64.reshape(N, Hkv, T, G, S), p_sum.reshape(N, Hkv, T, G)


def _f16_quantum(v_caches: Sequence[Array]) -> float | None:
    """2**-24, which divides every F16 value, for float16 value caches: p.v's exactness proof
    (blockmatmul's `_drop_exact`) then needs no pass over the values; None otherwise."""
    return _F16_QUANTUM if all(v.dtype == np.float16 for v in v_caches) else None


def _first_key(pos: int, window: int) -> int:
    """The first position of the first key block a query at `pos` may see."""
    return (max(0, pos - window + 1) // KEY_BLOCK if window else 0) * KEY_BLOCK


def _end_key(pos: int) -> int:
    """The end of the key block holding position `pos`."""
    return (pos // KEY_BLOCK + 1) * KEY_BLOCK


def attention(
    q: Array,
    k_cache: Array,
    v_cache: Array,
    pos0: int,
    window: int,
    scale: float = 1.0,
    f16_probs: bool = False,
    span: tuple[int, int] | None = None,
    stats: KeyStats | None = None,
) -> Array:
    """Causal (optionally sliding-window) attention of T new queries over positions 0..pos0+T-1.

    q: (T, H, Dh); k_cache: (Hkv, S_cap, Dh) after RoPE; v_cache: (Hkv, S_cap, Dv), both holding
    the new positions already. Returns (T, H, Dv). Query head h uses KV head h // (H / Hkv).
    span: positions [start, end) that also see later positions of the span (Gemma 3's image
    tokens); the sliding window still applies to earlier keys. stats: the cache's KeyStats
    (engine/models/kvcache.py), measured here when not given.
    """
    T, H, Dh = q.shape
    Hkv, Dv = v_cache.shape[0], v_cache.shape[2]
    qg = np.ascontiguousarray(q).reshape(1, T, Hkv, H // Hkv, Dh)
    out = np.empty((T, Hkv, H // Hkv, Dv), F32)
    v_quantum = _f16_quantum([v_cache])
    keys = min(pos0 + T, window) if window else pos0 + T
    rows = max(1, min(QUERY_CHUNK, SCORE_ELEMENTS // (H * keys)))  # rows never affect values
    first = _first_key(pos0, window)
    end = _end_key(max(pos0 + T, span[1] if span else 0) - 1)
    k64 = k_cache[None, :, first:end].astype(F64)  # every chunk's keys, converted once
    if stats is None:
        stats = key_stats(k_cache, v_cache)

    def chunk(t: int) -> None:
        stop = min(T, t + rows)
        p0 = pos0 + t
        lo = _first_key(p0, window)
        hi = _end_key(max(pos0 + stop, span[1] if span else 0) - 1)
        v64 = v_cache[None, :, lo:hi].astype(F64)
        visible = _visible(np.arange(p0, pos0 + stop)[None, :], lo, hi, window, span)
        chunk_stats = KeyStats(
            stats.k_norm[None, :, lo:hi], stats.k_span[None, :, lo:hi],
            stats.v_max[None, :, lo // KEY_BLOCK : hi // KEY_BLOCK].max(axis=2),
        )  # fmt: skip
        k = k64[:, :, lo - first : hi - first]
        out[t:stop] = _attend(
            qg[:, t:stop], k, v64, chunk_stats, visible, scale, f16_probs, v_quantum
        )[0]

    parallel.run_pieces(chunk, range(0, T, rows), T * H * keys)  # chunks are independent
    return out.reshape(T, H, Dv)


def attention_steps(
    q: Array,
    k_caches: Sequence[Array],
    v_caches: Sequence[Array],
    positions: Sequence[int],
    window: int,
    scale: float = 1.0,
    f16_probs: bool = False,
    stats: Sequence[KeyStats] | None = None,
) -> Array:
    """One new query for each of N sequences (a batched decode step) -> (N, H, Dv).

    Query i (q[i], (H, Dh)) is at positions[i] of its own cache (k_caches[i], v_caches[i], as in
    `attention`, stats[i] its KeyStats, measured here when not given). Each gives exactly what
    `attention` gives it alone: the sequences' keys are laid side by side over the union of
    their key blocks, and the extra positions are masked, which adds exact zeros (see the
    module docstring).
    """
    N, H, Dh = q.shape
    Hkv, Dv = v_caches[0].shape[0], v_caches[0].shape[2]
    qg = np.ascontiguousarray(q).reshape(N, 1, Hkv, H // Hkv, Dh)
    out = np.empty((N, Hkv, H // Hkv, Dv), F32)
    pos = np.asarray(positions, dtype=np.int64)
    if stats is None:
        stats = [key_stats(k, v) for k, v in zip(k_caches, v_caches, strict=True)]
    v_quantum = _f16_quantum(v_caches)
    order = np.argsort(pos, kind="stable")  # neighbours in a group span similar keys
    # Groups, and KV heads, are independent: a big step runs a group per thread, or a lone
    # sequence's heads split over the threads.
    keys = Hkv * int(pos.max() + 1) * (Dh + Dv) * N  # cache elements read
    ways = parallel.ways(keys)
    size = min(_GROUP, -(-N // ways))
    groups = [order[g0 : g0 + size] for g0 in range(0, N, size)]
    per = -(-Hkv // ways) if len(groups) < ways else Hkv

    def piece(job: tuple[npt.NDArray[np.intp], slice]) -> None:
        group, heads = job
        lo = min(_first_key(int(pos[i]), window) for i in group)
        hi = _end_key(int(pos[group].max()))
        n, n_heads = len(group), len(range(Hkv)[heads])
        k64 = np.empty((n, n_heads, hi - lo, Dh))
        v64 = np.empty((n, n_heads, hi - lo, Dv))
        k_norm = np.empty((n, n_heads, hi - lo))
        k_span = np.empty((n, n_heads, hi - lo), np.int16)
        v_max = np.empty((n, n_heads, Dv))
        for j, i in enumerate(group):
            stop = _end_key(int(pos[i]))  # at most hi, the group's last; zeros after it
            for whole, part in (
                (k64, k_caches[i]), (v64, v_caches[i]),
                (k_norm, stats[i].k_norm), (k_span, stats[i].k_span),
            ):  # fmt: skip
                whole[j, :, : stop - lo] = part[heads, lo:stop]
                whole[j, :, stop - lo :] = 0
            v_max[j] = stats[i].v_max[heads, lo // KEY_BLOCK : stop // KEY_BLOCK].max(axis=1)
        visible = _visible(pos[group][:, None], lo, hi, window, None)
        qs = qg[group][:, :, heads]
        group_stats = KeyStats(k_norm, k_span, v_max)
        out[group, heads] = _attend(
            qs, k64, v64, group_stats, visible, scale, f16_probs, v_quantum
        )[:, 0]

    jobs = [(g, slice(h, h + per)) for g in groups for h in range(0, Hkv, per)]
    parallel.run_pieces(piece, jobs, keys)
    return out.reshape(N, H, Dv)
