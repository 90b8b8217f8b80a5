"""The decode loop as llama-server runs it for Ollama: prefill, sample, stop, context shift.

`generate` yields one `Step` per sampled token. It follows spec/sampling.md §6: the prompt is
truncated as Ollama does (§6.7), fed into the penalty window, evaluated (reusing a cached prefix
from a `Slot`, like cache_prompt), then tokens are sampled and checked in `process_token`'s order
(§6.4): stop strings (matched across tokens, trimmed, partial matches held back, §6.5), the
context limit, num_predict, and end-of-generation tokens, which override the other two. When the
context is full it is shifted keeping num_keep (+BOS) tokens. It knows nothing about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.errors import ContextOverflow
from engine.sampling.chain import Constraint, Sampler, SampleTrace, TokenLogprobs, token_logprobs
from engine.sampling.options import Options, predict_limit
from engine.tokenizer import Tokenizer


class KVCache(Protocol):
    n_past: int
    n_fresh: int  # leading positions not moved by a context shift (reusable across requests)

    def truncate(self, n: int) -> None: ...

    def shift(self, n_keep: int, n_discard: int) -> None: ...


class Model(Protocol):
    tokenizer: Tokenizer

    def new_cache(self, num_ctx: int) -> KVCache: ...

    def eval(
        self,
        tokens: Sequence[int],
        cache: KVCache,
        num_batch: int,
        last_only: bool = False,
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> npt.NDArray[np.float32]: ...  # (T, V), or (1, V) with last_only


@dataclass
class Slot:
    """A KV cache plus the token ids it holds, kept between requests to reuse a prompt prefix."""

    num_ctx: int
    cache: KVCache
    tokens: list[int] = field(default_factory=list)

    @classmethod
    def new(cls, model: Model, num_ctx: int) -> Slot:
        return cls(num_ctx, model.new_cache(num_ctx))


@dataclass(frozen=True)
class Stats:
    """The final event's counts and nanosecond durations (ollama-api.md §4.4)."""

    prompt_eval_count: int  # the whole prompt, cached prefix included
    prompt_eval_duration: int  # evaluating the non-cached prompt tokens
    eval_count: int  # sampled tokens, a final end-of-generation token included
    eval_duration: int
    load_duration: int
    total_duration: int


@dataclass(frozen=True)
class Step:
    """One sampled token and the text it releases ("" while text is held back)."""

    token: int
    text: str
    logprobs: TokenLogprobs | None = None
    trace: SampleTrace | None = None
    done: bool = False
    done_reason: str | None = None  # "stop" or "length" on the last step
    stats: Stats | None = None  # on the last step


