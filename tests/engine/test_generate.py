from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from engine.errors import Cancelled, ContextOverflow
from engine.generate import Slot, generate, shift_amounts, truncate_prompt
from engine.gguf.reader import GGUFFile
from engine.sampling.options import Options
from engine.tokenizer import Tokenizer

EOS = 2  # SmolLM2's <|im_end|>, an end-of-generation token
GREEDY = Options(temperature=0.0, seed=1)


class ScriptedCache:
    """Stand-in for engine/models/kvcache.KVCache (same protocol): counts positions, records
    shifts.
    """

    def __init__(self, num_ctx: int) -> None:
        self.num_ctx = num_ctx
        self._n = 0
        self.n_fresh = 0
        self.shifts: list[tuple[int, int]] = []

    @property
    def n_past(self) -> int:
        return self._n

    def truncate(self, n: int) -> None:
        assert 0 <= n <= self._n
        self._n = n
        self.n_fresh = min(self.n_fresh, n)

    def shift(self, n_keep: int, n_discard: int) -> None:
        assert n_keep + n_discard <= self._n
        self.shifts.append((n_keep, n_discard))
        self._n -= n_discard
        self.n_fresh = min(self.n_fresh, n_keep)


class ScriptedModel:
    """A model whose i-th evaluation makes `script[i]` the most likely next token."""

    def __init__(self, tokenizer: Tokenizer, script: Sequence[int], peak: float = 30.0) -> None:
        self.tokenizer = tokenizer
        self.script = list(script)
        self.peak = peak
        self.calls: list[list[int]] = []
        self.rng = np.random.default_rng(0)

    def new_cache(self, num_ctx: int) -> ScriptedCache:
        return ScriptedCache(num_ctx)

    def eval(
        self,
        tokens: Sequence[int],
        cache: ScriptedCache,
        num_batch: int,
        last_only: bool = False,
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> npt.NDArray[np.float32]:
        assert cache.n_past + len(tokens) <= cache.num_ctx
        if cancelled is not None and cancelled():
            raise Cancelled("evaluation cancelled")
        if cache.n_fresh == cache.n_past:
            cache.n_fresh += len(tokens)
        cache._n += len(tokens)
        logits = self.rng.standard_normal((len(tokens), self.tokenizer.n_vocab)).astype(np.float32)
        logits[-1, self.script[len(self.calls) % len(self.script)]] = self.peak
        self.calls.append(list(tokens))
        return logits[-1:] if last_only else logits


@pytest.fixture(scope="module")
def tok(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(smollm2_path))


def run(model: ScriptedModel, prompt: Sequence[int], opts: Options, **kw: object) -> list:  # type: ignore[type-arg]
    return list(generate(model, prompt, opts, **kw))  # type: ignore[arg-type]


def test_greedy_follows_the_model_and_num_predict_limits(tok: Tokenizer) -> None:
    script = tok.encode("one two three four five", add_special=False)
    m = ScriptedModel(tok, script)
    steps = run(m, [1, 2, 3], Options(temperature=0.0, num_predict=3))
    assert [s.token for s in steps] == script[:3]
    assert "".join(s.text for s in steps) == "one two three"
    assert [s.done for s in steps] == [False, False, True]
    last = steps[-1]
    assert last.done_reason == "length"
    assert last.stats is not None
    assert (last.stats.eval_count, last.stats.prompt_eval_count) == (3, 3)
    assert last.stats.total_duration >= last.stats.eval_duration >= 0


def test_eog_token_ends_with_stop_and_counts(tok: Tokenizer) -> None:
    script = [*tok.encode("one two", add_special=False), EOS]
    steps = run(ScriptedModel(tok, script), [5], GREEDY)
    assert [s.token for s in steps] == script
    assert steps[-1].text == "" and steps[-1].done_reason == "stop"
    assert steps[-1].stats is not None and steps[-1].stats.eval_count == 3


def test_stop_string_across_tokens_is_held_back_and_trimmed(tok: Tokenizer) -> None:
    script = tok.encode("Hello world, the answer is STOP now", add_special=False)
    steps = run(ScriptedModel(tok, script), [5], dataclass_replace(GREEDY, stop=("STOP",)))
    texts = [s.text for s in steps]
    # " ST" could start "STOP": the space and "ST" wait; "OP" completes the match
    assert texts == ["Hello", " world", ",", " the", " answer", " is", "", " "]
    assert steps[-1].done_reason == "stop" and steps[-1].token == script[7]


def test_broken_partial_match_releases_everything_at_once(tok: Tokenizer) -> None:
    script = [*tok.encode("Hello world, the answer", add_special=False), EOS]
    steps = run(ScriptedModel(tok, script), [5], GREEDY, stop=[" the end"])
    assert [s.text for s in steps] == ["Hello", " world", ",", "", " the answer", ""]


def test_eog_flushes_held_back_text(tok: Tokenizer) -> None:
    script = [*tok.encode("Hello world", add_special=False), EOS]
    steps = run(ScriptedModel(tok, script), [5], GREEDY, stop=[" worldwide"])
    assert [s.text for s in steps] == ["Hello", "", " world"]


def test_length_stop_drops_held_back_text(tok: Tokenizer) -> None:
    script = tok.encode("Hello world", add_special=False)
    opts = Options(temperature=0.0, num_predict=2, stop=(" worldwide",))
    assert [s.text for s in run(ScriptedModel(tok, script), [5], opts)] == ["Hello", ""]


def test_context_shift_keeps_num_keep_and_halves_the_rest(tok: Tokenizer) -> None:
    script = tok.encode("one two three four five six seven eight nine ten", add_special=False)
    m = ScriptedModel(tok, script)
    slot = Slot.new(m, 16)
    opts = Options(temperature=0.0, num_ctx=16, num_keep=4, num_predict=20)
    steps = run(m, list(range(100, 110)), opts, slot=slot)
    assert len(steps) == 20 and steps[-1].done_reason == "length"
    cache = slot.cache
    assert isinstance(cache, ScriptedCache)
    # n_past 15 -> keep 4, n_left 11, discard 5; then n_past 15 again, and so on
    assert cache.shifts[0] == (4, 5) == shift_amounts(15, 10, opts, add_bos=False)
    assert all(n_keep == 4 for n_keep, _ in cache.shifts)
    assert len(slot.tokens) == cache.n_past
    assert slot.tokens[:4] == [100, 101, 102, 103]


def test_shift_amounts_formula() -> None:
    opts = Options(num_ctx=4096, num_keep=4)
    assert shift_amounts(4095, 100, opts, add_bos=True) == (5, 2045)  # BOS kept in addition
    assert shift_amounts(10, 3, Options(num_ctx=12, num_keep=-1), add_bos=False) == (3, 3)
    assert shift_amounts(6, 3, Options(num_ctx=8, num_keep=100), add_bos=False) == (4, 1)


def test_without_shift_a_full_context_stops_with_length(tok: Tokenizer) -> None:
    script = tok.encode("one two three four five six seven eight nine ten", add_special=False)
    opts = Options(temperature=0.0, num_ctx=8)
    steps = run(ScriptedModel(tok, script), [1, 2, 3, 4, 5], opts, shift=False)
    # prompt 5 + 2 evaluated tokens = 7 = n_ctx - 1 when the 3rd token is sampled
    assert len(steps) == 3 and steps[-1].done_reason == "length"


def test_prompt_truncation() -> None:
    prompt = list(range(20))
    # keep 4 (+1 BOS) = 5; limit = 10 - max((10 - 5) // 2, 1) = 8: first 5 + last 3
    assert truncate_prompt(prompt, Options(num_ctx=10), add_bos=True) == [0, 1, 2, 3, 4, 17, 18, 19]
    assert truncate_prompt(prompt[:9], Options(num_ctx=10), add_bos=True) == prompt[:9]
    # Ollama's own example: num_ctx 4096, keep 5 -> 2051 tokens
    long = list(range(5000))
    out = truncate_prompt(long, Options(num_ctx=4096), add_bos=True)
    assert len(out) == 2051 and out[:5] == long[:5] and out[5:] == long[-2046:]


def test_over_long_prompt_without_truncation_is_an_error(tok: Tokenizer) -> None:
    m = ScriptedModel(tok, [EOS])
    with pytest.raises(ContextOverflow):
        run(m, list(range(20)), Options(num_ctx=10), truncate=False)
    with pytest.raises(ContextOverflow):
        run(m, list(range(20)), Options(num_ctx=10), shift=False)
    assert run(m, list(range(20)), dataclass_replace(GREEDY, num_ctx=10))[-1].done


def test_slot_reuses_the_common_prefix(tok: Tokenizer) -> None:
    m = ScriptedModel(tok, [EOS])
    slot = Slot.new(m, 64)
    run(m, [1, 2], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert slot.num_ctx == 32 and slot.tokens == [1, 2]  # reset in place for another size
    m.calls.clear()
    run(m, [7, 8, 9, 10], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert m.calls == [[7, 8, 9, 10]]
    steps = run(m, [7, 8, 9, 11, 12], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert m.calls[-1] == [11, 12]  # 7 8 9 came from the cache
    assert steps[-1].stats is not None and steps[-1].stats.prompt_eval_count == 5
    run(m, [7, 8, 9, 11, 12], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert m.calls[-1] == [12]  # fully cached: the last token is evaluated again


def test_cancelled_generation_stops_and_the_slot_keeps_what_was_evaluated(tok: Tokenizer) -> None:
    m = ScriptedModel(tok, [20, 21, 22, 23])
    slot = Slot.new(m, 32)
    opts = dataclass_replace(GREEDY, num_ctx=32, num_predict=10)
    steps = generate(m, [7, 8, 9], opts, slot=slot, cancelled=lambda: len(m.calls) >= 3)
    with pytest.raises(Cancelled):
        for _ in steps:
            pass
    assert m.calls == [[7, 8, 9], [20], [21]]  # the fourth call, for 22, saw the flag
    assert slot.tokens == [7, 8, 9, 20, 21]
    assert slot.cache.n_past == 5


def test_slot_reuses_the_previous_answer(tok: Tokenizer) -> None:
    # Every row is computed the same however it was batched (engine/models/decoder.py), so a
    # follow-up prompt that repeats the previous answer reuses its rows, as Ollama does.
    m = ScriptedModel(tok, [20, 21, EOS])
    slot = Slot.new(m, 32)
    steps = run(m, [7, 8, 9], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert [s.token for s in steps] == [20, 21, EOS]
    assert slot.tokens == [7, 8, 9, 20, 21] and slot.cache.n_fresh == 5
    run(m, [7, 8, 9, 20, 21, 5], dataclass_replace(GREEDY, num_ctx=32), slot=slot)
    assert m.calls[-3] == [5]


def test_logprobs_and_trace(tok: Tokenizer) -> None:
    script = tok.encode("one two", add_special=False)
    opts = Options(num_predict=2, seed=3)
    steps = run(ScriptedModel(tok, script), [5], opts, logprobs=True, top_logprobs=3, trace=True)
    for s in steps:
        assert s.logprobs is not None and len(s.logprobs.top) == 3
        assert s.logprobs.top[0][0] == s.token and s.logprobs.logprob > -1e-3
        assert s.trace is not None and s.trace.token == s.token


def test_same_seed_same_steps(tok: Tokenizer) -> None:
    script = tok.encode("one two three four five six", add_special=False)
    opts = Options(num_predict=12, temperature=1.5, top_k=0, top_p=1.0)

    def tokens(seed: int) -> list[int]:
        m = ScriptedModel(tok, script, peak=3.0)  # a low peak leaves the draw real choices
        return [s.token for s in run(m, [5], dataclass_replace(opts, seed=seed))]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def dataclass_replace(opts: Options, **kw: object) -> Options:
    import dataclasses

    return dataclasses.replace(opts, **kw)  # type: ignore[arg-type]


def test_grammar_constraint_resamples_rejected_picks(tok: Tokenizer) -> None:
    from engine.grammar import GrammarConstraint, trie_for

    script = tok.encode("one three four five", add_special=False)
    constraint = GrammarConstraint('root ::= "one two"', trie_for(tok))
    steps = run(ScriptedModel(tok, script), [5], GREEDY, constraint=constraint, trace=True)
    assert "".join(s.text for s in steps) == "one two"
    assert steps[-1].token in tok.eog_ids and steps[-1].done_reason == "stop"
    assert not steps[0].trace.resampled and steps[1].trace.resampled  # type: ignore[union-attr]
    assert len(steps[1].trace.draws) == 2  # type: ignore[union-attr]
