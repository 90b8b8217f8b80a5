"""engine/models/blockmatmul.py: integer block planes, kernel-independent products; numerics'
exp.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from engine.gguf.quants import QUANTIZERS, TYPE_SIZES, dequantize, quantize
from engine.models import blockmatmul, parallel
from engine.models.attention import attention, attention_steps
from engine.models.blockmatmul import (
    _PLANES,
    QuantMatrix,
    exact_spans,
    matmul,
    matrix_from_gguf,
    output_columns,
    quanta,
    rounded_matmul,
)
from engine.models.numerics import exp_f32, round_activations, tanh_f32
from engine.models.rope import _decimal_trig, _round_trig

K, N = 512, 48
RNG = np.random.default_rng(7)
X = RNG.standard_normal((6, K)).astype(np.float32)
TYPES = [*_PLANES, T.F16, T.BF16, T.F32]


def _random_blocks(t: T, n_out: int) -> np.ndarray:
    """Raw blocks of type t for an (n_out, K) tensor: our quantizer where there is one, else
    random bytes with every f16 scale field set to a small finite value."""
    if t in QUANTIZERS:
        w = RNG.standard_normal((n_out, K)).astype(np.float32)
        return np.ascontiguousarray(quantize(w, t)).view(np.uint8).reshape(-1)
    block, size = TYPE_SIZES[t]
    raw = RNG.integers(0, 256, (n_out * K // block, size), dtype=np.uint8)
    planes = _PLANES[t]
    for at in (planes.d_at, planes.dmin_at, planes.add_min_at):
        if at is not None and not planes.d_f32:
            raw[:, at : at + 2] = (
                np.array(RNG.uniform(0.001, 0.01, len(raw)), "<f2").view(np.uint8).reshape(-1, 2)
            )
    if planes.d_f32:
        raw[:, 0:4] = (
            np.array(RNG.uniform(0.001, 0.01, len(raw)), "<f4").view(np.uint8).reshape(-1, 4)
        )
    return raw.reshape(-1)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_planes_reproduce_the_dequantized_weight_and_its_product(t: T) -> None:
    raw = _random_blocks(t, N)
    w = matrix_from_gguf([(raw, t, (N, K))])
    deq = dequantize(raw, t, (N, K))  # (N, K)
    np.testing.assert_array_equal(output_columns(w, np.arange(N)), deq.T)
    y = matmul(X, w)
    ref = round_activations(X, w.rounding).astype(np.float64) @ deq.T.astype(np.float64)
    # Q4_1/Q5_1 add llama.cpp's f16-rounded Q8_1 block sums instead of the exact ones
    tol = 2e-3 if t in (T.Q4_1, T.Q5_1) else 1e-6
    assert np.abs(y - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("t", [T.Q4_1, T.Q4_K, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_rows_do_not_depend_on_the_batch(t: T) -> None:
    w = matrix_from_gguf([(_random_blocks(t, N), t, (N, K))])
    together = matmul(X, w)
    for i in range(len(X)):
        np.testing.assert_array_equal(matmul(X[i : i + 1], w), together[i : i + 1])


@pytest.mark.parametrize("t", [T.Q4_1, T.Q4_K, T.Q8_0], ids=lambda t: t.name)
def test_tiling_does_not_change_a_bit(t: T, monkeypatch: pytest.MonkeyPatch) -> None:
    w = matrix_from_gguf([(_random_blocks(t, N), t, (N, K))])
    x = RNG.standard_normal((70, K)).astype(np.float32)
    whole = matmul(x, w)  # one tile, its block sums in (blocks, columns, rows) order
    assert len(x) > blockmatmul.NARROW_ROWS
    monkeypatch.setattr(blockmatmul, "TILE_ROWS", 3)  # narrow tiles: (blocks, rows, columns)
    monkeypatch.setattr(blockmatmul, "CHUNK_ELEMENTS", 3 * 10 * (K // 32))  # 3 rows x 10 columns
    np.testing.assert_array_equal(matmul(x, w), whole)


@pytest.mark.skipif(
    parallel.THREADS < 2,
    reason="one CPU: no pool (the determinism matrix still runs 2 and 4 threads)",
)
def test_threads_do_not_change_a_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    w = matrix_from_gguf([(_random_blocks(T.Q4_K, N), T.Q4_K, (N, K))])
    x = RNG.standard_normal((70, K)).astype(np.float32)
    q = np.float32(0.3) * RNG.standard_normal((300, 4, 16)).astype(np.float32)
    k, v = RNG.standard_normal((2, 2, 384, 16)).astype(np.float16)
    monkeypatch.setattr(blockmatmul, "CHUNK_ELEMENTS", 3 * 10 * (K // 32))  # many tiles
    monkeypatch.setattr(parallel, "MIN_SPLIT_ELEMENTS", 2**62)  # all on this thread
    steps = q[:3], [k, k[:, ::-1], k], [v, v, v[:, ::-1]], [383, 200, 130]

    def run() -> tuple[np.ndarray, ...]:
        return (
            matmul(x, w),
            attention(q, k, v, 84, 0, 0.25, True),
            attention_steps(*steps, 0, 0.25, True),
        )

    alone = run()
    monkeypatch.setattr(parallel, "MIN_SPLIT_ELEMENTS", 0)  # every call on the pool
    with ThreadPoolExecutor(2) as callers:  # two callers share the pool (two models' batchers)
        for result in list(callers.map(lambda _: run(), range(2))) + [run()]:
            for pooled, serial in zip(result, alone, strict=True):
                np.testing.assert_array_equal(pooled, serial)


def test_block_sums_stay_exact_at_the_extremes() -> None:
    # The largest integers each type allows on both sides: the bound in _PLANES must hold.
    for t in _PLANES:
        planes = _PLANES[t]
        raw = _random_blocks(t, 4)
        w = matrix_from_gguf([(raw, t, (4, K))])
        assert isinstance(w, QuantMatrix)
        worst = np.abs(w.q).max(axis=(0, 2)).max() * 127 * planes.sum_block
        assert worst < 2**24, t.name


def test_stacked_types_keep_one_matrix_per_type() -> None:
    a, b = _random_blocks(T.Q8_0, 8), _random_blocks(T.Q4_0, 8)
    with pytest.raises(ValueError, match="one weight type"):
        matrix_from_gguf([(a, T.Q8_0, (8, K)), (b, T.Q4_0, (8, K))])
    both = matrix_from_gguf([(a, T.Q8_0, (8, K)), (a, T.Q8_0, (8, K))])
    one = matrix_from_gguf([(a, T.Q8_0, (8, K))])
    np.testing.assert_array_equal(matmul(X, both), np.concatenate([matmul(X, one)] * 2, axis=1))


def _fsum_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array(
        [[math.fsum(a[i] * b[:, j]) for j in range(b.shape[1])] for i in range(len(a))]
    ).astype(np.float32)


def test_rounded_matmul_is_the_exact_sum_rounded() -> None:
    a = RNG.standard_normal((20, 300)).astype(np.float32).astype(np.float64)
    b = RNG.standard_normal((300, 30)).astype(np.float32).astype(np.float64)
    norm_a, norm_b = np.sqrt(np.square(a).sum(1)), np.sqrt(np.square(b).sum(0))
    expected = _fsum_matmul(a, b)
    np.testing.assert_array_equal(rounded_matmul(a, b, norm_a, norm_b), expected)
    # bounds far too loose send every element through the extended-precision and fsum paths
    np.testing.assert_array_equal(rounded_matmul(a, b, norm_a * 1e12, norm_b * 1e12), expected)


def test_rounded_matmul_decides_a_sum_on_a_rounding_midpoint() -> None:
    # 1 + 2**-24 is halfway between two float32 values; a tiny third term decides the rounding,
    # whatever order a BLAS would add the terms in.
    a = np.array([[1.0, 2.0**-24, 2.0**-50]])
    for sign in (1.0, -1.0):
        b = np.array([[1.0], [1.0], [sign]])
        out = rounded_matmul(a, b, np.sqrt(np.square(a).sum(1)), np.sqrt(np.square(b).sum(0)))
        assert out[0, 0] == np.float32(1.0 + 2.0**-23 if sign > 0 else 1.0)


def test_exp_f32_accuracy_and_special_values() -> None:
    x = np.linspace(-87, 88, 1_000_001, dtype=np.float32)
    ref = np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert (np.abs(exp_f32(x) - ref) / ulp).max() < 2.0  # measured: 1.17 ulp
    special = exp_f32(np.array([-np.inf, np.inf, 0.0, -200.0, 200.0], np.float32))
    np.testing.assert_array_equal(special, [0.0, np.inf, 1.0, 0.0, np.inf])
    assert np.isnan(exp_f32(np.array([np.nan], np.float32)))[0]
    t = np.linspace(-12, 12, 100_001, dtype=np.float32)
    assert np.abs(tanh_f32(t) - np.tanh(t.astype(np.float64))).max() < 2e-7
    np.testing.assert_array_equal(tanh_f32(-t), -tanh_f32(t))


def test_rope_trig_rounds_from_the_exact_value() -> None:
    theta = np.array([0.5, 1.0, 1000.25, 65535.0, -3.0])
    for cos in (True, False):
        exact = [float(_decimal_trig(float(t), cos)) for t in theta]
        np.testing.assert_array_equal(_round_trig(theta, 1.0, cos), np.float32(exact))
        ref = np.cos(theta) if cos else np.sin(theta)
        np.testing.assert_array_equal(np.float64(exact), ref)  # libm agrees at these points


def test_quanta_are_the_largest_power_of_two_dividing_a_row() -> None:
    x = np.array([[0.75, 0.5, 0.0], [3.0, -6.0, 12.0], [0.0, 0.0, 0.0], [2.0**-24, 1.0, 0.5]])
    assert quanta(x, -1).tolist() == [0.25, 1.0, np.inf, 2.0**-24]


def test_exact_f16_ties_are_settled_by_the_quanta_to_the_correctly_rounded_value() -> None:
    # 1 + 2**-24 is exactly halfway between two float32 values: ties to even gives 1.0.
    a = np.array([[1.0, 2.0**-24]])
    b = np.array([[1.0], [1.0]])
    norm_a, norm_b = np.sqrt((a * a).sum(-1)), np.sqrt((b * b).sum(0))
    got = rounded_matmul(a, b, norm_a, norm_b)
    assert got.dtype == np.float32 and got[0, 0] == np.float32(1.0)


def test_rounded_matmul_with_quanta_is_the_float32_of_the_exact_sum() -> None:
    rng = np.random.default_rng(7)
    # F16 values over a wide range of exponents, as attention's q, k, v and probabilities are
    a = (rng.standard_normal((40, 96)) * 2.0 ** rng.integers(-12, 4, (40, 96))).astype(np.float16)
    b = (rng.standard_normal((96, 30)) * 2.0 ** rng.integers(-12, 4, (96, 30))).astype(np.float16)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.sqrt((a64 * a64).sum(-1)), np.sqrt((b64 * b64).sum(0))
    got = rounded_matmul(a64, b64, na, nb)
    want = np.array(
        [[np.float32(math.fsum(a64[i] * b64[:, j])) for j in range(30)] for i in range(40)]
    )
    assert np.array_equal(got, want)


def test_spans_prove_exactness_and_the_rest_is_still_rounded_exactly() -> None:
    rng = np.random.default_rng(11)
    # F16 rows and columns; some hold one tiny element, so their span is wide and their
    # products with other wide ones are not proven exact and take the interval test
    a = (rng.standard_normal((60, 64)) * 2.0 ** rng.integers(-6, 4, (60, 64))).astype(np.float16)
    b = (rng.standard_normal((64, 50)) * 2.0 ** rng.integers(-6, 4, (64, 50))).astype(np.float16)
    a[::3, 5], b[7, ::4] = 2.0**-24, 2.0**-20
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.sqrt((a64 * a64).sum(-1)), np.sqrt((b64 * b64).sum(0))
    sa, sb = exact_spans(a64, na), exact_spans(b64.T, nb)
    assert (na / quanta(a64, -1) < 2.0 ** sa.astype(float)).all()
    assert (na / quanta(a64, -1) >= 2.0 ** (sa - 1.0)).all()  # the least such integer
    certified = sa[:, None] + sb[None, :] <= 53
    assert 0 < certified.sum() < certified.size  # both kinds of pairs occur
    got = rounded_matmul(a64, b64, na, nb, spans=(sa, sb))
    assert np.array_equal(got, _fsum_matmul(a64, b64))
    assert np.array_equal(got, rounded_matmul(a64, b64, na, nb))  # the same as without spans
    batched = rounded_matmul(
        np.stack([a64, a64[::-1]]), np.stack([b64, b64]), np.stack([na, na[::-1]]),
        np.stack([nb, nb]), spans=(np.stack([sa, sa[::-1]]), np.stack([sb, sb])),
    )  # fmt: skip
    assert np.array_equal(batched[0], got) and np.array_equal(batched[1], got[::-1])


def test_spans_of_zero_and_non_finite_vectors() -> None:
    x = np.array([[0.0, 0.0], [np.inf, 1.0], [np.nan, 1.0], [1.0, 0.0]])
    spans = exact_spans(x, np.sqrt((x * x).sum(-1)))
    assert spans[0] == 0 and spans[3] == 1  # 1 / 1 < 2**1
    assert spans[1] > 53 and spans[2] > 53  # never proven exact
