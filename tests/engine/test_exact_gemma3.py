"""Tests for engine/exact/gemma3.py: the gemma3 kernels on hand-derived cases, and
bit-exactness against llama.cpp's token-by-token logits on Gemma 3 270M Q4_K_M.

Golden data: tests/golden/forward_gemma3_tokenwise.json (tests/golden/make_exact_golden.py),
llama.cpp evaluating every token alone. The emulation is bit-exact there, so the check is strict:
at every position of prompt + continuation[:-1] our top-20 ids and our logits rounded to 4
decimals equal the golden ones, hence top-1 100%, KL 0 and identical greedy continuations.
CI checks GOLDEN_CASES, one case of the 30 (the emulation runs at ~1 s per token, most of it
the 262144-row output matmul); the @needs_oracle tests compare whole logit vectors with a live
llama.cpp bit for bit, and our GELU table with the library's.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import UnsupportedArchitecture
from engine.exact import gemma3 as exact_gemma3
from engine.exact import llama as exact
from engine.exact.gemma3 import Gemma3ExactModel, load_exact
from engine.gguf.quants import dequantize
from tests.agreement import compare, summarize
from tests.conftest import needs_oracle
from tests.engine.test_exact import GOLDEN_ISA, assert_bit_identical_to_live, live_isa
from tests.tiny_model import write_tiny_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "forward_gemma3_tokenwise.json"
# "What is 2+2?" (chat-wrapped, so its special tokens too): 47 positions
GOLDEN_CASES = (0,)
F32 = np.float32
F16_ONE = np.array([1.0], dtype=np.float16).view(np.uint8)


def _integer_x(n: int, rng: np.random.Generator) -> np.ndarray:
    """Integers in [-127, 127], the first of every 32 equal to -127: Q8_0 and Q8_K keep them
    exactly (d = 1), so a matmul with unit block scales is an exact integer dot product."""
    x = rng.integers(-127, 128, n).astype(F32)
    x[::32] = -127
    return x


# --- activation quantization --------------------------------------------------------------


def test_quantize_q8_k_scale_sign_follows_the_largest_value() -> None:
    x = np.zeros(256, dtype=F32)
    x[3], x[7], x[20] = 2.0, -2.0, 1.0  # |2| twice: the first (positive) one sets the scale
    row = exact_gemma3.quantize_q8_k(x)
    assert row.d[0] == F32(1) / (F32(-127) / F32(2))  # d = 1/iscale, negative
    assert (row.q[0, [3, 7, 20]] == [-127, 127, -64]).all()  # rint(-63.5) = -64 (half even)
    assert row.bsums[0, 0] == -127 + 127 and row.bsums[0, 1] == -64


def test_quantize_q8_k_zero_block() -> None:
    row = exact_gemma3.quantize_q8_k(np.zeros(256, dtype=F32))
    assert row.d[0] == 0 and not row.q.any()


# --- weight layouts and integer matmuls ---------------------------------------------------


def _random_blocks(ggml_type: GGMLType, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random quant bytes with every F16 scale field set to 1.0."""
    size, elems = {GGMLType.Q5_0: (22, 32), GGMLType.Q4_K: (144, 256), GGMLType.Q6_K: (210, 256)}[
        ggml_type
    ]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // elems, size), np.uint8)
    offsets = {GGMLType.Q5_0: (0,), GGMLType.Q4_K: (0, 2), GGMLType.Q6_K: (208,)}[ggml_type]
    for off in offsets:
        raw[..., off : off + 2] = F16_ONE
    return raw.reshape(-1)


@pytest.mark.parametrize("ggml_type", [GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q6_K])
def test_unpack_and_matvec_match_dequantize_exactly(ggml_type: GGMLType) -> None:
    rows, cols = 16, 512
    raw = _random_blocks(ggml_type, rows, cols, seed=int(ggml_type))
    unpack = {
        GGMLType.Q5_0: exact_gemma3.unpack_q5_0,
        GGMLType.Q4_K: exact_gemma3.unpack_q4_k,
        GGMLType.Q6_K: exact_gemma3.unpack_q6_k,
    }[ggml_type]
    w = unpack(raw, rows, cols)
    ref = dequantize(raw, ggml_type, (rows, cols)).astype(np.float64)  # integers (scales 1)
    x = _integer_x(cols, np.random.default_rng(7))
    got = exact_gemma3.matvec(w, x)
    assert np.array_equal(got, (ref @ x.astype(np.float64)).astype(F32))


