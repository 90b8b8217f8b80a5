"""Matrix products whose every bit is fixed by this code, whatever BLAS kernel, thread count or CPU.

A float sum depends on its order, and BLAS picks the order at run time (by kernel, shape and
thread count: the same row gave other bits with OPENBLAS_CORETYPE=Haswell vs Sandybridge, or 1 vs
2 threads). So BLAS is only ever asked for sums that have one possible value:

* Quantized weights (`QuantMatrix`), as llama.cpp computes them: the activation row is rounded to
  the weight type's Q8 type (engine/models/numerics.py), so both sides are small integers times
  per-block scales. BLAS computes each block's integer dot product, Σ q_act * q_w over B elements,
  in float32. Every product and every partial sum is an integer below 2**24 (the bound is checked
  per type in `_PLANES`), so each is exact and the block sums are the same in any order, on any
  kernel. The scales are then applied and the blocks added by NumPy elementwise operations in an
  order this module fixes (`tree_sum`), each correctly rounded IEEE float32: S times
  d = d_w * d_act for the 32-element Q8 types (both F16, so d is exact and S * d is rounded once,
  as llama.cpp's `d0*d1*sumi`), d_w * S times d_act for Q8_K's float32 d_act, plus Q4_1/Q5_1's
  min term m_w * s_act, then the blocks pairwise, as llama.cpp's per-block
  `sumf += d_w*d_a*sumi + m_w*s_a` does in its own (ISA-dependent) order.
* Float weights and attention (`rounded_matmul`): the result is defined as the float32 rounding of
  the exactly rounded float64 value of the dot product. Products of two float32 values are exact
  in float64; BLAS's float64 sum is within n * 2**-53 * |a| * |b| (Cauchy-Schwarz) of the exact
  sum in any order, so where the whole interval rounds to one float32 that value is the answer,
  and the rare element whose interval straddles a float32 rounding boundary is recomputed
  exactly (`math.fsum`), unless the inputs' quanta prove BLAS's sum was exact in any order
  (`_drop_exact`: F16 data, where such elements are mostly exact ties). The answer never
  depends on how the sum was ordered.

Elementwise NumPy arithmetic (+, -, *, /, sqrt, rint, comparisons, casts) is IEEE correctly rounded
and so identical under every SIMD dispatch; NumPy's transcendental functions are not (its float64
exp/log/pow differ between its AVX512 and AVX2 paths, float32 exp/tanh between AVX2 and
baseline), so the forward pass computes exp with `exp_f32` below.

Rows are independent: a row's result never depends on the other rows of the call, so prompt
chunking, batching several sequences and prefill vs one-token decode give the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import UnsupportedQuantType
from engine.gguf.quants import CODES, TYPE_SIZES, dequantize
from engine.models import parallel
from engine.models.numerics import (
    Rounding,
    quantize_q8_block32,
    quantize_q8_k,
    round_activations,
    vec_dot_rounding,
)

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]
Array64 = npt.NDArray[np.float64]

# Elements of the (blocks, rows, N) block-sum array per call: keeps it within the CPU caches.
CHUNK_ELEMENTS = 1 << 19
TILE_ROWS = 64  # activation rows per tile at least, so each weight tile is reused
NARROW_ROWS = 8  # tiles of at most this many rows reorder their block sums (_quant_tile)
_LOAD_ROWS = 4096  # weight outputs converted at a time while loading: bounds the scratch memory
_U = 2.0**-53  # float64 unit roundoff


@dataclass(frozen=True)
class _Planes:
    """How a quant type splits into integers and scales (byte offsets within one block)."""

    d_at: int  # the block scale d (f16, or f32 for Q8_K)
    sum_block: int  # elements per exact integer block sum (see the bound in _PLANES)
    d_f32: bool = False
    add_min_at: int | None = None  # Q4_1/Q5_1: f16 m, y = d*q + m (times Q8_1's s)
    dmin_at: int | None = None  # K-quants: f16 dmin, y = d*sc*q - dmin*mn per sub-block
    min_group: int = 0  # elements per K-quant min sub-block


# sum_block bounds: |q_act| <= 127, so a block sum of B products stays below B * 127 * max|q_w|,
# with q_w the integer weight after folding the sub-block scales in:
#   32-element types: |q| <= 128 (Q8_0), 127 (IQ4_NL), 31 (Q5_1)  -> 32 * 127 * 128 = 520,192
#   Q4_K: sc*q <= 63*15 = 945, B = 128 -> 15,361,920;  Q5_K: 63*31 = 1953, B = 64 -> 15,874,...
#   Q6_K: |sc*q| <= 128*32 = 4096, B = 32 -> 16,646,144;  IQ4_XS: 32*127 = 4064, B = 32
#   Q3_K: |sc*q| <= 32*4 = 128, Q2_K: 15*3, Q8_K: 128, B = 256 -> at most 4,161,536
# all below 2**24 = 16,777,216.
_PLANES: dict[GGMLType, _Planes] = {
    GGMLType.Q4_0: _Planes(d_at=0, sum_block=32),
    GGMLType.Q4_1: _Planes(d_at=0, sum_block=32, add_min_at=2),
    GGMLType.Q5_0: _Planes(d_at=0, sum_block=32),
    GGMLType.Q5_1: _Planes(d_at=0, sum_block=32, add_min_at=2),
    GGMLType.Q8_0: _Planes(d_at=0, sum_block=32),
    GGMLType.IQ4_NL: _Planes(d_at=0, sum_block=32),
    GGMLType.IQ4_XS: _Planes(d_at=0, sum_block=32),
    GGMLType.Q2_K: _Planes(d_at=80, sum_block=256, dmin_at=82, min_group=16),
    GGMLType.Q3_K: _Planes(d_at=108, sum_block=256),
    GGMLType.Q4_K: _Planes(d_at=0, sum_block=128, dmin_at=2, min_group=32),
    GGMLType.Q5_K: _Planes(d_at=0, sum_block=64, dmin_at=2, min_group=32),
    GGMLType.Q6_K: _Planes(d_at=208, sum_block=32),
    GGMLType.Q8_K: _Planes(d_at=0, sum_block=256, d_f32=True),
}
_FLOAT_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.F64}
_F16_ONE = np.array([1.0], "<f2").view(np.uint8)
_F32_ONE = np.array([1.0], "<f4").view(np.uint8)


@dataclass(frozen=True)
class QuantMatrix:
    """A (K, N) quantized weight: W[b*B + i, n] = d[b, n] * q[b, n, i] (+ the min terms).

    Blocks are stored (nb, N, B), each output's B integers contiguous: one (N, B) @ (B, T)
    product per block reads the weights in order, for one row (decode) as for many.
    """

    rounding: Rounding  # the activation rounding llama.cpp pairs with this type
    q: Array  # (nb, N, B) integers, sub-block scales folded in
    d: Array  # (nb, N) block scales
    add_min: Array | None  # (K/32, N) Q4_1/Q5_1 block mins m
    min_q: Array | None  # (K/256, N, 256/G) K-quant integer sub-block mins mn
    dmin: Array | None  # (K/256, N)


@dataclass(frozen=True)
class FloatMatrix:
    """A (K, N) float weight (F32/F16/BF16 values) held as float64 for `rounded_matmul`."""

    rounding: Rounding
    w: Array64  # (K, N)
    col_norm: Array64  # (N,) Euclidean norm of each column


Matrix = QuantMatrix | FloatMatrix


def _f16_field(blocks: npt.NDArray[np.uint8], at: int) -> Array:
    return blocks[:, at : at + 2].copy().view("<f2")[:, 0].astype(F32)


def _with_fields(
    blocks: npt.NDArray[np.uint8], fields: dict[int, npt.NDArray[np.uint8]]
) -> npt.NDArray[np.uint8]:
    out = blocks.copy()
    for at, value in fields.items():
        out[:, at : at + len(value)] = value
    return out


def matrix_from_gguf(raws: list[tuple[npt.NDArray[np.uint8], GGMLType, tuple[int, int]]]) -> Matrix:
    """Stack GGUF (out, in) tensors of one type along `out` into a (in, sum of outs) Matrix.

    The integers (`_block_integers`) are written into the (nb, N, B) layout a chunk of outputs at
    a time, so loading needs no full-size scratch copy of the matrix; the chunks are converted
    on the engine's threads (engine/models/parallel.py).
    """
    types = {t for _, t, _ in raws}
    if len(types) != 1:
        raise ValueError(f"one weight type per matrix, got {sorted(t.name for t in types)}")
    (ggml_type,) = types
    if ggml_type in _FLOAT_TYPES:
        w = np.concatenate([dequantize(r, t, s) for r, t, s in raws]).T.astype(F64)  # (K, N)
        return FloatMatrix(vec_dot_rounding(ggml_type), np.ascontiguousarray(w), _col_norm(w))
    planes = _PLANES.get(ggml_type)
    if planes is None:
        raise UnsupportedQuantType(ggml_type.name)
    block, size = TYPE_SIZES[ggml_type]
    K = raws[0][2][1]
    N = sum(shape[0] for _, _, shape in raws)
    B = planes.sum_block
    q = np.empty((K // B, N, B), F32)  # (nb, N, B), filled a chunk of outputs at a time
    scales, add_mins, min_ints, dmins = [], [], [], []
    n0 = 0
    chunks = []  # (rows of blocks, their first output column in q), converted below
    for raw, _, shape in raws:
        n_out, k = shape
        blocks = raw.reshape(n_out, k // block, size)
        chunks += [(blocks[r0 : r0 + _LOAD_ROWS], n0 + r0) for r0 in range(0, n_out, _LOAD_ROWS)]
        flat = blocks.reshape(-1, size)
        if planes.d_f32:
            d = flat[:, planes.d_at : planes.d_at + 4].copy().view("<f4")[:, 0]
        else:
            d = _f16_field(flat, planes.d_at)
        per = block // B  # exact-sum blocks per quant block
        scales.append(np.repeat(d.reshape(n_out, k // block), per, axis=1))  # (out, nb)
        if planes.add_min_at is not None:
            add_mins.append(_f16_field(flat, planes.add_min_at).reshape(n_out, k // 32))
        if planes.dmin_at is not None:
            zero_d = {planes.d_at: np.zeros(2, np.uint8), planes.dmin_at: _F16_ONE}
            neg = dequantize(_with_fields(flat, zero_d).reshape(-1), ggml_type, shape)
            min_ints.append(-neg[:, :: planes.min_group])  # (out, K/G): y = -1 * mn there
            dmins.append(_f16_field(flat, planes.dmin_at).reshape(n_out, k // 256))
        n0 += n_out

    def convert(chunk: tuple[npt.NDArray[np.uint8], int]) -> None:
        rows, col = chunk
        n = len(rows)
        ints = _block_integers(rows.reshape(-1, size), ggml_type, planes, (n, K))  # (n, K)
        # written in the source's order through a transposed view of q: 3x faster from int8
        np.copyto(q[:, col : col + n].transpose(1, 0, 2), ints.reshape(n, K // B, B))

    parallel.run_pieces(convert, chunks, K * N)  # chunks write disjoint columns of q
    add_min = None if not add_mins else np.ascontiguousarray(np.concatenate(add_mins).T)
    min_q = dmin = None
    if min_ints:
        per_super = 256 // planes.min_group
        mins = np.concatenate(min_ints).reshape(N, K // 256, per_super)
        min_q = np.ascontiguousarray(mins.transpose(1, 0, 2))
        dmin = np.ascontiguousarray(np.concatenate(dmins).T)
    return QuantMatrix(
        rounding=vec_dot_rounding(ggml_type),
        q=q,
        d=np.ascontiguousarray(np.concatenate(scales).T),
        add_min=add_min,
        min_q=min_q,
        dmin=dmin,
    )


def _block_integers(
    blocks: npt.NDArray[np.uint8], ggml_type: GGMLType, planes: _Planes, shape: tuple[int, int]
) -> npt.NDArray[np.int8] | Array:
    """The integers of `blocks` (n * K/block, size) as (n, K), sub-block scales folded in.

    The 32-element types give their int8 codes (engine/gguf/quants `CODES`). The 256-element
    types go through the library's own dequantizer on a copy whose block scale d is 1 (and
    dmin 0): every value it produces is then an exact small integer, in float32.
    """
    codes = CODES.get(ggml_type)
    if codes is not None:
        return codes(blocks).reshape(shape)
    unit = {planes.d_at: _F32_ONE if planes.d_f32 else _F16_ONE}
    if planes.dmin_at is not None:
        unit[planes.dmin_at] = np.zeros(2, np.uint8)
    return dequantize(_with_fields(blocks, unit).reshape(-1), ggml_type, shape)


def _col_norm(w: Array64) -> Array64:
    return np.sqrt(np.square(w).sum(axis=0))


def tree_sum(z: Array) -> Array:
    """Sum over axis 0 in a fixed pairwise order: z[i] + z[i + half], the odd one onto the last."""
    while len(z) > 1:
        half = len(z) // 2
        head = z[:half] + z[half : 2 * half]
        if len(z) % 2:
            head[-1] += z[-1]
        z = head
    return z[0]


@dataclass(frozen=True)
class _Q8:
    """Activation rows rounded to a Q8 type: integers and their per-block scales."""

    q: Array  # (T, K) integers in [-127, 127]
    d: Array  # (T, K / act_block) scales
    act_block: int
    s: Array | None = None  # Q8_1: (T, K/32) f16(d * sum q), for Q4_1/Q5_1's min term
    bsum: Array | None = None  # Q8_K: (T, K/G) integer sums of q per min sub-block


def _quantize(x: Array, w: QuantMatrix) -> _Q8:
    if w.rounding is Rounding.Q8_K:
        q, d = quantize_q8_k(x)
        if w.min_q is None:
            return _Q8(q, d, 256)
        group = 256 // w.min_q.shape[2]
        return _Q8(q, d, 256, bsum=q.reshape(len(q), -1, group).sum(axis=-1))  # exact integers
    q, d, s = quantize_q8_block32(x)
    return _Q8(q, d, 32, s=s)


def quant_matmul(x: Array, w: QuantMatrix) -> Array:
    """(T, K) float32 activations @ a quantized (K, N) weight -> (T, N), as described above.

    The work goes in tiles of rows x output columns whose (blocks, columns, rows) block-sum
    array fits CHUNK_ELEMENTS; a weight tile is then read once for TILE_ROWS rows, even for a
    vocabulary-wide output. Every element's operations are the same whatever the tiling, so a
    big product's tiles run on several threads (engine/models/parallel.py).
    """
    T, K = x.shape
    nb, N, B = w.q.shape
    a = _quantize(np.ascontiguousarray(x, dtype=F32), w)
    per = a.act_block // B  # exact-sum blocks per activation scale
    d_act = np.repeat(a.d, per, axis=1)  # (T, nb)
    out = np.empty((T, N), F32)
    row_step = min(T, max(TILE_ROWS, CHUNK_ELEMENTS // (nb * N)))
    col_step = max(1, CHUNK_ELEMENTS // (nb * row_step))
    col_step = min(col_step, -(-N // parallel.ways(T * nb * N)))  # a column tile per thread
    tiles = []
    for t0 in range(0, T, row_step):
        rows = slice(t0, min(T, t0 + row_step))
        qa = np.ascontiguousarray(a.q[rows].reshape(-1, nb, B).transpose(1, 2, 0))  # (nb, B, t)
        tiles += [(rows, slice(n0, min(N, n0 + col_step)), qa) for n0 in range(0, N, col_step)]

    def run(tile: tuple[slice, slice, Array]) -> None:
        rows, cols, qa = tile
        out[rows, cols] = _quant_tile(w, a, cols, rows, qa, d_act[rows])

    parallel.run_pieces(run, tiles, T * nb * N)
    return out


def _quant_tile(w: QuantMatrix, a: _Q8, cols: slice, rows: slice, qa: Array, d_act: Array) -> Array:
    """(t, n) outputs `cols` of activation rows `rows` (qa: their (nb, B, t) integers).

    BLAS gives the block sums as (nb, n, t). A tile of at most NARROW_ROWS rows is copied to
    (nb, t, n) first, so that its scale broadcasts run along the long contiguous columns rather
    than a few rows (2-3x faster for a decode step of a few sequences). The elementwise
    operations, and so the bits, are the same in either order.
    """
    s = np.matmul(w.q[:, cols], qa)  # (nb, n, t): exact integer block sums
    narrow = s.shape[2] <= NARROW_ROWS

    def order(x: Array) -> Array:  # a (blocks, n, t) array in the tile's order
        return np.ascontiguousarray(x.transpose(0, 2, 1)) if narrow else x

    def per_col(v: Array) -> Array:  # (blocks, n) broadcast over rows
        return v[:, None, :] if narrow else v[:, :, None]

    def per_row(v: Array) -> Array:  # (t, blocks) broadcast over columns
        v = np.ascontiguousarray(v.T)  # contiguous along the rows: 2x faster broadcasts
        return v[:, :, None] if narrow else v[:, None, :]

    s = order(s)
    if w.rounding is Rounding.Q8_BLOCK32:  # f16 * f16 scales: their product d is exact
        s *= per_col(w.d[:, cols]) * per_row(d_act)
    else:
        s *= per_col(w.d[:, cols])
        s *= per_row(d_act)
    if w.add_min is not None and a.s is not None:
        s += per_col(w.add_min[:, cols]) * per_row(a.s[rows])
    y = tree_sum(s)
    if w.min_q is not None and w.dmin is not None and a.bsum is not None:
        n_super, _, per_super = w.min_q.shape
        bs = a.bsum[rows].reshape(-1, n_super, per_super).transpose(1, 2, 0)
        m = order(np.matmul(w.min_q[:, cols], np.ascontiguousarray(bs)))  # integers
        m *= per_col(w.dmin[:, cols])
        m *= per_row(a.d[rows])
        y = y - tree_sum(m)
    return y if narrow else y.T


def rounded_matmul(
    a: Array64,
    b: Array64,
    a_norm: Array64,
    b_norm: Array64,
    a_quantum: float | None = None,
    b_quantum: float | None = None,
    spans: tuple[Spans, Spans] | None = None,
) -> Array:
    """float32 of the exactly rounded float64 (..., M, K) @ (..., K, N), for float32 inputs.

    a_norm (..., M) and b_norm (..., N) bound a's rows and b's columns so that their product
    bounds the sum of |a_ik * b_kj| (Euclidean norms do, by Cauchy-Schwarz). a_quantum and
    b_quantum, when given, are powers of two dividing every element of a or b (2**-24 for F16
    values): `_drop_exact` then uses them instead of measuring a's rows or b's columns, which
    for attention's probabilities and values costs passes over the whole cache. spans, when
    given, are `exact_spans` of a's rows (..., M) and of b's columns (..., N): the products
    they prove exact need no interval test at all (`_uncertified`). Either way the result is
    the same; see the module docstring for why it does not depend on BLAS.
    """
    r = np.matmul(a, b)
    result = r.astype(F32)
    idx = _uncertified(*spans) if spans is not None else None
    if idx is not None and len(idx[0]) <= r.size // 8:  # else wide data: the test below
        if len(idx[0]):
            _settle(a, b, _interval_unsure(r, a_norm, b_norm, a.shape[-1], idx), result)
        return result
    # BLAS's error is within K * _U * a_norm * b_norm. The interval must also hold r's float64
    # neighbours, 2**-50 * |r| <= 16 * _U * a_norm * b_norm (Cauchy-Schwarz bounds |r|); 2**-20
    # covers the rounding of the norms and of this product.
    bound = _bound(a.shape[-1], a_norm[..., :, None], b_norm[..., None, :])
    unsure = _straddles(r, bound)
    if unsure.any():
        unsure[unsure] = np.isfinite(r[unsure])  # inf and NaN are their own rounding
        _drop_exact(a, b, a_norm, b_norm, unsure, a_quantum, b_quantum)
    if unsure.any():
        _settle(a, b, np.nonzero(unsure), result)
    return result


def _bound(K: int, a_norm: Array64, b_norm: Array64) -> Array64:
    """How far BLAS's float64 sum of K products can be from the exact one, widened by r's
    float64 neighbours (see rounded_matmul); a_norm and b_norm broadcast to the products."""
    return ((K + 16) * _U * (1.0 + 2.0**-20)) * (a_norm * b_norm)


def _interval_unsure(
    r: Array64, a_norm: Array64, b_norm: Array64, K: int, idx: tuple[npt.NDArray[np.intp], ...]
) -> tuple[npt.NDArray[np.intp], ...]:
    """The elements r[idx] whose error interval straddles a float32 rounding boundary."""
    rv = r[idx]
    bound = _bound(K, a_norm[(*idx[:-1],)], b_norm[(*idx[:-2], idx[-1])])
    unsure = _straddles(rv, bound) & np.isfinite(rv)
    return tuple(i[unsure] for i in idx)


def _straddles(r: Array64, bound: Array64) -> npt.NDArray[np.bool_]:
    """Where [r - bound, r + bound] holds more than one float32 rounding."""
    return (r - bound).astype(F32) != (r + bound).astype(F32)


Spans = npt.NDArray[np.int16]
_MAX_EXACT_SPAN = 53  # float64 significand bits
_NOT_FINITE_SPAN = 1 << 12  # a vector holding inf or NaN: never proven exact


def exact_spans(x: Array64, norm: Array64) -> Spans:
    """For each vector of x's last axis, the least integer s with norm / quantum < 2**s.

    With `quanta` q_a, q_b of a row and a column, every partial sum of their products is a
    multiple of q_a * q_b of magnitude at most norm_a * norm_b (as in `_drop_exact`), so when
    s_a + s_b <= 53 every partial sum has at most 53 significant bits: BLAS's float64 sum is
    exact in whatever order it adds. For F16 data (attention's q and keys) that holds for
    almost every pair, which then needs no interval test. norm may be the computed norm:
    2**-20 covers its rounding. An all-zero vector has span 0.
    """
    ratio = (norm * (1.0 + 2.0**-20)) / quanta(x, -1)
    _, e = np.frexp(ratio)  # ratio = m * 2**e with m < 1, so ratio < 2**e
    return np.where(np.isfinite(ratio), e, _NOT_FINITE_SPAN).astype(np.int16)


def norms_and_spans(x: Array64) -> tuple[Array64, Spans]:
    """Euclidean norms of x's last-axis vectors (they only bound rounding errors: any summation
    order will do) and their `exact_spans`."""
    norm = np.sqrt(np.einsum("...i,...i->...", x, x))
    return norm, exact_spans(x, norm)


def _uncertified(a_span: Spans, b_span: Spans) -> tuple[npt.NDArray[np.intp], ...]:
    """Indices (..., i, j) of the products of a's rows and b's columns their spans do not prove
    exact. Only rows that fail against b's widest column are compared column by column."""
    worst_col = b_span.max(axis=-1, keepdims=True)
    risky = np.nonzero(a_span + worst_col > _MAX_EXACT_SPAN)  # (..., i) of such rows
    batch = risky[:-1]
    fails = a_span[risky][:, None] + b_span[batch] > _MAX_EXACT_SPAN  # (rows, N)
    n, j = np.nonzero(fails)
    return (*(i[n] for i in batch), risky[-1][n], j)


