"""engine.gguf.quants.quant and engine.gguf.quantize: reference quantizers and whole-file
re-quantization.

Oracles: gguf-py's `quantize` (legacy types, BF16), llama.cpp's `ggml_quantize_chunk` and
`llama_model_quantize` (live when llama_cpp is importable), and golden digests made by
tests/golden/make_quant_golden.py.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGMLType
from gguf import LlamaFileType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.errors import InvalidOption, UnsupportedQuantType
from engine.gguf import quants
from engine.gguf.quantize import (
    llama_cpp_order,
    plan,
    quantize_gguf,
    should_quantize,
    use_more_bits,
)
from engine.gguf.reader import GGUFFile
from tests.conftest import needs_oracle
from tests.golden.make_quant_golden import (
    FILE_TYPES_TESTED,
    GOLDEN,
    OTHER_SOURCES_TESTED,
    SOURCE_FILE_TYPES,
    build_model,
    llama_cpp_quantize,
    sha256_file,
    tensor_digests,
)

GOLDEN_DATA = json.loads(GOLDEN.read_text())
BLOCK_TYPES = [t for t in quants.QUANTIZERS if quants.TYPE_SIZES[t][0] > 1]
IN_GGUF_PY = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]


@st.composite
def rows(
    draw: st.DrawFn,
    block: int,
    max_blocks: int = 3,
    scales: tuple[float, ...] = (1e-30, 1e-3, 1, 1e3),
) -> np.ndarray:
    """(1..2, k * block) float32: finite values of mixed scale, with runs of zeros and -0.0."""
    n_rows = draw(st.integers(1, 2))
    n = block * draw(st.integers(1, max_blocks))
    scale = draw(st.sampled_from(scales))
    elements = st.one_of(
        st.floats(-4, 4, width=32).map(lambda v: np.float32(v * scale)),
        st.sampled_from([np.float32(0), np.float32(-0.0)]),
    )
    return draw(hnp.arrays(np.float32, (n_rows, n), elements=elements))


def _libggml() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_chunk.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return lib


def ggml_quantize(x: np.ndarray, t: GGMLType) -> np.ndarray:
    """llama.cpp's ggml_quantize_chunk (reference quantizers when imatrix is NULL)."""
    x = np.ascontiguousarray(x, np.float32)
    block, size = quants.TYPE_SIZES[t]
    out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
    _libggml().ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, *x.shape, None)
    return out


# --- kernels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("t", IN_GGUF_PY, ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_legacy_types_equal_gguf_py(t: GGMLType, data: st.DataObject) -> None:
    x = data.draw(rows(32))
    # When a block's extreme (its min, or its largest |x|) is a zero, ggml's scan decides between
    # -0.0 and +0.0 by position and gguf-py by NumPy's reduction, which differ in the stored fp16
    # sign (ours follows ggml: test_every_quantizer_equals_libggml). Those blocks are left out.
    blocks = x.reshape(-1, 32)
    keep = (blocks.min(axis=1) != 0) & (np.abs(blocks).max(axis=1) != 0)
    x = blocks[keep] if keep.any() else np.ones((1, 32), np.float32)
    np.testing.assert_array_equal(quants.quantize(x, t), gguf.quants.quantize(x, t))


@settings(max_examples=60, deadline=None)
@given(x=rows(1, 64))
def test_bf16_equals_gguf_py(x: np.ndarray) -> None:
    np.testing.assert_array_equal(
        quants.quantize(x, GGMLType.BF16), gguf.quants.quantize(x, GGMLType.BF16).view(np.uint8)
    )


def test_bf16_equals_gguf_py_on_every_kind_of_bit_pattern() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, size=(16, 4096), dtype=np.uint64).astype(np.uint32)
    x = x.view(np.float32)  # NaNs of both signs, infinities, subnormals, rounding carries
    expected = gguf.quants.quantize(x, GGMLType.BF16).view(np.uint8)
    np.testing.assert_array_equal(quants.quantize(x, GGMLType.BF16), expected)


def test_bf16_rounds_to_nearest_even_and_quiets_nan() -> None:
    x = np.array([[1.0, np.nan, np.inf, -0.0]], np.float32)
    x.view(np.uint32)[0, 0] = 0x3F808000  # exactly halfway: rounds to the even 0x3F80
    x.view(np.uint32)[0, 1] = 0x7F800001  # a signalling NaN
    got = quants.quantize(x, GGMLType.BF16).view("<u2")
    np.testing.assert_array_equal(got, [[0x3F80, 0x7FC0, 0x7F80, 0x8000]])


