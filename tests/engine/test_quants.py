"""engine.gguf.quants: every kernel against gguf-py's dequantize (the oracle), bit for bit."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGMLType
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import UnsupportedQuantType
from engine.gguf import quants
from engine.gguf.reader import GGUFFile
from tests.conftest import needs_oracle
from tests.engine.test_gguf import gguf_reader

QUANTIZED = [t for t in quants.QUANTS if quants.TYPE_SIZES[t][0] > 1]
IN_GGUF_PY = [t for t in quants.QUANTS if t != GGMLType.Q8_K]  # gguf-py has no Q8_K


def assert_same_bits(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal float32 bit patterns, except that any NaN matches any NaN (payloads may differ)."""
    assert ours.dtype == ref.dtype == np.float32
    assert ours.shape == ref.shape
    if np.array_equal(ours.view(np.uint32), ref.view(np.uint32)):
        return
    nan = np.isnan(ours)
    np.testing.assert_array_equal(nan, np.isnan(ref))
    np.testing.assert_array_equal(ours.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


def gguf_py_dequantize(raw: np.ndarray, t: GGMLType, n_rows: int) -> np.ndarray:
    """gguf-py's result for `raw` laid out as GGUFReader gives a tensor: (rows, row bytes)."""
    rows = raw.reshape(n_rows, -1)
    if t == GGMLType.F32:
        rows = rows.view(np.float32)
    elif t == GGMLType.F16:
        rows = rows.view(np.float16)
    with np.errstate(all="ignore"):  # NaN/inf scales are part of the input space
        return gguf.quants.dequantize(rows, t).astype(np.float32, copy=False)


def make_finite(bits: np.ndarray, exponent: int) -> None:
    """Where the exponent bits are all ones (inf/NaN), clear the lowest of them, in place."""
    lowest = exponent & -exponent
    bits[(bits & exponent) == exponent] ^= lowest


@st.composite
def finite_blocks(draw: st.DrawFn, t: GGMLType) -> tuple[np.ndarray, int]:
    """(raw bytes, rows): random blocks whose f16/f32 values and scale fields are finite."""
    block, size = quants.TYPE_SIZES[t]
    n_rows = draw(st.integers(1, 3))
    n_blocks = n_rows * draw(st.integers(1, 4)) * (8 if block == 1 else 1)
    data = draw(st.binary(min_size=n_blocks * size, max_size=n_blocks * size))
    blocks = np.frombuffer(data, np.uint8).reshape(n_blocks, size).copy()
    if t in (GGMLType.F32, GGMLType.BF16):  # clear the lowest exponent bit where all are set
        bits = blocks.view("<u4" if t == GGMLType.F32 else "<u2")
        make_finite(bits, 0x7F800000 if t == GGMLType.F32 else 0x7F80)
    fields = (0,) if t == GGMLType.F16 else quants.F16_SCALE_OFFSETS.get(t, ())
    for at in fields:
        make_finite(blocks[:, at : at + 2].view("<u2"), 0x7C00)
    return blocks.reshape(-1), n_rows


@pytest.mark.parametrize("t", IN_GGUF_PY, ids=lambda t: t.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_finite_blocks_match_gguf_py(t: GGMLType, data: st.DataObject) -> None:
    raw, n_rows = data.draw(finite_blocks(t))
    block, size = quants.TYPE_SIZES[t]
    shape = (n_rows, raw.size // size * block // n_rows)
    ours = quants.dequantize(raw, t, shape)
    assert np.isfinite(ours).all()
    assert_same_bits(ours, gguf_py_dequantize(raw, t, n_rows))


@pytest.mark.parametrize("t", IN_GGUF_PY, ids=lambda t: t.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_arbitrary_bytes_match_gguf_py(t: GGMLType, data: st.DataObject) -> None:
    """Any bytes at all, so scales may be NaN, inf or subnormal: NaN must stay NaN."""
    block, size = quants.TYPE_SIZES[t]
    n_blocks = data.draw(st.integers(1, 6)) * (2 if block == 1 else 1)
    raw = np.frombuffer(
        data.draw(st.binary(min_size=n_blocks * size, max_size=n_blocks * size)), np.uint8
    )
    ours = quants.dequantize(raw, t, (n_blocks * block,))
    assert_same_bits(ours, gguf_py_dequantize(raw, t, 1).reshape(-1))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_q8_k_is_f32_scale_times_int8(data: st.DataObject) -> None:
    """gguf-py has no Q8_K: check ggml's formula y = d * qs (bsums are not read)."""
    n = data.draw(st.integers(1, 4))
    d = np.array(data.draw(st.lists(st.floats(width=32), min_size=n, max_size=n)), np.float32)
    qs = np.frombuffer(data.draw(st.binary(min_size=n * 256, max_size=n * 256)), np.int8)
    bsums = np.frombuffer(data.draw(st.binary(min_size=n * 32, max_size=n * 32)), np.uint8)
    raw = np.concatenate(
        [d.view(np.uint8).reshape(n, 4), qs.view(np.uint8).reshape(n, 256), bsums.reshape(n, 32)],
        axis=1,
    ).reshape(-1)
    with np.errstate(all="ignore"):
        expected = (d[:, None] * qs.reshape(n, 256).astype(np.float32)).reshape(-1)
    assert_same_bits(quants.dequantize(raw, GGMLType.Q8_K, (n * 256,)), expected)


def _libggml() -> ctypes.CDLL:
    import llama_cpp

    return ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("t", QUANTIZED, ids=lambda t: t.name)
def test_random_blocks_match_libggml(t: GGMLType) -> None:
    """The C `dequantize_row_*` of llama.cpp, live (covers Q8_K, which gguf-py lacks)."""
    block, size = quants.TYPE_SIZES[t]
    rng = np.random.default_rng(int(t))
    raw = rng.integers(0, 256, size=(64, size), dtype=np.uint8)
    for at in quants.F16_SCALE_OFFSETS.get(t, ()):
        raw[:, at : at + 2] = (
            rng.standard_normal(64).astype(np.float16).view(np.uint8).reshape(64, 2)
        )
    if t == GGMLType.Q8_K:
        raw[:, 0:4] = rng.standard_normal(64).astype(np.float32).view(np.uint8).reshape(64, 4)
    out = np.empty(64 * block, np.float32)
    fn = getattr(_libggml(), f"dequantize_row_{t.name.lower().replace('_k', '_K')}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(raw.ctypes.data, out.ctypes.data, out.size)
    assert_same_bits(quants.dequantize(raw.reshape(-1), t, out.shape), out)


def f16_bytes(x: float) -> np.ndarray:
    return np.array([x], np.float16).view(np.uint8)


def test_q8_0_hand_built_block() -> None:
    d = f16_bytes(0.5)
    qs = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    raw = np.concatenate([d, qs])
    np.testing.assert_array_equal(
        quants.dequantize(raw, GGMLType.Q8_0, (32,)), np.arange(-8, 8, 0.5)
    )


def test_q4_0_hand_built_block() -> None:
    # qs[j] = 0x8F: element j (low nibble) is 15 - 8 = 7, element j + 16 (high) is 8 - 8 = 0.
    raw = np.concatenate([f16_bytes(-2), np.full(16, 0x8F, np.uint8)])
    expected = np.array([-14.0] * 16 + [0.0] * 16, np.float32)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_0, (32,)), expected)


def test_q4_1_hand_built_block() -> None:
    # d = 0.25, m = -1; nibbles 0..15 then 15..0: y = q / 4 - 1.
    q = np.arange(16, dtype=np.uint8)
    raw = np.concatenate([f16_bytes(0.25), f16_bytes(-1), q | ((15 - q) << 4)])
    expected = np.concatenate([q, 15 - q]).astype(np.float32) / 4 - 1
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_1, (32,)), expected)


def test_q4_k_hand_built_block() -> None:
    # d = 1, dmin = 0.5; sub-block j has scale j + 1 and min 2j (j >= 4 use the split 6-bit
    # packing); every nibble is 3, so y = (j + 1) * 3 - 0.5 * 2j = 2j + 3 for all 32 elements.
    sc = np.arange(1, 9, dtype=np.uint8)
    m = np.arange(0, 16, 2, dtype=np.uint8)
    packed = np.zeros(12, np.uint8)
    packed[0:4] = sc[0:4] | ((sc[4:8] >> 4) << 6)
    packed[4:8] = m[0:4] | ((m[4:8] >> 4) << 6)
    packed[8:12] = (sc[4:8] & 15) | ((m[4:8] & 15) << 4)
    raw = np.concatenate(
        [
            f16_bytes(1),
            f16_bytes(0.5),
            packed,
            np.full(128, 0x33, np.uint8),
        ]
    )
    expected = np.repeat(np.arange(3, 19, 2, dtype=np.float32), 32)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q4_K, (256,)), expected)


