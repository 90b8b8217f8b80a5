"""Tests for engine/models/kvcache.py (truncate, context shift) and the RoPE it re-applies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import ContextOverflow
from engine.gguf.reader import GGUFFile
from engine.models.decoder import Model, memory_needed
from engine.models.kvcache import KEY_BLOCK
from engine.models.numerics import FLOAT32, LLAMA_CPP, Numerics
from engine.models.rope import Rope
from tests.conftest import needs_oracle
from tests.tiny_model import write_tiny_model

PROMPT = list(range(40, 60))  # 20 token ids of the toy vocabulary


@pytest.fixture(scope="module", params=["llama_rope_freqs", "gemma3"])
def tiny_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    return write_tiny_model(d / f"{request.param}.gguf", request.param)


@pytest.fixture(scope="module")
def tiny(tiny_path: Path) -> Model:
    return engine.load(tiny_path)


def test_capacity_grows_in_whole_key_blocks_up_to_num_ctx(tiny: Model) -> None:
    cache = tiny.new_cache(5 * KEY_BLOCK + 1)
    assert cache.capacity == KEY_BLOCK and cache.num_ctx == 5 * KEY_BLOCK + 1
    assert cache.n_past == 0 and cache.n_free == 5 * KEY_BLOCK + 1
    tiny.eval(list(range(3, 3 + KEY_BLOCK)), cache)
    assert cache.capacity == KEY_BLOCK  # exactly full: no growth yet
    tiny.eval([7], cache)
    assert cache.capacity == 2 * KEY_BLOCK  # doubled
    tiny.eval(list(range(3, 3 + 2 * KEY_BLOCK)), cache)
    assert cache.capacity == 4 * KEY_BLOCK
    tiny.eval(list(range(3, 3 + 2 * KEY_BLOCK)), cache)
    assert cache.capacity == 6 * KEY_BLOCK and cache.n_free == 0  # capped at num_ctx's blocks
    stats = cache.k_norm.nbytes + cache.k_span.nbytes + cache.v_max.nbytes
    assert cache.nbytes == cache.k.nbytes + cache.v.nbytes + stats


@pytest.mark.parametrize("numerics", [LLAMA_CPP, FLOAT32], ids=["llama_cpp", "float32"])
def test_memory_needed_counts_the_cache_as_stored(tiny_path: Path, numerics: Numerics) -> None:
    model = engine.load(tiny_path, numerics=numerics)
    num_ctx = 3 * KEY_BLOCK - 5
    full = model.new_cache(num_ctx)
    full.reserve(num_ctx)
    gguf = GGUFFile(tiny_path)
    kv = memory_needed(gguf, model.config, num_ctx, numerics) - memory_needed(
        gguf, model.config, 0, numerics
    )
    assert kv == full.nbytes and full.k.dtype == (np.float16 if numerics.kv_f16 else np.float32)


def test_grown_cache_computes_what_a_full_size_one_does(tiny: Model) -> None:
    ids = [(7 * i) % 60 + 3 for i in range(3 * KEY_BLOCK)]
    grown = tiny.new_cache(4 * KEY_BLOCK)
    steps = [tiny.eval(ids[i : i + 50], grown) for i in range(0, len(ids), 50)]
    whole = tiny.eval(ids, tiny.new_cache(3 * KEY_BLOCK))
    np.testing.assert_array_equal(np.concatenate(steps), whole)


def test_truncate_then_continue_equals_fresh_sequence(tiny: Model) -> None:
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    cache.truncate(12)
    assert cache.tokens == PROMPT[:12]
    out = tiny.eval([7, 8, 9], cache)
    np.testing.assert_array_equal(out, tiny.logits(PROMPT[:12] + [7, 8, 9])[12:])


def test_truncate_rejects_growing(tiny: Model) -> None:
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT[:3], cache)
    with pytest.raises(ValueError):
        cache.truncate(4)


@pytest.mark.parametrize(("n_keep", "n_discard"), [(-1, 2), (2, -1), (15, 6)])
def test_shift_rejects_bad_ranges(tiny: Model, n_keep: int, n_discard: int) -> None:
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    with pytest.raises(ValueError):
        cache.shift(n_keep, n_discard)


def test_shift_moves_and_rerotates_keys(tiny: Model) -> None:
    n_keep, n_discard = 4, 6
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    v_before = cache.v.copy()
    cache.shift(n_keep, n_discard)
    kept = PROMPT[:n_keep] + PROMPT[n_keep + n_discard :]
    assert cache.tokens == kept and cache.n_past == len(kept)
    n = len(kept)
    np.testing.assert_array_equal(cache.v[:, :, :n_keep], v_before[:, :, :n_keep])
    np.testing.assert_array_equal(
        cache.v[:, :, n_keep:n], v_before[:, :, n_keep + n_discard : len(PROMPT)]
    )
    # Layer 0's keys depend only on the token and its position, so after the shift they must
    # match a fresh run of the kept tokens (up to the rounding of rotating twice, and of the F16
    # cache: one F16 step is 2**-11 relative).
    fresh = tiny.new_cache(64)
    tiny.eval(kept, fresh)
    np.testing.assert_allclose(cache.k[0, :, :n], fresh.k[0, :, :n], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(cache.v[0, :, :n], fresh.v[0, :, :n])
    assert not np.allclose(cache.k[0, :, n_keep:n], cache.k[0, :, n_keep + 1 : n + 1])


def test_shift_zero_is_a_no_op(tiny: Model) -> None:
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    k = cache.k.copy()
    cache.shift(4, 0)
    np.testing.assert_array_equal(cache.k, k)
    assert cache.tokens == PROMPT


def test_reserve_raises_context_overflow(tiny: Model) -> None:
    cache = tiny.new_cache(21)
    tiny.eval(PROMPT, cache)
    cache.reserve(1)
    with pytest.raises(ContextOverflow):
        cache.reserve(2)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_rotations_compose(neox: bool) -> None:
    rope = Rope(n_rot=16, base=10000.0, neox=neox)
    x = np.random.default_rng(0).standard_normal((5, 3, 24)).astype(np.float32)  # (T, H, Dh)
    pos = np.arange(10, 15)
    cos, sin = rope.cos_sin(pos)
    once = rope.apply(x, cos[:, None], sin[:, None])
    dcos, dsin = rope.cos_sin(np.array([-4]))
    twice = rope.apply(once, dcos, dsin)
    cos2, sin2 = rope.cos_sin(pos - 4)
    np.testing.assert_allclose(twice, rope.apply(x, cos2[:, None], sin2[:, None]), atol=1e-5)
    np.testing.assert_array_equal(once[..., 16:], x[..., 16:])  # dims past n_rot pass through
    np.testing.assert_allclose(np.linalg.norm(once, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_pairs_adjacent_or_half_split() -> None:
    x = np.zeros((1, 1, 4), np.float32)
    x[..., 0] = 1.0
    cos, sin = Rope(n_rot=4, base=10000.0, neox=False).cos_sin(np.array([1]))
    normal = Rope(n_rot=4, base=10000.0, neox=False).apply(x, cos, sin)
    neox = Rope(n_rot=4, base=10000.0, neox=True).apply(x, cos, sin)
    # Pair 0 has angle 1 rad: dim 0 rotates into dim 1 (adjacent) or into dim 2 (half split).
    np.testing.assert_allclose(normal[0, 0], [np.cos(1), np.sin(1), 0, 0], atol=1e-6)
    np.testing.assert_allclose(neox[0, 0], [np.cos(1), 0, np.sin(1), 0], atol=1e-6)


@needs_oracle
@pytest.mark.oracle
def test_shift_matches_llama_cpp_k_shift(tiny_path: Path, tiny: Model) -> None:
    import llama_cpp

    n_keep, n_discard, nxt = 4, 6, 77
    # llama.cpp's default F16 KV cache against this engine's default (F16-rounded) numerics.
    llm = llama_cpp.Llama(str(tiny_path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(PROMPT)
    llm._ctx.kv_cache_seq_rm(0, n_keep, n_keep + n_discard)
    llm._ctx.kv_cache_seq_shift(0, n_keep + n_discard, len(PROMPT), -n_discard)
    llm.n_tokens = len(PROMPT) - n_discard
    llm.eval([nxt])
    ref = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)

    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    cache.shift(n_keep, n_discard)
    ours = tiny.eval([nxt], cache)[0]
    np.testing.assert_allclose(ours, ref, atol=1e-2)
    # Moving the keys without re-rotating them (zero angles) is far off: the test can fail.
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    ropes = cache.ropes
    cache.ropes = tuple(replace(r, freq_scale=0.0) for r in ropes)
    cache.shift(n_keep, n_discard)
    cache.ropes = ropes
    assert np.abs(tiny.eval([nxt], cache)[0] - ref).max() > 0.1


def test_fresh_rows_are_tracked_through_truncate_and_shift(tiny: Model) -> None:
    cache = tiny.new_cache(64)
    tiny.eval(PROMPT, cache)
    assert cache.n_fresh == 20
    step = tiny.eval([5], cache)[0]
    assert cache.n_past == 21 and cache.n_fresh == 21
    cache.truncate(12)
    assert cache.n_fresh == 12
    tiny.eval(PROMPT[12:], cache)
    assert cache.n_fresh == 20
    cache.shift(4, 6)
    assert cache.n_fresh == 4
    tiny.eval([6, 7], cache)  # rows after re-rotated keys: not a fresh evaluation's prefix
    assert cache.n_fresh == 4
    # a row computed one token at a time equals the same row computed inside a prefill
    fresh = tiny.new_cache(64)
    np.testing.assert_array_equal(tiny.eval([*PROMPT, 5], fresh)[-1], step)
