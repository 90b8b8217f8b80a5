"""engine/models/numerics.py: round_f16 and round_f16_magnitudes (IEEE float32 arithmetic)
equal NumPy's cast, and the F16 lookup tables are indexed as by the cast's F16 bits.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.models.numerics import (
    gelu_f16_table,
    gelu_quick,
    gelu_quick_f16_table,
    gelu_tanh,
    round_f16,
    round_f16_magnitudes,
    times_pow2,
)

F32 = np.float32
U32 = np.uint32


def _cast(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float16).astype(F32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(U32) == b.view(U32)) | (np.isnan(a) & np.isnan(b))


def test_round_f16_equals_the_cast_on_random_bit_patterns() -> None:
    bits = np.random.default_rng(0).integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(U32)
    x = bits.view(F32)
    assert _same_bits(round_f16(x), _cast(x)).all()


def test_times_pow2_is_ldexp() -> None:
    # Every exponent it takes, against the C library's ldexp, on mantissas across [0.5, 2)
    # (random bit patterns and the ends): subnormal, normal and overflowing results alike.
    bits = np.random.default_rng(3).integers(0x3F000000, 0x40000000, 20_000, dtype=U32)
    p = np.concatenate([bits.view(F32), [F32(0.5), F32(1.0), np.nextafter(F32(2), F32(0))]])
    n = np.arange(-250, 251, dtype=np.int32)
    p, n = np.broadcast_arrays(p[:, None], n[None, :])
    with np.errstate(over="ignore"):
        want = np.ldexp(p, n)
        got = times_pow2(p.copy(), n)
    assert _same_bits(got, want).all()


def test_round_f16_edges() -> None:
    # ties at every scale, both sides of 65504/65520 (inf), of 2**-14 (F16 subnormals), 2**-25
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.996, 65520, 65536, 1e30]
    edges += [2.0**-14, 2.0**-14 * (1 - 2**-12), 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001]
    edges += [3 * 2.0**-25, 1e-45, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-23]
    x = np.array(edges + [-e for e in edges], F32)
    wide = np.tile(x, 4)  # 160 values: the arithmetic; x alone (40) takes the cast
    assert _same_bits(round_f16(wide), _cast(wide)).all()
    assert _same_bits(round_f16(x), _cast(x)).all()
    assert _same_bits(round_f16(x[:1].reshape(())), _cast(x[:1])).all()  # a 0-d input


def test_round_f16_magnitudes_equals_the_cast_on_probabilities() -> None:
    # non-negative values up to 65504: softmax outputs (many F16 subnormals) and exact ties
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 0x477FE001, 2_000_000, dtype=np.uint64).astype(U32)
    p = np.concatenate([bits.view(F32), np.exp(-rng.uniform(0, 30, 100_000)).astype(F32)])
    ties = np.arange(1, 4096, dtype=F32) * F32(2.0**-25)  # halfway between F16 subnormals
    p = np.concatenate([p, ties, np.array([0.0, 1.0, 65504.0, 2.0**-14], F32)])
    want = _cast(p)
    round_f16_magnitudes(p)
    assert _same_bits(p, want).all()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True), min_size=1, max_size=64))
def test_round_f16_hypothesis(values: list[float]) -> None:
    x = np.array(values, F32).reshape(-1, 1)  # any shape, rows like activations
    assert _same_bits(round_f16(x), _cast(x)).all()
    wide = np.tile(x, (1, 64))  # 64 values and more: the arithmetic, not the cast
    assert _same_bits(round_f16(wide), _cast(wide)).all()


def test_gelu_quick_table_is_the_formula_at_every_f16_value() -> None:
    """ggml_table_gelu_quick_f16: x / (1 + expf(-1.702 x)) in float32 at each F16 value, stored
    as F16. Our exp_f32 stands in for expf; with expf correctly rounded (here: float64 exp, then
    float32) every finite entry is the same F16 value, and an F32 input uses its F16 neighbour."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = np.isfinite(x)
    x = x[finite]
    with np.errstate(over="ignore"):
        e = np.exp((np.float32(-1.702) * x).astype(np.float64)).astype(np.float32)
        want = round_f16(x * (np.float32(1.0) / (np.float32(1.0) + e)))
    np.testing.assert_array_equal(gelu_quick_f16_table(x), want)
    # a float32 input between two F16 values takes the nearest one's entry
    np.testing.assert_array_equal(
        gelu_quick_f16_table(np.float32([1.0 + 2.0**-12, 1.0 + 3 * 2.0**-12])),
        gelu_quick_f16_table(np.float32([1.0, 1.0 + 2.0**-10])),
    )


def test_f16_tables_take_the_entry_of_the_cast_f16_bits() -> None:
    """The tables are keyed by float32 bits >> 13 of round_f16(x); ggml indexes by the F16 bit
    pattern of the cast. Same entry on random float32 bit patterns (NaN for NaN) and at every
    F16 value; GELU is x from 10 up and 0 from -10 down, as ggml_vec_gelu_f32."""
    xh = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F32)
    bits = np.random.default_rng(1).integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(U32)
    x = np.concatenate([bits.view(F32), xh])
    with np.errstate(over="ignore", invalid="ignore"):
        f16_bits = x.astype(np.float16).view(np.uint16)
        quick = round_f16(gelu_quick(xh))[f16_bits]
        gelu = round_f16(gelu_tanh(xh))[f16_bits]
        gelu = np.where(x >= 10, x, np.where(x <= -10, F32(0.0), gelu))
    assert _same_bits(gelu_quick_f16_table(x), quick).all()
    assert _same_bits(gelu_f16_table(x), gelu).all()
