"""Tests for engine/models/decoder.py: config, API shapes, determinism, and agreement with
llama.cpp.

Agreement with llama.cpp uses tests/golden/forward_*.json (tests/golden/make_forward_golden.py):
each golden case's prompt + continuation[:-1] goes through one prefill, and tests/agreement.py
scores the logits (top-1, KL over llama.cpp's top-20, identical greedy continuation).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import (
    Cancelled,
    ContextOverflow,
    GGUFError,
    ModelTooLarge,
    UnsupportedArchitecture,
)
from engine.gguf.reader import GGUFFile
from engine.models import attention as attention_module
from engine.models.attention import attention
from engine.models.config import ModelConfig
from engine.models.decoder import Model
from engine.models.kvcache import KEY_BLOCK
from engine.models.numerics import Numerics
from tests.agreement import compare, summarize
from tests.conftest import needs_oracle
from tests.golden.oracle_build import isa_mismatch
from tests.tiny_model import VARIANTS, write_tiny_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path(__file__).resolve().parents[2]
CHAT = "<|im_start|>user\nHello world! What is 2+2?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {v: write_tiny_model(d / f"{v}.gguf", v) for v in VARIANTS}


@pytest.fixture(scope="module")
def tiny(tiny_paths: dict[str, Path]) -> Model:
    return engine.load(tiny_paths["llama"])


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> Model:
    return engine.load(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path: Path) -> Model:
    return engine.load(gemma3_path)


def _golden(name: str) -> dict:
    return json.loads((GOLDEN / f"forward_{name}.json").read_text())


# --- config -------------------------------------------------------------------------------------


def test_config_smollm2_values(smollm2_path: Path) -> None:
    cfg = ModelConfig.from_gguf(GGUFFile(smollm2_path).metadata)
    assert (cfg.arch, cfg.n_embd, cfg.n_layer, cfg.n_ff) == ("llama", 576, 30, 1536)
    assert (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_rot) == (9, 3, 64, 64)
    assert (cfg.n_vocab, cfg.n_ctx_train, cfg.rope_base) == (49152, 8192, 100000.0)
    assert not cfg.traits.rope_neox and not any(cfg.swa_layers)


def test_config_gemma3_sliding_layers(gemma3_path: Path) -> None:
    cfg = ModelConfig.from_gguf(GGUFFile(gemma3_path).metadata)
    assert cfg.sliding_window == 512 and cfg.n_layer == 18
    assert [il for il in range(18) if not cfg.swa_layers[il]] == [5, 11, 17]
    ropes = cfg.ropes()
    assert ropes[5].base == 1e6 and ropes[0].base == 10000.0 and ropes[0].neox
    assert cfg.attention_scale == pytest.approx(1 / 16)


def test_config_missing_key_names_it(tiny_paths: dict[str, Path]) -> None:
    meta = dict(GGUFFile(tiny_paths["llama"]).metadata)
    del meta["llama.embedding_length"]
    with pytest.raises(GGUFError, match="llama.embedding_length"):
        ModelConfig.from_gguf(meta)


def test_config_unsupported_architecture(tiny_paths: dict[str, Path]) -> None:
    meta = dict(GGUFFile(tiny_paths["llama"]).metadata)
    meta["general.architecture"] = "mamba"
    with pytest.raises(UnsupportedArchitecture, match="mamba"):
        ModelConfig.from_gguf(meta)


def test_config_sliding_window_pattern_array(tiny_paths: dict[str, Path]) -> None:
    meta = dict(GGUFFile(tiny_paths["gemma3"]).metadata)
    assert ModelConfig.from_gguf(meta).swa_layers == (True,) * 5 + (False,)
    meta["gemma3.attention.sliding_window_pattern"] = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    assert ModelConfig.from_gguf(meta).swa_layers == (True, False) * 3


# --- loading ------------------------------------------------------------------------------------


def test_model_too_large(tiny_paths: dict[str, Path]) -> None:
    with pytest.raises(ModelTooLarge):
        engine.load(tiny_paths["llama"], memory_budget=1000)


def test_vocab_only_skips_weights(tiny_paths: dict[str, Path]) -> None:
    m = engine.load(tiny_paths["llama"], vocab_only=True, memory_budget=1000)
    assert m.tokenize("Hello world", add_special=False) == m.tokenizer.encode("Hello world", False)
    with pytest.raises(RuntimeError, match="vocab_only"):
        m.logits([1, 2])


# --- API shapes ---------------------------------------------------------------------------------


def test_shapes_with_and_without_cache(tiny: Model) -> None:
    ids = tiny.tokenize(CHAT)
    T, V = len(ids), tiny.n_vocab
    logits = tiny.logits(ids)
    assert logits.shape == (T, V) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    cache = tiny.new_cache(64)
    assert tiny.eval(ids[:5], cache).shape == (5, V)
    assert cache.n_past == 5 and cache.tokens == ids[:5]
    last = tiny.eval(ids[5:], cache, last_only=True)
    assert last.shape == (1, V) and cache.n_past == T
    np.testing.assert_array_equal(last[0], logits[-1])
    hidden = tiny.embed(ids)
    assert hidden.shape == (T, tiny.config.n_embd) and hidden.dtype == np.float32


def test_embed_is_the_input_of_the_output_layer(tiny: Model) -> None:
    from engine.models.decoder import output_logits

    ids = tiny.tokenize(CHAT)
    hidden = tiny.embed(ids)
    out = output_logits(tiny._weights, tiny.config, hidden, tiny.numerics)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, tiny.logits(ids))


def test_context_overflow_leaves_cache_untouched(tiny: Model) -> None:
    cache = tiny.new_cache(8)
    tiny.eval([5, 6, 7], cache)
    with pytest.raises(ContextOverflow):
        tiny.eval(list(range(10, 16)), cache)
    assert cache.tokens == [5, 6, 7]


def test_token_out_of_vocabulary(tiny: Model) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny.logits([1, tiny.n_vocab])


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_equals_stepwise_and_any_chunking(
    tiny_paths: dict[str, Path], variant: str
) -> None:
    m = engine.load(tiny_paths[variant])
    ids = m.tokenize(CHAT + "The quick brown fox jumps over the lazy dog.")
    full = m.logits(ids)
    for num_batch in (1, 3, 7, 16):
        cache = m.new_cache(len(ids))
        np.testing.assert_array_equal(m.eval(ids, cache, num_batch=num_batch), full)
    cache = m.new_cache(len(ids))
    steps = np.concatenate([m.eval([t], cache) for t in ids])
    np.testing.assert_array_equal(steps, full)


def test_sliding_window_limits_attention(tiny_paths: dict[str, Path]) -> None:
    # Window 4: each sliding layer reaches 3 positions further back, so with all 6 layers sliding
    # the last of 24 positions cannot see token 0 (6 * 3 < 23), while the stock model, whose
    # last layer is global, does.
    m = engine.load(tiny_paths["gemma3"])
    cfg = replace(m.config, swa_layers=(True,) * m.config.n_layer)
    m_all_swa = Model(m.path, cfg, m.tokenizer, m._weights, m.numerics)
    a, b = [10, *range(40, 63)], [11, *range(40, 63)]
    np.testing.assert_array_equal(m_all_swa.logits(a)[-1], m_all_swa.logits(b)[-1])
    assert not np.array_equal(m.logits(a)[-1], m.logits(b)[-1])


@pytest.mark.parametrize("window", [0, 5, 200])
def test_attention_matches_plain_softmax(window: int) -> None:
    rng = np.random.default_rng(0)
    Hkv, G, Dh, T, pos0 = 2, 3, 8, 100, 150  # queries at 150..249 span key blocks 1 and 2
    k = rng.standard_normal((Hkv, 3 * KEY_BLOCK, Dh)).astype(np.float32)
    v = rng.standard_normal((Hkv, 3 * KEY_BLOCK, Dh)).astype(np.float32)
    q = rng.standard_normal((T, Hkv * G, Dh)).astype(np.float32)
    out = attention(q, k, v, pos0, window)
    for t in range(T):
        p = pos0 + t
        lo = max(0, p - window + 1) if window else 0
        for h in range(Hkv * G):
            s = k[h // G, lo : p + 1].astype(np.float64) @ q[t, h]
            w = np.exp(s - s.max())
            np.testing.assert_allclose(out[t, h], w @ v[h // G, lo : p + 1] / w.sum(), atol=1e-5)


@pytest.mark.parametrize("variant", ["llama", "gemma3"])
def test_long_sequence_chunking_across_key_blocks(
    tiny_paths: dict[str, Path], variant: str
) -> None:
    m = engine.load(tiny_paths[variant])
    ids = [int(t) for t in np.random.default_rng(1).integers(3, m.n_vocab, 2 * KEY_BLOCK + 40)]
    full = m.logits(ids)
    for num_batch in (50, KEY_BLOCK, 512):
        cache = m.new_cache(len(ids))
        np.testing.assert_array_equal(m.eval(ids, cache, num_batch=num_batch), full)
    cache = m.new_cache(len(ids))
    m.eval(ids[:-2], cache, num_batch=KEY_BLOCK + 1)
    np.testing.assert_array_equal(m.eval(ids[-2:-1], cache), full[-2:-1])
    np.testing.assert_array_equal(m.eval(ids[-1:], cache), full[-1:])


def _assert_batches_give_solo_bytes(
    m: Model, prompts: list[list[int]], new: list[list[int]], orders: list[list[int]]
) -> None:
    """Each sequence's `new` tokens, evaluated in one eval_many after its prompt (batched in
    every order of `orders`), give the logits they give alone and extend its cache."""
    num_ctx = 3 * KEY_BLOCK
    solo = []
    for prompt, extra in zip(prompts, new, strict=True):
        cache = m.new_cache(num_ctx)
        m.eval(prompt, cache)
        solo.append(m.eval(extra, cache, last_only=True))
    for order in orders:
        caches = {i: m.new_cache(num_ctx) for i in order}
        for i in order:
            m.eval(prompts[i], caches[i])
        out = m.eval_many([(new[i], caches[i]) for i in order])
        for i, logits in zip(order, out, strict=True):
            np.testing.assert_array_equal(logits, solo[i])
            assert caches[i].tokens == prompts[i] + new[i]


@pytest.mark.parametrize("variant", ["llama", "gemma3"])
def test_batched_sequences_get_their_solo_bytes(tiny_paths: dict[str, Path], variant: str) -> None:
    # Three sequences at different positions (one prefill chunk, two decode steps) in one forward
    # give each exactly what it gets alone, in any order of the batch.
    m = engine.load(tiny_paths[variant])
    rng = np.random.default_rng(2)
    prompts = [[int(t) for t in rng.integers(3, m.n_vocab, n)] for n in (5, KEY_BLOCK + 9, 40)]
    _assert_batches_give_solo_bytes(
        m, prompts, [[11, 12, 13, 14], [9], [21]], [[0, 1, 2], [2, 0, 1]]
    )


@pytest.mark.parametrize("variant", ["llama", "gemma3"])
@pytest.mark.parametrize("group", [2, 16])
def test_decode_steps_batched_across_key_blocks_get_their_solo_bytes(
    tiny_paths: dict[str, Path], variant: str, group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One-token steps of sequences whose keys end in different blocks (and, for gemma3, whose
    # sliding windows start in different blocks) are attended to in one call, `group` at a time,
    # beside a prefill chunk; each gets the logits it gets alone.
    m = engine.load(tiny_paths[variant])
    rng = np.random.default_rng(3)
    lengths = (1, KEY_BLOCK - 1, KEY_BLOCK, 2 * KEY_BLOCK + 5, 17)
    prompts = [[int(t) for t in rng.integers(3, m.n_vocab, n)] for n in lengths]
    new = [[int(rng.integers(3, m.n_vocab))] for _ in lengths[:-1]] + [[5, 6, 7]]
    monkeypatch.setattr(attention_module, "_GROUP", group)
    _assert_batches_give_solo_bytes(m, prompts, new, [[0, 1, 2, 3, 4], [3, 4, 0, 2, 1]])


def test_eval_many_refuses_a_shared_cache(tiny: Model) -> None:
    cache = tiny.new_cache(16)
    with pytest.raises(ValueError, match="its own cache"):
        tiny.eval_many([([5], cache), ([6], cache)])


def test_cancelled_evaluation_keeps_only_finished_chunks(tiny: Model) -> None:
    cache = tiny.new_cache(64)
    tiny.eval([5, 6, 7], cache)
    n_layer = tiny.config.n_layer
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > n_layer + 1  # true before the second chunk's second layer

    with pytest.raises(Cancelled):
        tiny.eval(list(range(10, 40)), cache, num_batch=8, cancelled=cancelled)
    assert cache.tokens == [5, 6, 7, *range(10, 18)] and len(calls) == n_layer + 2
    np.testing.assert_array_equal(
        tiny.eval([8], cache), tiny.eval([5, 6, 7, *range(10, 18), 8], tiny.new_cache(16))[-1:]
    )


def test_probe_sees_every_layer_and_changes_nothing(tiny: Model) -> None:
    ids = [5, 6, 7, 8, 9]
    seen: dict[tuple[int, str], np.ndarray] = {}

    def probe(layer: int, name: str, value: np.ndarray) -> None:
        seen[layer, name] = value.copy()

    probed = tiny.eval(ids, tiny.new_cache(8), probe=probe)
    np.testing.assert_array_equal(probed, tiny.logits(ids))
    n_layer = tiny.config.n_layer
    names = {"attn_in", "q", "k", "v", "attn_out", "ffn_out", "residual"}
    assert set(seen) == {(-1, "embedding")} | {(il, n) for il in range(n_layer) for n in names}
    assert seen[0, "q"].shape == (len(ids), tiny.config.n_head, tiny.config.head_dim)
    np.testing.assert_array_equal(seen[1, "attn_in"].shape, (len(ids), tiny.config.n_embd))


_DIGEST_SCRIPT = """
import hashlib, sys
import engine
m = engine.load(sys.argv[1])
ids = [int(t) for t in sys.argv[2].split(",")]
print(hashlib.sha256(m.logits(ids).tobytes()).hexdigest())
"""


def _digest_in_subprocess(path: Path, ids: list[int], threads: int) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT, str(path), ",".join(map(str, ids))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_blas_thread_count_does_not_change_logits(tiny_paths: dict[str, Path], tiny: Model) -> None:
    ids = tiny.tokenize(CHAT)
    local = hashlib.sha256(tiny.logits(ids).tobytes()).hexdigest()
    assert _digest_in_subprocess(tiny_paths["llama"], ids, 1) == local
    assert _digest_in_subprocess(tiny_paths["llama"], ids, 2) == local


@pytest.mark.slow
def test_real_model_determinism(smollm2: Model, smollm2_path: Path) -> None:
    ids = smollm2.tokenize(CHAT + "Tell me about the quick brown fox and the lazy dog.")
    full = smollm2.logits(ids)
    cache = smollm2.new_cache(len(ids))
    np.testing.assert_array_equal(smollm2.eval(ids, cache, num_batch=7), full)
    cache = smollm2.new_cache(len(ids))
    steps = np.concatenate(
        [smollm2.eval(ids[:-3], cache)] + [smollm2.eval([t], cache) for t in ids[-3:]]
    )
    np.testing.assert_array_equal(steps, full)
    local = hashlib.sha256(full.tobytes()).hexdigest()
    assert _digest_in_subprocess(smollm2_path, ids, 1) == local
    assert _digest_in_subprocess(smollm2_path, ids, 2) == local


# --- agreement with llama.cpp -------------------------------------------------------------------


def _compare(model: Model, case: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    return compare(model.logits(case["prompt"] + case["continuation"][:-1]), case)


def _agreement(model: Model, name: str) -> tuple[float, float, int, int]:
    a = summarize([_compare(model, c) for c in _golden(name)["cases"]])
    return a.top1, a.kl, a.greedy, a.cases


# What llama.cpp achieves against its own golden when it computes the rows in another regime
# (tests/golden/llama_cpp_self_agreement.json, llama-cpp-python 0.3.36 AVX512, AMD EPYC; top-1 /
# greedy identical of 30): SmolLM2 one batch 98.89% / 19, token by token 98.67% / 21; gemma3 one
# batch 99.19% / 21, token by token 97.63% / 13. Re-quantizing activations before every matmul makes
# last-bit differences grow into visible logit differences, so no engine that computes each row
# one way can be held to much more (bit-exact agreement in one regime is engine/exact/'s job,
# tests/engine/test_exact.py). Measured for this engine (default numerics, the same on every
# machine): SmolLM2 top-1 97.26% of 1349 positions, mean KL 2.53e-3, greedy 15/30; gemma3 98.00%
# of 1352, 3.51e-3, 16/30. Bounds = measured - 0.5 points top-1, x1.5 KL, -2 greedy (the margin
# tests/engine/test_agreement.py's decode bounds take), so a change that costs agreement fails.
AGREEMENT_BOUNDS = {"smollm2": (0.9676, 3.8e-3, 13), "gemma3": (0.9750, 5.3e-3, 14)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_models_agree_with_llama_cpp(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)
    top1, kl, greedy, n = _agreement(model, name)
    print(f"{name}: top-1 {top1:.4f}, mean KL {kl:.2e}, greedy identical {greedy}/{n}")
    top1_min, kl_max, greedy_min = AGREEMENT_BOUNDS[name]
    assert n == 30 and top1 >= top1_min and kl <= kl_max and greedy >= greedy_min


# The tiny golden runs llama.cpp with an F32 KV cache, so ours keeps k, v, q and p in float32
# too. Float32 variants then agree to float rounding; the quantized llama variant has its
# activations rounded like llama.cpp's (engine/models/numerics.py), but sums in another order.
F32_KV = Numerics(quantize_activations=True, kv_f16=False)
# Bounds = measured x1.5 (AMD EPYC AVX512; the engine's bits are machine-independent, the golden is
# llama-cpp-python 0.3.36's AVX512 build). Max |logit diff| over llama.cpp's top-20, measured:
# llama_rope_freqs 6.9e-5, llama_yarn 7.8e-5, qwen2 5.3e-5, qwen3 5.3e-5, gemma3 2.3e-3.
_TINY_TOLERANCE = {"gemma3": 3.5e-3}
_TINY_DEFAULT_TOLERANCE = 1.2e-4
# Quantized llama variant, measured: top-1 100%, mean KL 2.9e-6 (worst case), greedy identical.
_TINY_LLAMA_KL_MAX = 4.4e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_architectures_agree_with_llama_cpp(tiny_paths: dict[str, Path], variant: str) -> None:
    m = engine.load(tiny_paths[variant], numerics=F32_KV)
    for case in _golden("tiny")["cases"]:
        if case["variant"] != variant:
            continue
        tokens = case["prompt"] + case["continuation"][:-1]
        logits = m.logits(tokens)
        top1, kl, greedy = _compare(m, case)
        if variant == "llama":
            assert top1.all() and kl.mean() <= _TINY_LLAMA_KL_MAX and greedy
            continue
        ours = np.take_along_axis(logits, np.array(case["top_ids"]), axis=1)
        diff = np.abs(ours - np.array(case["top_logits"])).max()
        assert diff <= _TINY_TOLERANCE.get(variant, _TINY_DEFAULT_TOLERANCE), (variant, diff)
        assert top1.all() and greedy


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_golden_is_what_llama_cpp_computes_now(tmp_path: Path) -> None:
    # llama.cpp's last bits depend on its ISA: re-check only against a build like the golden's.
    reason = isa_mismatch(_golden("tiny")["header"]["oracle"]["isa"])
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(GOLDEN))
    import make_forward_golden as mk

    case = _golden("tiny")["cases"][0]
    llm = mk.tiny_llm(write_tiny_model(tmp_path / "t.gguf", case["variant"]))
    fresh = mk.run_case(llm, case["text"], len(case["continuation"]))
    assert {"variant": case["variant"], **fresh} == case
    for name in ("smollm2", "gemma3"):
        case = _golden(name)["cases"][0]
        fresh = mk.run_case(mk.real_llm(name), case["text"], len(case["continuation"]))
        assert fresh["prompt"] == case["prompt"] and fresh["continuation"] == case["continuation"]
        np.testing.assert_allclose(fresh["top_logits"], case["top_logits"], atol=2e-3)
