"""Tests for engine/exact/llama.py: the emulated kernels on hand-derived cases, and bit-exactness
against llama.cpp's token-by-token logits on SmolLM2.

Golden data: tests/golden/forward_smollm2_tokenwise.json (tests/golden/make_exact_golden.py),
llama.cpp evaluating every token alone. The emulation is bit-exact there, so the check is
strict: at every position of prompt + continuation[:-1], our top-20 ids and our logits rounded
to 4 decimals equal the golden ones (hence top-1 100% and identical greedy continuations). CI
checks 2 of the 30 cases (GOLDEN_CASES; the emulation takes ~0.4 s per token, so all 30 would
take ~10 min); the @needs_oracle test compares whole logit vectors with a live llama.cpp bit for
bit, emulating the build that runs here (AVX512 or AVX2).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.errors import UnsupportedArchitecture, UnsupportedQuantType
from engine.exact import llama as exact
from engine.exact.gemma3 import Gemma3ExactModel
from engine.exact.llama import ExactModel
from tests.conftest import needs_oracle
from tests.golden.oracle_build import oracle_build
from tests.tiny_model import write_tiny_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "forward_smollm2_tokenwise.json"
# "What is 2+2?" (chat-wrapped, 47 positions), "Paris is the capital of" (36 positions)
GOLDEN_CASES = (0, 21)
GOLDEN_ISA = "avx512"  # the build that recorded the tokenwise goldens (their headers say so)
F32 = np.float32


def f32(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=F32)


# --- exact arithmetic ---------------------------------------------------------------------


def test_fma_avoids_double_rounding() -> None:
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 lies exactly halfway between two float32 values; adding
    # 2^-80 must round up. float64 would lose the 2^-80 and then round the tie to even (down).
    a = f32(1 + 2.0**-12)
    up = exact.fma(a, a, f32(2.0**-80))
    down = exact.fma(a, a, f32(-(2.0**-80)))
    assert up[0] == F32(1 + 2.0**-11 + 2.0**-23)
    assert down[0] == F32(1 + 2.0**-11)
    naive = (a.astype(np.float64) ** 2 + 2.0**-80).astype(F32)
    assert naive[0] == F32(1 + 2.0**-11)  # the case is a real double-rounding trap


def test_fma_is_correctly_rounded() -> None:
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(300).astype(F32) for _ in range(3))
    c[::3] *= F32(2.0**-30)  # addends far below the product, where float64 sums round
    for x, y, z, r in zip(a, b, c, exact.fma(a, b, c), strict=True):
        want = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        err = abs(Fraction(float(r)) - want)
        for neighbour in (np.nextafter(r, F32(np.inf)), np.nextafter(r, F32(-np.inf))):
            assert err <= abs(Fraction(float(neighbour)) - want)


def test_fma_chain_matches_fma_steps_including_the_trap() -> None:
    a = 1 + 2.0**-12
    terms = np.array([[2.0**-80], [a * a]], dtype=np.float64)  # acc = 2^-80, then the tie
    assert exact.fma_chain(terms)[0] == F32(1 + 2.0**-11 + 2.0**-23)


def test_hsum8_order() -> None:
    # ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): 2^24 + 1 ties to 2^24, then cancels against -2^24
    lanes = f32(2.0**24, 0, -(2.0**24), 0, 1, 0, 0, 0)
    assert exact.hsum8(lanes) == 0
    lanes = f32(2.0**24, 1, -(2.0**24), 0, 0, 0, 0, 0)  # l1 is added after the cancellation
    assert exact.hsum8(lanes) == 1


def test_reduce16_order() -> None:
    v = np.zeros(16, dtype=F32)
    v[0], v[8] = 2.0**24, 1  # first halving adds l0 + l8: the 1 is lost to the tie
    v[4] = -(2.0**24)
    assert exact.reduce16(v) == 0
    v[8], v[1] = 0, 1  # l1 meets the others only at the last step
    assert exact.reduce16(v) == 1


def test_round_f16_ties_to_even() -> None:
    x = f32(1 + 2.0**-11, 1 + 3 * 2.0**-11, 65520.0)
    assert list(exact.round_f16(x)) == [1.0, 1 + 2.0**-9, np.inf]


# --- kernels ------------------------------------------------------------------------------


def test_quantize_q8_rounds_half_to_even() -> None:
    x = np.zeros(32, dtype=F32)
    x[:4] = [127.0, 2.5, 3.5, -1.5]  # amax 127: d = 1, id = 1, q = rint(x)
    row = exact.quantize_q8(x)
    assert list(row.q[0, :4]) == [127, 2, 4, -2]
    assert row.d[0] == 1.0
    assert row.s[0] == 131.0  # fp16(d * sum(q))


def test_matvec_q8_0_integer_case() -> None:
    # one row, one block: weights 1..32 with d = 1, x with amax 127 (d = 1): exact integers
    w = np.zeros(34, dtype=np.uint8)
    w[0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)
    w[2:34] = np.arange(1, 33, dtype=np.int8).view(np.uint8)
    x = np.zeros(32, dtype=F32)
    x[0], x[31] = 127.0, -2.0
    m = exact.unpack_q8_0(w, 1, 32)
    assert exact.matvec(m, x)[0] == 127 * 1 - 2 * 32


def test_matvec_q4_1_adds_min_times_block_sum() -> None:
    # Q4_1 row: d = 1, m = 0.5, all nibbles 0 -> every weight is 0.5; x = 127 in one slot
    w = np.zeros(20, dtype=np.uint8)
    w[0:4] = np.array([1.0, 0.5], dtype=np.float16).view(np.uint8)
    x = np.zeros(32, dtype=F32)
    x[5] = 127.0
    m = exact.unpack_q4_1(w, 1, 32)
    assert exact.matvec(m, x)[0] == 63.5  # lanes 0, summs = m * fp16(d * 127)


@pytest.mark.parametrize("isa", exact.ISAS)
def test_v_expf_special_values_and_accuracy(isa: str) -> None:
    # AVX2: 100 and -200 take the |n| > 126 scaling (inf), -200 and -inf the |n| > 192 one (0)
    special = f32(0.0, -np.inf, 100.0, -200.0, -100.0, 88.0)
    assert list(exact.v_expf(special, isa)[:4]) == [1.0, 0.0, np.inf, 0.0]
    x = np.concatenate([np.linspace(-80, 80, 4001, dtype=F32), special[4:]])
    got = exact.v_expf(x, isa).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(F32)).astype(np.float64)
    assert (np.abs(got - want) / ulp).max() < 3.0  # documented: 1.45 ulp + 0.5 ulp rounding


def test_v_expf_builds_round_differently() -> None:
    # the two formulations (poly + 1 then scalef, vs fma(k, poly, k)) round apart somewhere
    x = np.linspace(-80, 80, 4001, dtype=F32)
    assert (exact.v_expf(x, "avx2") != exact.v_expf(x, "avx512")).any()


def test_dot_f16_accumulator_order() -> None:
    # AVX512: 64 products land in 4 accumulators of 16 lanes, reduced (a0+a2)+(a1+a3) then by
    # halving
    x = np.zeros(64, dtype=F32)
    y = np.ones(64, dtype=F32)
    x[0], x[32], x[16] = 2048.0, 0.5, -2048.0  # F16 values
    # a0 lane 0 = 2048, a2 lane 0 = 0.5 -> a0+a2 = 2048.5 exactly; a1 lane 0 = -2048 -> 0.5
    assert exact.dot_f16(x, y, "avx512") == 0.5


def test_dot_f16_final_lane_order_per_build() -> None:
    # Lanes 0, 1, 2 hold a, -a, c with c below half an ulp of a. AVX2's two hadds add
    # (l0 + l1) + (l2 + l3): a cancels first and c survives. AVX512's halving adds
    # (l0 + l2) + (l1 + l3): c is absorbed into a, then a cancels.
    x = np.zeros(64, dtype=F32)
    x[0], x[1], x[2] = 32768.0, -32768.0, 2.0**-9  # F16 values
    y = np.ones(64, dtype=F32)
    assert exact.dot_f16(x, y, "avx2") == F32(2.0**-9)
    assert exact.dot_f16(x, y, "avx512") == 0.0
    with pytest.raises(ValueError, match="isa"):
        exact.dot_f16(x, y, "sse2")


@pytest.mark.parametrize("isa", exact.ISAS)
def test_soft_max_masks_and_normalizes(isa: str) -> None:
    kq = np.zeros((1, 256), dtype=F32)
    p = exact.soft_max(kq, 0.125, 3, isa)
    assert list(p[0, :3]) == [F32(1 / 3)] * 3  # exp(0) = 1, sum 3, 1 * (float)(1/3)
    assert not p[0, 3:].any()


def test_n_kv_cells_pads_to_256() -> None:
    assert [exact.n_kv_cells(n, 512) for n in (1, 256, 257, 512)] == [256, 256, 512, 512]
    assert [exact.pad_kv(n) for n in (1, 256, 300)] == [256, 256, 512]


def test_rope_cache_position_zero_and_recurrence() -> None:
    cos, sin = exact.rope_cache(0, 64, 100000.0)
    assert (cos == 1).all() and (sin == 0).all()
    cos, sin = exact.rope_cache(1, 4, 10000.0)  # theta = 1, then 1 * powf(10000, -0.5) = 0.01
    assert cos[0] == F32(np.cos(1.0)) and sin[1] == F32(np.sin(F32(0.01)))


# --- model-level --------------------------------------------------------------------------


def test_unsupported_weight_type_is_named(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "tiny.gguf", "llama")  # mixed quants, attn_q is Q4_0
    with pytest.raises(UnsupportedQuantType) as err:
        ExactModel(path)
    assert err.value.type_name != "Q4_1"


def test_unsupported_architecture(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitecture, match="qwen2"):
        ExactModel(write_tiny_model(tmp_path / "tiny.gguf", "qwen2"))


def _golden_cases() -> list[dict]:
    return json.loads(GOLDEN.read_text())["cases"]


def _top(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    ids = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in ids], [round(float(row[i]), 4) for i in ids]


@pytest.fixture(scope="module")
def smollm2_exact(smollm2_path: Path) -> ExactModel:
    assert json.loads(GOLDEN.read_text())["header"]["oracle"]["isa"] == GOLDEN_ISA
    return ExactModel(smollm2_path, isa=GOLDEN_ISA)


@pytest.mark.slow
@pytest.mark.parametrize("index", GOLDEN_CASES)
def test_matches_llama_cpp_tokenwise_golden(smollm2_exact: ExactModel, index: int) -> None:
    case = _golden_cases()[index]
    k = len(case["top_ids"][0])
    seq = case["prompt"] + case["continuation"][:-1]
    logits = smollm2_exact.logits(seq)
    n_prompt = len(case["prompt"])
    for pos, row in enumerate(logits):
        ids, vals = _top(row, k)
        assert ids == case["top_ids"][pos], f"top-{k} ids differ at position {pos}"
        assert vals == case["top_logits"][pos], f"top-{k} logits differ at position {pos}"
    greedy = [int(np.argmax(r)) for r in logits[n_prompt - 1 :]]
    assert greedy == case["continuation"]


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_bit_identical_to_live_llama_cpp(smollm2_path: Path) -> None:
    isa = live_isa()
    model = ExactModel(smollm2_path, isa=isa)
    assert_bit_identical_to_live(smollm2_path, model, b"Water is made of hydrogen and", 3)
    if isa != GOLDEN_ISA:  # and the other build's emulation is not what runs here
        other = ExactModel(smollm2_path, isa=GOLDEN_ISA)
        with pytest.raises(AssertionError, match="logits differ at position 0"):
            assert_bit_identical_to_live(smollm2_path, other, b"Water", 0)


def live_isa() -> str:
    """The ISA of the importable llama.cpp build when it is one the exact engines emulate."""
    build = oracle_build()
    if build["isa"] not in exact.ISAS:
        pytest.skip(f"llama.cpp here is an {build['isa']} build; emulated: {exact.ISAS}")
    return str(build["isa"])


def assert_bit_identical_to_live(
    path: Path, model: ExactModel | Gemma3ExactModel, text: bytes, greedy_steps: int
) -> None:
    """Whole logit vectors equal a live llama.cpp's over `text`, then `greedy_steps` steps;
    `model` emulates the live build's ISA (`live_isa`)."""
    import llama_cpp

    # One thread: every kernel here computes a row independently of the thread split (the
    # 2-thread golden agrees bit for bit too), and 2 spinning threads on a loaded 2-core machine
    # make llama.cpp ~100x slower.
    llm = llama_cpp.Llama(
        str(path), n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False
    )
    seq = llm.tokenize(text, add_bos=True, special=True)
    n_prompt = len(seq)
    model.reset()
    for i in range(n_prompt + greedy_steps):
        llm.eval([seq[i]])
        ref = np.array(llm.scores[i], dtype=np.float32)
        ours = model.step(seq[i])
        assert np.array_equal(ours, ref), f"logits differ at position {i}"
        if i >= n_prompt - 1:
            seq.append(int(np.argmax(ours)))