def truncate_prompt(prompt: Sequence[int], opts: Options, add_bos: bool) -> list[int]:
    """Ollama's over-long prompt truncation: the first `keep` tokens plus the newest tail.

    keep = num_keep (the whole prompt if < 0), +1 for BOS, at most num_ctx - 1; the result has
    limit = num_ctx - max((num_ctx - keep) // 2, 1) tokens (spec/sampling.md §6.7).
    """
    n_ctx = opts.num_ctx
    if len(prompt) <= n_ctx - 1:
        return list(prompt)
    keep = len(prompt) if opts.num_keep < 0 else opts.num_keep
    keep = min(keep + int(add_bos), n_ctx - 1)
    limit = n_ctx - max((n_ctx - keep) // 2, 1)
    return list(prompt[:keep]) + list(prompt[len(prompt) - (limit - keep) :])


def shift_amounts(n_past: int, n_prompt: int, opts: Options, add_bos: bool) -> tuple[int, int]:
    """llama-server's context shift: (n_keep, n_discard) when n_past + 1 >= n_ctx."""
    n_keep = n_prompt if opts.num_keep < 0 else opts.num_keep
    n_keep = min(n_keep + int(add_bos), opts.num_ctx - 4)
    n_left = n_past - n_keep
    n_discard = min(max(n_left // 2, 0), max(0, n_left - 1))
    return n_keep, n_discard


def _partial_stop(text: str, stops: Sequence[str]) -> bool:
    """Does some suffix of `text` begin a stop string?"""
    for w in stops:
        for n in range(min(len(w), len(text)), 0, -1):
            if text.endswith(w[:n]):
                return True
    return False


def _find_stop(unsent: str, piece: str, stops: Sequence[str]) -> int | None:
    """Earliest stop-string match in the window a match completed by `piece` could start in."""
    hit = None
    for w in stops:
        pos = unsent.find(w, max(0, len(unsent) - len(w) - len(piece)))
        if pos >= 0 and (hit is None or pos < hit):
            hit = pos
    return hit


def _prefill(
    model: Model,
    slot: Slot,
    prompt: list[int],
    num_batch: int,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[npt.NDArray[np.float32], int]:
    """Evaluate what the slot does not hold yet; returns (last logits (V,), tokens evaluated)."""
    common = 0
    for a, b in zip(slot.tokens, prompt, strict=False):
        if a != b:
            break
        common += 1
    common = min(common, len(prompt) - 1)  # the last prompt token is re-evaluated for logits
    # Reuse only rows a fresh prefill would compute bit for bit: every row is computed the same
    # way however it was batched (engine/models/decoder.py), but keys moved by a context shift are
    # not.
    common = min(common, slot.cache.n_fresh)
    slot.cache.truncate(common)
    slot.tokens = prompt[:common]
    try:
        logits = model.eval(
            prompt[common:], slot.cache, num_batch, last_only=True, cancelled=cancelled
        )
    finally:  # a cancelled prefill keeps the chunks it finished, as reusable prefix
        slot.tokens = list(prompt[: slot.cache.n_past])
    return logits[-1], len(prompt) - common
    return logits[-1], len(prompt) - common


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    opts: Options,
    *,
    stop: Sequence[str] = (),
    constraint: Constraint | None = None,
    slot: Slot | None = None,
    truncate: bool = True,
    shift: bool = True,
    logprobs: bool = False,
    top_logprobs: int = 0,
    trace: bool = False,
    load_duration: int = 0,
    t_start: int | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[Step]:
    """Generate from `prompt_ids` until a stop condition; yields one `Step` per sampled token.

    stop: extra stop strings, added to `opts.stop`. constraint: a grammar (engine/grammar).
    slot: a cache to reuse and update in place (reset if its num_ctx differs from opts').
    truncate/shift: Ollama's request switches for prompt truncation and context shifting.
    t_start: monotonic ns when the request arrived (default: now), for total_duration.
    cancelled: polled between layers of every evaluation; once true, engine.errors.Cancelled
    is raised (the slot keeps what was evaluated).
    Raises ContextOverflow for an empty prompt, or one too long with truncation/shift off.
    """
    t0 = time.monotonic_ns() if t_start is None else t_start
    tok = model.tokenizer
    stops = tuple(opts.stop) + tuple(s for s in stop if s)
    if not prompt_ids:
        raise ContextOverflow("the prompt is empty: at least one token is needed")
    if len(prompt_ids) > opts.num_ctx - 1 and not (truncate and shift):
        raise ContextOverflow(
            f"the prompt has {len(prompt_ids)} tokens, more than the context allows "
            f"({opts.num_ctx - 1} with num_ctx={opts.num_ctx}) and truncation is off"
        )
    prompt = truncate_prompt(prompt_ids, opts, tok.add_bos)
    if slot is None:
        slot = Slot.new(model, opts.num_ctx)
    elif slot.num_ctx != opts.num_ctx:  # another context size: start the caller's slot afresh
        slot.num_ctx, slot.cache, slot.tokens = opts.num_ctx, model.new_cache(opts.num_ctx), []

    t_prompt = time.monotonic_ns()
    logits, _ = _prefill(model, slot, prompt, opts.num_batch, cancelled)
    sampler = Sampler(opts, logits.shape[-1], constraint=constraint)
    sampler.accept_prompt(prompt)
    t_eval = time.monotonic_ns()
    prompt_eval_duration = t_eval - t_prompt

    limit = predict_limit(opts)
    detok = tok.stream(special=False)  # control tokens (EOG) render as "", as in llama-server
    text = ""  # generated_text
    n_sent = 0
    n_gen = 0
    while True:
        tr = sampler.sample_traced(logits) if trace else None
        token = tr.token if tr is not None else sampler.sample(logits)
        lp = token_logprobs(logits, token, top_logprobs) if logprobs else None
        sampler.accept(token)
        n_gen += 1
        is_eog = token in tok.eog_ids

        piece = detok.push(token)
        text += piece
        unsent = text[n_sent:]
        reason = None
        hit = _find_stop(unsent, piece, stops) if stops else None
        if hit is not None:
            text = text[: n_sent + hit]
            out = unsent[:hit]
            reason = "stop"
        elif not is_eog and _partial_stop(unsent, stops):
            out = ""
        else:
            out = unsent
        n_sent += len(out)
        if not shift and slot.cache.n_past + 1 >= opts.num_ctx:
            reason = "length"
        if reason is None and limit is not None and n_gen >= limit:
            reason = "length"
        if is_eog:
            reason = "stop"

        if reason is not None:
            now = time.monotonic_ns()
            stats = Stats(
                len(prompt), prompt_eval_duration, n_gen, now - t_eval, load_duration, now - t0
            )
            yield Step(token, out, lp, tr, True, reason, stats)
            return
        yield Step(token, out, lp, tr)

        if slot.cache.n_past + 1 >= opts.num_ctx:
            n_keep, n_discard = shift_amounts(slot.cache.n_past, len(prompt), opts, tok.add_bos)
            slot.cache.shift(n_keep, n_discard)
            del slot.tokens[n_keep : n_keep + n_discard]
        logits = model.eval(
            [token], slot.cache, opts.num_batch, last_only=True, cancelled=cancelled
        )[-1]
        slot.tokens.append(token)