# Loose error bounds per type, as a fraction of the largest |x| of the super-block/block: each
# value lands within about half a quantization step (K-types also round their sub-scales).
# Inputs are scaled so that the fp16 block scales stay normal numbers.
ROUND_TRIP_BOUND = {
    GGMLType.Q8_0: 1 / 127,
    GGMLType.Q4_0: 1 / 7,
    GGMLType.Q4_1: 1 / 14,
    GGMLType.Q5_0: 1 / 15,
    GGMLType.Q5_1: 1 / 30,
    GGMLType.Q4_K: 1 / 6,
    GGMLType.Q5_K: 1 / 12,
    GGMLType.Q6_K: 1 / 24,
}


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_dequantized_values_are_close(t: GGMLType, data: st.DataObject) -> None:
    block = quants.TYPE_SIZES[t][0]
    x = data.draw(rows(block, 2 if block == 256 else 3, scales=(1e-2, 1, 1e3)))  # fp16 scales
    y = quants.dequantize(quants.quantize(x, t).reshape(-1), t, x.shape)
    amax = np.abs(x.reshape(-1, block)).max(axis=1, keepdims=True)
    err = np.abs(y - x).reshape(-1, block)
    assert (err <= amax * ROUND_TRIP_BOUND[t]).all()


@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_zero_blocks_quantize_to_zero(t: GGMLType) -> None:
    block = quants.TYPE_SIZES[t][0]
    x = np.zeros((1, block), np.float32)
    assert not quants.dequantize(quants.quantize(x, t).reshape(-1), t, x.shape).any()
    if t == GGMLType.Q6_K:  # ggml memsets the whole block
        assert not quants.quantize(x, t).any()


def test_q8_0_hand_computed() -> None:
    # amax 127 -> d = 1, codes are the values rounded half away from zero.
    x = np.array([[127, -2.5, 2.5, 0.5, -0.5, 1.49] + [0] * 26], np.float32)
    b = quants.quantize(x, GGMLType.Q8_0)
    assert b[0, :2].view("<f2")[0] == 1
    np.testing.assert_array_equal(b[0, 2:8].view(np.int8), [127, -3, 3, 1, -1, 1])


def test_q4_0_hand_computed() -> None:
    # max magnitude -8 (signed) -> d = 1; code = min(15, trunc(x + 8.5)).
    x = np.array([[-8, 7, 0.4, 0.6] + [0] * 12 + [8] + [0] * 15], np.float32)
    b = quants.quantize(x, GGMLType.Q4_0)
    assert b[0, :2].view("<f2")[0] == 1
    codes = np.concatenate([b[0, 2:] & 15, b[0, 2:] >> 4])
    np.testing.assert_array_equal(codes[:4], [0, 15, 8, 9])
    assert codes[16] == 15  # 8 + 8.5 = 16.5 clamps to 15


def test_signed_zeros_follow_ggml_scans() -> None:
    # ggml starts its max-|x| scan at +0, so an all-zero Q4_0 block has d = +0 / -8 = -0
    # (fp16 0x8000) even when x[0] is -0.0; Q4_1's min is the first minimum met, here -0.0.
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    assert quants.quantize(x, GGMLType.Q4_0)[0, :2].view("<u2")[0] == 0x8000
    assert quants.quantize(x, GGMLType.Q4_1)[0, 2:4].view("<u2")[0] == 0x8000
    x[0, 0], x[0, 1] = 0.0, -0.0
    assert quants.quantize(x, GGMLType.Q4_1)[0, 2:4].view("<u2")[0] == 0x0000