def test_q6_k_hand_built_block() -> None:
    # Every code is 0b100001 = 33 (low nibble 1, high bits 2), so q = 1; scales[i] = i - 8,
    # d = 0.5: element e has y = 0.5 * (e // 16 - 8).
    ql = np.full(128, 0x11, np.uint8)
    qh = np.full(64, 0b10101010, np.uint8)
    scales = (np.arange(16) - 8).astype(np.int8).view(np.uint8)
    raw = np.concatenate([ql, qh, scales, f16_bytes(0.5)])
    expected = 0.5 * (np.arange(256) // 16 - 8).astype(np.float32)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.Q6_K, (256,)), expected)


def test_iq4_nl_hand_built_block() -> None:
    # Nibbles 0..15 (low) and 15..0 (high) index the non-linear table; d = 1.
    q = np.arange(16, dtype=np.uint8)
    raw = np.concatenate([f16_bytes(1), q | ((15 - q) << 4)])
    table = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])
    expected = np.concatenate([table, table[::-1]]).astype(np.float32)
    np.testing.assert_array_equal(quants.dequantize(raw, GGMLType.IQ4_NL, (32,)), expected)


def test_plain_int_type_id_is_accepted() -> None:
    raw = np.concatenate([f16_bytes(1), np.arange(32, dtype=np.uint8)])
    by_enum = quants.dequantize(raw, GGMLType.Q8_0, (32,))
    np.testing.assert_array_equal(quants.dequantize(raw, 8, (32,)), by_enum)