def quanta(x: Array64, axis: int) -> Array64:
    """The largest power of two dividing every element of x along `axis` (inf where all are 0)."""
    m, e = np.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1
    with np.errstate(invalid="ignore"):  # inf and NaN: no quantum; their callers never use it
        ints = np.abs(m * 2.0**53).astype(np.int64)  # the 53-bit integer significands, exactly
    low = (ints & -ints).astype(F64)  # each one's lowest set bit
    q = np.where(x != 0, np.ldexp(low, e - 53), np.inf)
    return q.min(axis=axis)


def _quanta_of(x: Array64, index: tuple[npt.NDArray[np.intp], ...]) -> Array64:
    """quanta of the (..., K) vectors x[index], computing each distinct vector's once (gathered
    from x as it is: x may be a transposed view, which reshaping would copy whole)."""
    u, inverse = np.unique(np.ravel_multi_index(index, x.shape[:-1]), return_inverse=True)
    return quanta(x[np.unravel_index(u, x.shape[:-1])], -1)[inverse]


def _drop_exact(
    a: Array64,
    b: Array64,
    a_norm: Array64,
    b_norm: Array64,
    unsure: npt.NDArray[np.bool_],
    a_quantum: float | None,
    b_quantum: float | None,
) -> None:
    """Clear `unsure` where BLAS's float64 sum was exact, so r's float32 rounding is the answer.

    Let Q = qa_i * qb_j, the quanta of a's row and b's column. Every product a_ik * b_kj is a
    multiple of Q, and so is every partial sum, in whatever order BLAS adds them (FMA
    included). Each partial sum is at most the sum of |a_ik * b_kj| <= a_norm_i * b_norm_j, so
    when that is below 2**53 * Q every partial sum is an integer multiple of Q below 2**53 of
    them: representable, hence exact. With F16 data (attention's q, k, v and probabilities, and
    F16 weights times F16-rounded activations, under llama.cpp's numerics) this settles the
    exact ties the interval test cannot; for wider data the test just fails.
    """
    idx = np.nonzero(unsure)
    rows, cols = (*idx[:-1],), (*idx[:-2], idx[-1])
    qa = a_quantum if a_quantum is not None else _quanta_of(a, rows)
    qb = b_quantum if b_quantum is not None else _quanta_of(np.swapaxes(b, -1, -2), cols)
    exact = a_norm[rows] * b_norm[cols] < 2.0**53 * (qa * qb)
    unsure[tuple(i[exact] for i in idx)] = False