def test_unsupported_quantizer_and_bad_row() -> None:
    with pytest.raises(UnsupportedQuantType, match="Q2_K"):
        quants.quantize(np.zeros((1, 256), np.float32), GGMLType.Q2_K)
    with pytest.raises(ValueError, match="multiple of 256"):
        quants.quantize(np.zeros((2, 128), np.float32), GGMLType.Q4_K)


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_quantizer_equals_libggml(t: GGMLType, data: st.DataObject) -> None:
    x = data.draw(rows(quants.TYPE_SIZES[t][0], 2))
    np.testing.assert_array_equal(quants.quantize(x, t), ggml_quantize(x, t))


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize("t", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_weights_equal_libggml(t: GGMLType) -> None:
    rng = np.random.default_rng(int(t))
    x = np.concatenate(
        [
            rng.standard_normal((8, 1024)),
            rng.standard_t(2, (8, 1024)),
            rng.standard_normal((8, 1024)) * (rng.random((8, 1024)) < 0.1),
            np.abs(rng.standard_normal((4, 1024))),
            -np.abs(rng.standard_normal((4, 1024))),
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(quants.quantize(x, t), ggml_quantize(x, t))


# --- type rules -------------------------------------------------------------------------------


def test_use_more_bits() -> None:
    # n = 30 (SmolLM2): the first 3, the last 4 and every third layer from 5 (spec 3.7).
    chosen = [i for i in range(30) if use_more_bits(i, 30)]
    assert chosen == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_llama_cpp_order() -> None:
    names = ["blk.10.b", "blk.2.a", "token_embd.weight", "blk.2.Z", "output.weight", "blk.0.x"]
    assert llama_cpp_order(names) == [
        "output.weight",
        "token_embd.weight",
        "blk.0.x",
        "blk.2.Z",
        "blk.2.a",
        "blk.10.b",
    ]


@pytest.mark.parametrize(
    ("name", "n_dims", "expected"),
    [
        ("blk.0.attn_q.weight", 2, True),
        ("token_embd.weight", 2, True),
        ("blk.0.attn_norm.weight", 1, False),
        ("blk.0.attn_q_norm.weight", 2, False),
        ("blk.0.ffn_gate_inp.weight", 2, False),
        ("position_embd.weight", 2, False),
        ("v.blk.0.attn_q.weight", 2, False),
        ("mm.0.weight", 2, False),
        ("blk.0.attn_q.bias", 1, False),
        ("rope_freqs.weight", 1, False),
    ],
)
def test_should_quantize(name: str, n_dims: int, expected: bool) -> None:
    assert should_quantize(name, n_dims) is expected


def test_smollm2_q4_k_m_plan_matches_the_spec_example(smollm2_path: Path) -> None:
    """The per-layer types llama.cpp chose for SmolLM2 (spec 3.7, worked example)."""
    types = plan(GGUFFile(smollm2_path), "q4_K_M")
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
    assert types["token_embd.weight"] == GGMLType.Q8_0
    for i in range(30):
        ffn_down, attn_v = types[f"blk.{i}.ffn_down.weight"], types[f"blk.{i}.attn_v.weight"]
        assert ffn_down == (GGMLType.Q6_K if i in more else GGMLType.Q4_K)
        assert attn_v == (GGMLType.Q8_0 if i in more else GGMLType.Q5_0)
        assert types[f"blk.{i}.attn_q.weight"] == GGMLType.Q5_0
        assert types[f"blk.{i}.attn_norm.weight"] == GGMLType.F32
    s = plan(GGUFFile(smollm2_path), "Q4_K_S")
    assert [i for i in range(30) if s[f"blk.{i}.ffn_down.weight"] == GGMLType.Q5_K] == [0, 1, 2]
    assert [i for i in range(30) if s[f"blk.{i}.attn_v.weight"] == GGMLType.Q5_1] == [0, 1, 2, 3]


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_smollm2_requantized_by_llama_cpp_has_our_types(smollm2_path: Path, tmp_path: Path) -> None:
    """llama.cpp (allow_requantize) on the real model: same types, and the same bytes for a few
    tensors quantized from our bit-exact dequantization of the Q4_1/Q8_0 source."""
    import llama_cpp

    dst = tmp_path / "q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = 15, True, 2
    assert (
        llama_cpp.llama_model_quantize(str(smollm2_path).encode(), str(dst).encode(), params) == 0
    )
    src, out = GGUFFile(smollm2_path), GGUFFile(dst)
    types = plan(src, "q4_K_M")
    assert {n: i.ggml_type for n, i in out.tensors.items()} == types
    for name in ("blk.0.attn_v.weight", "blk.3.ffn_down.weight", "blk.5.ffn_down.weight"):
        ours = quants.quantize(src.tensor(name), types[name])
        np.testing.assert_array_equal(ours.reshape(-1), out.raw(name))


# --- whole files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The golden model stored as F16 (the main case), BF16 and F32."""
    out = {}
    for dtype in SOURCE_FILE_TYPES:
        out[dtype.name] = tmp_path_factory.mktemp("quant") / f"{dtype.name}.gguf"
        build_model(out[dtype.name], dtype=dtype)
    return out


@pytest.fixture(scope="module")
def f16_model(models: dict[str, Path]) -> Path:
    return models["F16"]


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_golden_model_is_reproducible(models: dict[str, Path], dtype: str) -> None:
    assert sha256_file(models[dtype]) == GOLDEN_DATA["source_sha256"][dtype]


@pytest.mark.parametrize("file_type", FILE_TYPES_TESTED)
def test_every_tensor_equals_llama_cpp_golden(
    f16_model: Path, tmp_path: Path, file_type: str
) -> None:
    dst = tmp_path / "out.gguf"
    quantize_gguf(f16_model, dst, file_type)
    assert tensor_digests(dst) == GOLDEN_DATA["quantized"][file_type]
    assert sha256_file(dst) == GOLDEN_DATA["files"]["F16"][file_type]  # metadata, layout too


@pytest.mark.parametrize("file_type", OTHER_SOURCES_TESTED)
@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_bf16_and_f32_sources_equal_llama_cpp_golden(
    models: dict[str, Path], tmp_path: Path, dtype: str, file_type: str
) -> None:
    dst = tmp_path / "out.gguf"
    quantize_gguf(models[dtype], dst, file_type)
    assert sha256_file(dst) == GOLDEN_DATA["files"][dtype][file_type]


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize(
    ("dtype", "file_type"),
    [("F16", t) for t in FILE_TYPES_TESTED]
    + [(d, t) for d in ("BF16", "F32") for t in OTHER_SOURCES_TESTED],
)
def test_whole_files_equal_llama_cpp_live(
    models: dict[str, Path], tmp_path: Path, dtype: str, file_type: str
) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    quantize_gguf(models[dtype], ours, file_type)
    llama_cpp_quantize(models[dtype], theirs, file_type)
    assert tensor_digests(ours) == tensor_digests(theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_output_file_metadata_and_reader(f16_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    quantize_gguf(f16_model, dst, "Q4_k_m")  # any case, as Ollama upper-cases
    src, out = GGUFFile(f16_model), GGUFFile(dst)
    assert out.metadata["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_M
    assert out.metadata["general.quantization_version"] == 2
    for key, value in src.metadata.items():
        if key != "general.file_type":
            assert out.metadata_types[key] == src.metadata_types[key]
            np.testing.assert_array_equal(out.metadata[key], value)
    assert list(out.tensors) == llama_cpp_order(list(src.tensors))
    reader = gguf.GGUFReader(dst)  # gguf-py reads it back with the same tensors
    assert [t.name for t in reader.tensors] == list(out.tensors)
    for name in out.tensors:
        assert out.tensors[name].shape == src.tensors[name].shape
        x, y = src.tensor(name), out.tensor(name)
        assert np.abs(x - y).max() <= 0.2 * np.abs(x).max()


def test_bad_file_type_is_refused_and_nothing_is_written(f16_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    with pytest.raises(InvalidOption, match="q3_K_M.*Q4_K_M"):
        quantize_gguf(f16_model, dst, "q3_K_M")
    assert list(tmp_path.iterdir()) == []


def test_quantized_source_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedQuantType, match="Q4_1"):
        quantize_gguf(smollm2_path, tmp_path / "out.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_f16_target_copies_rows_without_rules(f16_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    quantize_gguf(f16_model, dst, "f16")
    src, out = GGUFFile(f16_model), GGUFFile(dst)
    for name, info in src.tensors.items():
        assert out.tensors[name].ggml_type == info.ggml_type
        np.testing.assert_array_equal(out.raw(name), src.raw(name))


def test_progress_reports_every_source_byte(f16_model: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    quantize_gguf(f16_model, tmp_path / "out.gguf", "q4_K_M", progress=seen.append)
    src = GGUFFile(f16_model)
    assert len(seen) == len(src.tensors)
    assert sum(seen) == sum(info.n_bytes for info in src.tensors.values())


def test_a_failure_midway_leaves_no_file(
    f16_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def failing(values: np.ndarray, t: GGMLType) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise MemoryError("simulated")
        return quants.quant.quantize(values, t)

    monkeypatch.setattr(quants, "quantize", failing)
    with pytest.raises(MemoryError):
        quantize_gguf(f16_model, tmp_path / "out.gguf", "q8_0")
    assert list(tmp_path.iterdir()) == []