@pytest.mark.parametrize(
    ("type_id", "name"),
    [
        (GGMLType.IQ2_XXS, "IQ2_XXS"),
        (GGMLType.Q8_1, "Q8_1"),
        (int(GGMLType.TQ1_0), "TQ1_0"),
        (4, "4"),
    ],
)
def test_unsupported_type_names_the_type(type_id: int, name: str) -> None:
    with pytest.raises(UnsupportedQuantType, match=name):
        quants.dequantize(np.zeros(256, np.uint8), type_id, (256,))


def test_byte_count_must_match_shape() -> None:
    with pytest.raises(ValueError, match="cannot hold shape"):
        quants.dequantize(np.zeros(35, np.uint8), GGMLType.Q8_0, (32,))
    with pytest.raises(ValueError, match="cannot hold shape"):
        quants.dequantize(np.zeros(34, np.uint8), GGMLType.Q8_0, (2, 16))


def test_chunking_does_not_change_results() -> None:
    """Tensors longer than one chunk are cut into several kernel calls."""
    t = GGMLType.Q4_K
    n_blocks = quants.CHUNK_ELEMENTS // 256 * 2 + 3
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
    raw[:, 0:4] = rng.random((n_blocks, 2)).astype(np.float16).view(np.uint8)
    ours = quants.dequantize(raw.reshape(-1), t, (n_blocks, 256))
    assert_same_bits(ours, gguf_py_dequantize(raw.reshape(-1), t, n_blocks))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_every_tensor_of_the_real_models_matches_gguf_py(
    model: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(model)
    ours = GGUFFile(path)
    reader = gguf_reader(path)
    assert len(reader.tensors) == len(ours.tensors)
    for tensor in reader.tensors:
        info = ours.tensors[tensor.name]
        np.testing.assert_array_equal(ours.raw(tensor.name), tensor.data.view(np.uint8).reshape(-1))
        ref = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        assert_same_bits(ours.tensor(tensor.name), ref.reshape(info.shape))
