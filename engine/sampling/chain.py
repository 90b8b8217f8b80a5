"""llama-server's sampler chain for Ollama's options, reproducing llama.cpp token for token.

Every stage is a pure function over a `Candidates` array (llama_token_data_array: ids, logits,
probabilities and a `sorted` flag) and follows src/llama-sampler.cpp as described in
spec/sampling.md §1-§5: float32 arithmetic with sequential sums (float64 only in dist's total),
glibc's `expf`/`logf` results, libstdc++'s order for tied logits (engine/sampling/stdsort.py), and
the std::mt19937 draw of engine/sampling/rng.py. A `Sampler` holds the per-request state: the RNG,
the penalty window and an optional grammar constraint (resampled as llama-server does).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from engine.sampling import stdsort
from engine.sampling.libm import expf, logf
from engine.sampling.options import Options
from engine.sampling.rng import StdMT19937, resolve_seed

F32 = np.float32
P = ParamSpec("P")
R = TypeVar("R")
FloatArray = npt.NDArray[np.float32]
_FLT_MAX = float(np.finfo(np.float32).max)


def _ieee(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` with NumPy's float warnings off: inf - inf = NaN etc. pass silently, as in C."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


# --- the candidate array ---------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """llama_token_data_array: records (id, logit, p) in array order, plus the sorted flag."""

    ids: npt.NDArray[np.int32]  # (n,)
    logits: FloatArray  # (n,)
    p: FloatArray  # (n,)
    sorted: bool = False

    @classmethod
    def from_logits(cls, logits: FloatArray) -> Candidates:
        """Token-id order, p = 0, unsorted: how llama-server builds the array (§1)."""
        logits = np.asarray(logits, dtype=F32)
        (V,) = logits.shape
        return cls(np.arange(V, dtype=np.int32), logits.copy(), np.zeros(V, dtype=F32))

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def take(self, idx: npt.NDArray[np.integer], sorted: bool) -> Candidates:
        return Candidates(self.ids[idx], self.logits[idx], self.p[idx], sorted)


def _max_logit(c: Candidates) -> np.float32:
    return c.logits[0] if c.sorted else c.logits.max()


def _full_sort(c: Candidates) -> Candidates:
    return c.take(stdsort.top_order(c.logits, c.size), sorted=True)


@_ieee
def softmax(c: Candidates, do_sort: bool) -> Candidates:
    """llama_sampler_softmax_impl: p = expf(logit - max) / float32 sequential sum (§3.0)."""
    if do_sort and not c.sorted:
        c = _full_sort(c)
    e = expf(c.logits - _max_logit(c))
    total = np.cumsum(e, dtype=F32)[-1]
    return replace(c, p=e / total)


# --- the stages ------------------------------------------------------------------------------


@_ieee
def apply_penalties(
    c: Candidates,
    counts: npt.NDArray[np.int32],
    repeat_penalty: float,
    frequency_penalty: float,
    presence_penalty: float,
) -> Candidates:
    """Repeat/frequency/presence penalties for tokens in the window (§3.2). counts: (V,)."""
    n = counts[c.ids]
    hit = n > 0
    x = c.logits[hit]
    x = np.where(x <= 0, x * F32(repeat_penalty), x / F32(repeat_penalty))
    x = x - (n[hit].astype(F32) * F32(frequency_penalty) + F32(presence_penalty))
    logits = c.logits.copy()
    logits[hit] = x
    return replace(c, logits=logits, sorted=False)


@_ieee
def apply_top_k(c: Candidates, k: int) -> Candidates:
    """Keep the k highest logits, sorted; sorts the whole array even when k >= size (§3.3)."""
    k = min(k, c.size)
    if not c.sorted:
        return c.take(stdsort.top_order(c.logits, k), sorted=True)
    return c.take(np.arange(k), sorted=True)


@_ieee
def apply_typical(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Locally typical sampling (§3.4); survivors end in ascending |-log p - H| order."""
    c = softmax(c, do_sort=True)
    log_p = logf(c.p)
    entropy = np.cumsum(-c.p * log_p, dtype=F32)[-1]  # NaN if some p == 0, as in C
    scores = np.abs(-log_p - entropy)
    order = stdsort.sort(scores)
    cum = np.cumsum(c.p[order], dtype=F32)
    i = np.arange(c.size)
    stop = (cum > F32(p)) & ((min_keep == 0) | (i >= min_keep - 1))
    last = int(np.argmax(stop)) + 1 if stop.any() else c.size
    return c.take(order[:last], sorted=False)