def test_q4_k_min_term_is_subtracted_after_both_chains() -> None:
    # one super-block, all quants 0: the output is -(dmin * sum_s m_s * sum_{e in s} x_e)
    raw = np.zeros(144, dtype=np.uint8)
    raw[0:2] = F16_ONE  # d
    raw[2:4] = np.array([0.5], dtype=np.float16).view(np.uint8)  # dmin
    raw[8] = 3  # m_0 = 3 (scales[4] & 63)
    x = np.zeros(256, dtype=F32)
    x[0], x[5], x[40] = -127.0, 10.0, 100.0  # x[40] is in sub-block 1 (m_1 = 0)
    w = exact_gemma3.unpack_q4_k(raw, 1, 256)
    assert exact_gemma3.matvec(w, x)[0] == -(0.5 * 3 * (-127 + 10))


# --- elementwise --------------------------------------------------------------------------


def test_geglu_thresholds_and_table() -> None:
    x = np.array([-10.0, -4.0, 0.0, 1.0, 10.0, 12.5], dtype=F32)
    g = np.full(6, 2.0, dtype=F32)
    y = exact_gemma3.geglu(x, g)
    assert y[0] == 0 and y[2] == 0  # x <= -10 -> 0; gelu(0) = 0
    assert y[4] == 20.0 and y[5] == 25.0  # x >= 10 -> x * g
    # gelu(1) = 0.841192 (tanh form), stored as F16
    assert y[3] == F32(np.float16(0.841192)) * 2
    assert -1e-3 < y[1] < 0  # gelu(-4) = -7.0e-5: from the table, not the cut-off


def test_rope_neox_pairs_halves() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=F32)
    cos, sin = exact.rope_cache(0, 4, 10000.0)
    assert np.array_equal(exact_gemma3.rope_neox(x, cos, sin), x)  # position 0: identity
    cos, sin = np.array([0.0, 1.0], dtype=F32), np.array([1.0, 0.0], dtype=F32)
    # pair (0, 2) rotated by 90 degrees, pair (1, 3) untouched
    assert exact_gemma3.rope_neox(x, cos, sin).tolist() == [[-3.0, 2.0, 1.0, 4.0]]


# --- model-level --------------------------------------------------------------------------


def test_load_exact_dispatches_on_architecture(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitecture, match="gemma3 with head_dim 32"):
        load_exact(write_tiny_model(tmp_path / "g.gguf", "gemma3"))
    with pytest.raises(UnsupportedArchitecture, match="qwen2"):
        load_exact(write_tiny_model(tmp_path / "q.gguf", "qwen2"))


def test_rejects_context_beyond_the_sliding_window(gemma3_path: Path) -> None:
    with pytest.raises(UnsupportedArchitecture, match="sliding window"):
        Gemma3ExactModel(gemma3_path, n_ctx=1024)


def _golden_cases() -> list[dict]:
    return json.loads(GOLDEN.read_text())["cases"]


def _top(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    ids = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in ids], [round(float(row[i]), 4) for i in ids]


@pytest.fixture(scope="module")
def gemma3_exact(gemma3_path: Path) -> Gemma3ExactModel:
    assert json.loads(GOLDEN.read_text())["header"]["oracle"]["isa"] == GOLDEN_ISA
    model = load_exact(gemma3_path, isa=GOLDEN_ISA)
    assert isinstance(model, Gemma3ExactModel)
    return model


@pytest.mark.slow
def test_matches_llama_cpp_tokenwise_golden(gemma3_exact: Gemma3ExactModel) -> None:
    cases = [_golden_cases()[i] for i in GOLDEN_CASES]
    results = []
    for case in cases:
        k = len(case["top_ids"][0])
        logits = gemma3_exact.logits(case["prompt"] + case["continuation"][:-1])
        for pos, row in enumerate(logits):
            ids, vals = _top(row, k)
            assert ids == case["top_ids"][pos], f"top-{k} ids differ at position {pos}"
            assert vals == case["top_logits"][pos], f"top-{k} logits differ at position {pos}"
        results.append(compare(logits, case))
    agreement = summarize(results)
    assert agreement.top1 == 1.0 and agreement.greedy == len(cases)
    assert agreement.kl < 1e-8  # the golden's 4-decimal rounding alone gives ~2e-10


@needs_oracle
@pytest.mark.oracle
def test_gelu_table_equals_the_librarys() -> None:
    import llama_cpp

    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(glob.glob(os.path.join(lib_dir, "libggml-cpu.so"))[0])
    lib.ggml_cpu_init()
    table = (ctypes.c_uint16 * 65536).in_dll(lib, "ggml_table_gelu_f16")
    theirs = np.ctypeslib.as_array(table).view(np.float16).astype(F32)
    ours = exact_gemma3.gelu_table()
    same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
    assert same.all(), f"{(~same).sum()} entries differ, first at {np.flatnonzero(~same)[:5]}"


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_bit_identical_to_live_llama_cpp(gemma3_path: Path) -> None:
    model = load_exact(gemma3_path, isa=live_isa())
    assert_bit_identical_to_live(gemma3_path, model, b"Water is made of hydrogen and", 4)