def _settle(a: Array64, b: Array64, idx: tuple[npt.NDArray[np.intp], ...], result: Array) -> None:
    """Write float32(fsum(a_i * b_j)) into `result` at the indices (..., i, j) `idx`.

    The products are summed again in x87 extended precision (64-bit significand, where NumPy
    has it), which decides almost all of them; `math.fsum`, exact, decides the rest.
    """
    rows = a[(*idx[:-1],)]  # (n, K)
    cols = np.swapaxes(b, -1, -2)[(*idx[:-2], idx[-1])]  # (n, K)
    ext = np.longdouble
    prods = rows.astype(ext) * cols.astype(ext)  # exact: 48-bit products
    total = prods.sum(axis=-1)
    eps = ext(np.finfo(ext).eps)
    bound = prods.shape[-1] * eps * np.abs(prods).sum(axis=-1) + np.abs(total) * 4 * eps
    lo = (total - bound).astype(F64).astype(F32)
    hi = (total + bound).astype(F64).astype(F32)
    values = hi
    for n in np.nonzero(lo != hi)[0]:
        values[n] = F32(math.fsum(rows[n] * cols[n]))
    result[idx] = values


def _row_norm(x: Array64) -> Array64:
    return np.sqrt(np.square(x).sum(axis=-1))