def _first_reaching(cum: FloatArray, p: float, min_keep: int, offset: int = 0) -> int | None:
    """First i (counting from `offset`) with cum >= p and i + 1 >= min_keep, else None."""
    i = np.arange(offset, offset + cum.size)
    ok = (cum >= F32(p)) & (i + 1 >= min_keep)
    return int(i[np.argmax(ok)]) if ok.any() else None


@_ieee
def apply_top_p(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Nucleus filter (§3.5): softmax in the current order, then the shortest sorted prefix.

    An unsorted array above 1024 entries first bucket-sorts only its top 256 and falls back to
    sorting everything if those do not reach p.
    """
    c = softmax(c, do_sort=False)
    if c.sorted or c.size <= 1024:
        if not c.sorted:
            c = _full_sort(c)
        last = _first_reaching(np.cumsum(c.p, dtype=F32), p, min_keep)
        return c.take(np.arange(c.size if last is None else last + 1), sorted=True)
    k = min(256, c.size)
    head = stdsort.bucket_partial_sort(c.logits, k)
    cum_head = np.cumsum(c.p[head[:k]], dtype=F32)
    last = _first_reaching(cum_head, p, min_keep)
    if last is not None:
        return c.take(head[: last + 1], sorted=True)
    full = stdsort.bucket_partial_sort(c.logits, c.size)
    tail = np.cumsum(np.concatenate([cum_head[-1:], c.p[full[k:]]]), dtype=F32)[1:]
    last = _first_reaching(tail, p, min_keep, offset=k)
    return c.take(full[: c.size if last is None else last + 1], sorted=True)


@_ieee
def apply_min_p(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Drop logits below max + logf(p) (§3.6); unsorted arrays keep their order if possible."""
    if c.size == 0:
        return c
    log_p = logf(np.array([p], dtype=F32))[0]
    if not c.sorted:
        threshold = F32(max(F32(-_FLT_MAX), c.logits.max()) + log_p)
        keep = np.flatnonzero(c.logits >= threshold)
        if keep.size > 0 and keep.size >= min_keep:
            return c.take(keep, sorted=False)
        c = _full_sort(c)
    threshold = F32(c.logits[0] + log_p)
    i = np.arange(c.size)
    cut = (c.logits < threshold) & (i >= min_keep) & (i >= 1)
    last = int(np.argmax(cut)) if cut.any() else c.size
    return c.take(np.arange(last), sorted=True)


@_ieee
def apply_temperature(c: Candidates, temperature: float) -> Candidates:
    """Divide logits by temperature; <= 0 keeps only the first maximal logit (§3.7)."""
    if temperature <= 0:
        best = int(np.argmax(c.logits))  # first index of the maximum, as the C loop keeps
        logits = np.full(c.size, -np.inf, dtype=F32)
        logits[best] = c.logits[best]
        return replace(c, logits=logits)
    return replace(c, logits=c.logits / F32(temperature))


@_ieee
def apply_dist(c: Candidates, u: float) -> tuple[Candidates, int]:
    """The random pick (§3.8): returns the normalised array and the selected *index*.

    p = expf(logit - max) in float32, total and running sum in float64 over array order; the
    first index whose running sum reaches total * u wins; NaN totals pick the last index.
    """
    if c.size == 1:
        return replace(c, p=np.ones(1, dtype=F32)), 0
    e = expf(c.logits - _max_logit(c))
    run = dist_running_sum(e)
    total = run[-1]
    hit = run >= total * u
    selected = int(np.argmax(hit)) if hit.any() else c.size - 1
    return replace(c, p=(e.astype(np.float64) / total).astype(F32)), selected


def dist_running_sum(e: FloatArray) -> npt.NDArray[np.float64]:
    """dist's running sum (n,) of the float32 weights e = expf(logit - max), in float64."""
    return np.cumsum(e.astype(np.float64))  # sequential, like the C loop


@_ieee
def dist_interval(c: Candidates, index: int) -> tuple[float, float]:
    """Where array entry `index` sits in dist's cumulative distribution: (start, end) in [0, 1].

    dist picks the entry whose interval holds its uniform draw, so for the chosen entry
    start < u <= end (array order, not probability order, unless `c.sorted`).
    """
    run = dist_running_sum(expf(c.logits - _max_logit(c)))
    start = run[index - 1] / run[-1] if index > 0 else 0.0
    return float(start), float(run[index] / run[-1])


@_ieee
def apply_mask(c: Candidates, allowed: npt.NDArray[np.bool_]) -> Candidates:
    """Grammar stage: disallowed tokens get logit -inf; nothing is removed. allowed: (V,)."""
    logits = np.where(allowed[c.ids], c.logits, F32(-np.inf)).astype(F32)
    return replace(c, logits=logits)


# --- the chain -------------------------------------------------------------------------------

Stage = Callable[[Candidates, Options, npt.NDArray[np.int32], int], Candidates]


def _penalties_off(o: Options) -> bool:
    neutral = o.repeat_penalty == 1 and o.frequency_penalty == 0 and o.presence_penalty == 0
    return o.repeat_last_n <= 0 or neutral


# llama-server's default sampler order (common/common.h `samplers`) restricted to what Ollama can
# enable: logit-bias, DRY, top-n-sigma and XTC are never configured by Ollama and stay empty.
# Each entry: name, "empty" rule decided from the options alone (an empty sampler does nothing,
# not even sort), and the stage. dist always runs last and is applied by `run_chain`.
CHAIN: tuple[tuple[str, Callable[[Options], bool], Stage], ...] = (
    (
        "penalties",
        _penalties_off,
        lambda c, o, counts, mk: apply_penalties(
            c, counts, o.repeat_penalty, o.frequency_penalty, o.presence_penalty
        ),
    ),
    ("top_k", lambda o: o.top_k <= 0, lambda c, o, counts, mk: apply_top_k(c, o.top_k)),
    # Ollama's completion request omits typical_p == 0, so llama-server's default 1.0 (off) applies
    (
        "typical_p",
        lambda o: o.typical_p >= 1 or o.typical_p == 0,
        lambda c, o, counts, mk: apply_typical(c, o.typical_p, mk),
    ),
    ("top_p", lambda o: o.top_p >= 1, lambda c, o, counts, mk: apply_top_p(c, o.top_p, mk)),
    ("min_p", lambda o: o.min_p <= 0, lambda c, o, counts, mk: apply_min_p(c, o.min_p, mk)),
    (
        "temperature",
        lambda o: o.temperature == 1,
        lambda c, o, counts, mk: apply_temperature(c, o.temperature),
    ),
)


@dataclass(frozen=True)
class StageTrace:
    """Candidates after one stage: how many survive and the first few in array order.

    `top` holds (id, logit, prob) where prob is a float64 softmax over the survivors' current
    logits, for display only (the C code's own p field is stale after some stages).
    """

    name: str
    size: int
    top: tuple[tuple[int, float, float], ...]


@dataclass(frozen=True)
class SampleTrace:
    """One sampling step: the stages of each chain run, the RNG draws, the chosen token."""

    stages: tuple[StageTrace, ...]  # first run, then (after "grammar") the resample's stages
    draws: tuple[float, ...]  # one uniform double per chain run
    resampled: bool  # the constraint rejected the first pick
    rejected: int | None  # that first pick, when resampled
    token: int
    prob: float  # dist's normalised probability of the chosen token
    final: Candidates  # the array dist picked from, with its normalised p
    index: int  # the chosen token's position in `final`


def _stage_trace(name: str, c: Candidates, n_top: int) -> StageTrace:
    head = c if c.sorted else c.take(np.argsort(-c.logits, kind="stable"), sorted=True)
    x = head.logits[:n_top].astype(np.float64)
    finite = np.isfinite(head.logits)
    m = head.logits[finite].max() if finite.any() else 0.0
    z = np.exp(head.logits[finite].astype(np.float64) - m).sum() if finite.any() else 1.0
    probs = np.exp(x - m) / z
    top = tuple(
        (int(i), float(lg), float(pr)) for i, lg, pr in zip(head.ids[:n_top], x, probs, strict=True)
    )
    return StageTrace(name, c.size, top)


def run_chain(
    c: Candidates,
    opts: Options,
    counts: npt.NDArray[np.int32],
    u: float,
    min_keep: int = 0,
    trace: list[StageTrace] | None = None,
    n_top: int = 5,
) -> tuple[Candidates, int]:
    """Apply every non-empty stage of CHAIN, then dist with the draw `u`; returns (array, index)."""
    for name, is_empty, stage in CHAIN:
        if is_empty(opts):
            continue
        c = stage(c, opts, counts, min_keep)
        if trace is not None:
            trace.append(_stage_trace(name, c, n_top))
    return apply_dist(c, u)


class Constraint(Protocol):
    """A grammar (engine/grammar.py): which tokens may come next, and how to advance."""

    def accepts(self, token: int) -> bool: ...

    def mask(self) -> npt.NDArray[np.bool_]: ...

    def accept(self, token: int) -> None: ...


class Sampler:
    """Per-request sampler state: RNG, penalty window and optional grammar constraint.

    Mirrors llama-server's slot: feed the prompt with `accept_prompt`, then per step `sample`
    (or `sample_traced`) and `accept`. `seed` overrides `opts.seed`; -1/None draws a fresh one.
    `min_keep` is llama-server's, which Ollama never sets (default 0).
    """

    def __init__(
        self,
        opts: Options,
        n_vocab: int,
        seed: int | None = None,
        constraint: Constraint | None = None,
        min_keep: int = 0,
    ) -> None:
        self.opts = opts
        self.seed = resolve_seed(opts.seed if seed is None else seed)
        self.rng = StdMT19937(self.seed)
        self.constraint = constraint
        self.min_keep = min_keep
        self._counts = np.zeros(n_vocab, dtype=np.int32)  # (V,) occurrences in the window
        self._window: deque[int] = deque()

    def _push(self, token: int) -> None:
        """Penalty ring buffer accept: skipped when repeat_last_n is 0 (§3.2)."""
        if self.opts.repeat_last_n <= 0 or token >= len(self._counts):
            return  # image rows (labels >= n_vocab) are not tokens: llama.cpp never samples them
        self._counts[token] += 1
        if len(self._window) == self.opts.repeat_last_n:
            self._counts[self._window.popleft()] -= 1
        self._window.append(token)

    def accept_prompt(self, tokens: Iterable[int]) -> None:
        """Feed prompt tokens into the penalty window only (the grammar never sees them)."""
        for t in tokens:
            self._push(int(t))

    def accept(self, token: int) -> None:
        """Record a generated token: grammar first, then the penalty window."""
        if self.constraint is not None:
            self.constraint.accept(token)
        self._push(token)

    def sample(self, logits: FloatArray) -> int:
        """Pick the next token from raw logits (V,); call `accept` with it afterwards."""
        return self._sample(logits, None).token

    def sample_traced(self, logits: FloatArray, n_top: int = 5) -> SampleTrace:
        """`sample`, also returning the RNG draws, the final array and (for n_top > 0) the first
        n_top candidates left by every stage."""
        return self._sample(logits, n_top)

    def _sample(self, logits: FloatArray, n_top: int | None) -> SampleTrace:
        stages: list[StageTrace] | None = [] if n_top else None
        k = n_top or 0
        draws = [self.rng.uniform_double()]
        c, sel = run_chain(
            Candidates.from_logits(logits),
            self.opts,
            self._counts,
            draws[0],
            self.min_keep,
            stages,
            k,
        )
        token = int(c.ids[sel])
        resampled = self.constraint is not None and not self.constraint.accepts(token)
        rejected = token if resampled else None
        if resampled:
            assert self.constraint is not None
            masked = apply_mask(Candidates.from_logits(logits), self.constraint.mask())
            if stages is not None:
                stages.append(_stage_trace("grammar", masked, k))
            draws.append(self.rng.uniform_double())
            c, sel = run_chain(masked, self.opts, self._counts, draws[1], self.min_keep, stages, k)
            token = int(c.ids[sel])
        return SampleTrace(
            tuple(stages or ()), tuple(draws), resampled, rejected, token, float(c.p[sel]), c, sel
        )


# --- logprobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprobs:
    """Pre-sampling log-probabilities of one generated token and the top alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob), highest first; empty if not requested


@_ieee
def token_logprobs(logits: FloatArray, token: int, top_logprobs: int) -> TokenLogprobs:
    """llama-server's n_probs output from raw logits over the whole vocabulary (§6.9).

    The top max(top_logprobs, 1) are std::partial_sort-ed; expf and a float32 sum run over the
    vocabulary in the resulting array order; logprob = logf(p), or -FLT_MAX when p == 0.
    """
    logits = np.asarray(logits, dtype=F32)
    n = max(top_logprobs, 1)
    order = stdsort.partial_sort_full(-logits, n)
    x = logits[order]
    e = expf(x - x[0])
    p = e / np.cumsum(e, dtype=F32)[-1]
    lp = np.where(p > 0, logf(p), F32(-_FLT_MAX))
    pos = int(np.flatnonzero(order == token)[0])
    top = tuple((int(order[i]), float(lp[i])) for i in range(min(top_logprobs, order.size)))
    return TokenLogprobs(token, float(lp[pos]), top)