def float_matmul(x: Array, w: FloatMatrix) -> Array:
    """(T, K) @ a float (K, N) weight: activations rounded as llama.cpp (F16/BF16), then exact."""
    x64 = round_activations(np.ascontiguousarray(x, dtype=F32), w.rounding).astype(F64)
    return rounded_matmul(x64, w.w, _row_norm(x64), w.col_norm)


def matmul(x: Array, w: Matrix) -> Array:
    """(T, K) @ (K, N) -> (T, N) float32, the same bits on every machine."""
    if isinstance(w, QuantMatrix):
        return quant_matmul(x, w)
    return float_matmul(x, w)


def output_columns(w: Matrix, ids: npt.NDArray[np.int64]) -> Array:
    """The weight's columns `ids` as float32 (K, len(ids)): a tied embedding's token rows."""
    if isinstance(w, FloatMatrix):
        return w.w[:, ids].astype(F32)
    nb, _, B = w.q.shape
    cols = w.q[:, ids, :] * w.d[:, ids, None]  # (nb, n, B): d * (sc*q), exact
    if w.add_min is not None:  # only 32-element types have them: one per block
        cols = cols + w.add_min[:, ids, None]
    if w.min_q is not None and w.dmin is not None:
        n_super, _, per_super = w.min_q.shape
        mins = w.dmin[:, ids, None] * w.min_q[:, ids, :]  # (K/256, n, 256/G)
        mins = np.repeat(mins, 256 // per_super, axis=2)  # (K/256, n, 256)
        cols = cols - mins.reshape(n_super, -1, 256 // B, B).transpose(0, 2, 1, 3).reshape(
            nb, -1, B
        )
    return cols.transpose(0, 2, 1).reshape(nb * B, -1).astype(F32)
