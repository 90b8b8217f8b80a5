from __future__ import annotations

import ctypes
import ctypes.util
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sampling import stdsort
from engine.sampling.chain import (
    CHAIN,
    Candidates,
    Sampler,
    apply_dist,
    apply_min_p,
    apply_penalties,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    apply_typical,
    dist_interval,
    softmax,
    token_logprobs,
)
from engine.sampling.libm import expf, logf
from engine.sampling.options import Options
from engine.sampling.rng import StdMT19937, resolve_seed
from tests.conftest import needs_oracle
from tests.golden.make_sampling_golden import (
    GOLDEN,
    AllowSet,
    Case,
    engine_run,
    make_case,
    oracle_run,
)

F32 = np.float32


_SPEC_LOGITS = np.array([1, 2, 0.5, -1, 3, 2.5, 0, 1.5], dtype=F32)  # spec §8.4


def cands(logits: list[float]) -> Candidates:
    return Candidates.from_logits(np.array(logits, dtype=F32))


# --- RNG (spec/sampling.md §5.4 test vectors, measured there against g++/libstdc++) ---------


@pytest.mark.parametrize(
    ("seed", "raw", "doubles"),
    [
        (0, [2357136044, 2546248239, 3071714933], [0.59284461651668263, 0.84426574425659828]),
        (42, [1608637542, 3421126067, 4083286876], [0.79654298428784598, 0.18343478789336848]),
        (5489, [3499211612, 581869302, 3890346734], [0.1354770042967805, 0.8350085899945795]),
    ],
)
def test_mt19937_vectors(seed: int, raw: list[int], doubles: list[float]) -> None:
    r = StdMT19937(seed)
    assert [r.next_u32() for _ in range(3)] == raw
    r = StdMT19937(seed)
    assert [r.uniform_double() for _ in range(2)] == doubles


class _FixedWords(StdMT19937):
    def __init__(self, words: list[int]) -> None:
        self.words = list(words)

    def next_u32(self) -> int:
        return self.words.pop(0)


@pytest.mark.parametrize(
    ("lo", "hi", "u"),
    [
        (0xFFFFFFFF, 0xFFFFFFFF, 1 - 2**-53),  # rounds to 1.0, clamped
        (1, 0, 2**-64),
        (0x80000000, 0x12345678, float.fromhex("0x1.23456788p-4")),
    ],
)
def test_generate_canonical_edges(lo: int, hi: int, u: float) -> None:
    assert _FixedWords([lo, hi]).uniform_double() == u


def test_seed_resolution() -> None:
    assert resolve_seed(42) == 42
    assert resolve_seed(-2) == 0xFFFFFFFE  # uint32 cast: an ordinary fixed seed
    assert resolve_seed(2**32 + 5) == 5
    draws = {resolve_seed(-1) for _ in range(4)} | {resolve_seed(None)}
    assert len(draws) > 1  # fresh random seeds


# --- glibc expf/logf (engine/sampling/libm.py) ----------------------------------------------------

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.expf.restype = _LIBM.logf.restype = ctypes.c_float
_LIBM.expf.argtypes = _LIBM.logf.argtypes = [ctypes.c_float]


def test_expf_logf_match_libm_bit_for_bit() -> None:
    r = np.random.default_rng(0)
    x = np.concatenate(
        [-r.exponential(3, 20000), -r.uniform(0, 104, 20000), [0.0, -0.0, -np.inf, -1e-45]]
    ).astype(F32)
    want = np.array([_LIBM.expf(float(v)) for v in x], dtype=F32)
    assert expf(x).tobytes() == want.tobytes()
    p = r.uniform(0, 1, 5000).astype(F32)
    assert logf(p).tobytes() == np.array([_LIBM.logf(float(v)) for v in p], F32).tobytes()


# --- stages, hand-computed -------------------------------------------------------------------


def test_penalties() -> None:
    counts = np.array([2, 1, 1, 0], dtype=np.int32)
    c = apply_penalties(cands([2, -1, 0, 3]), counts, 2.0, 0.5, 0.25)
    # id0: 2/2 - (2*0.5 + 0.25); id1: -1*2 - (0.5+0.25); id2: 0*2 - 0.75; id3 untouched
    assert c.logits.tolist() == [-0.25, -2.75, -0.75, 3.0]
    assert not c.sorted


def test_top_k_sorts_and_truncates() -> None:
    c = apply_top_k(cands([1, 3, 2, 5]), 2)
    assert c.ids.tolist() == [3, 1] and c.sorted
    assert apply_top_k(cands([1, 3, 2, 5]), 10).ids.tolist() == [3, 1, 2, 0]


def test_top_p() -> None:
    logits = np.log(np.array([0.2, 0.5, 0.3])).tolist()
    assert apply_top_p(cands(logits), 0.75, 0).ids.tolist() == [1, 2]  # 0.5 + 0.3 >= 0.75
    assert apply_top_p(cands(logits), 0.0, 0).ids.tolist() == [1]
    assert apply_top_p(cands(logits), 0.1, 3).ids.tolist() == [1, 2, 0]  # min_keep


def test_min_p_keeps_array_order_when_unsorted() -> None:
    c = apply_min_p(cands([0, -1, -3, -0.5]), 0.2, 0)  # threshold ln 0.2 = -1.609
    assert c.ids.tolist() == [0, 1, 3] and not c.sorted
    c = apply_min_p(cands([0, -1, -3, -0.5]), 0.2, 4)  # too few kept: sorted path
    assert c.ids.tolist() == [0, 3, 1, 2] and c.sorted


def test_typical() -> None:
    # p = .6 .3 .1: H = .898; |-ln p - H| = .387 .306 1.405 -> order id1, id0, id2
    c = apply_typical(cands(np.log([0.6, 0.3, 0.1]).tolist()), 0.5, 0)
    assert c.ids.tolist() == [1, 0] and not c.sorted  # cum .3, then .9 > .5


def test_temperature() -> None:
    assert apply_temperature(cands([1, 4, 4, 2]), 2.0).logits.tolist() == [0.5, 2, 2, 1]
    greedy = apply_temperature(cands([1, 4, 4, 2]), 0.0).logits.tolist()
    assert greedy == [-math.inf, 4, -math.inf, -math.inf]  # the first maximum survives


def test_dist() -> None:
    c = cands([0, 0])
    assert apply_dist(c, 0.25)[1] == 0
    assert apply_dist(c, 0.5)[1] == 0  # running sum 1 >= total 2 * 0.5
    assert apply_dist(c, 0.75)[1] == 1
    assert apply_dist(cands([-math.inf] * 3), 0.3)[1] == 2  # NaN total: last candidate
    final, _ = apply_dist(c, 0.1)
    assert final.p.tolist() == [0.5, 0.5]


def test_softmax_uses_sequential_float32_sum() -> None:
    c = softmax(cands([0, 0, 0, 0]), do_sort=False)
    assert c.p.tolist() == [0.25] * 4 and c.p.dtype == F32


def test_chain_order() -> None:
    assert [name for name, _, _ in CHAIN] == [
        "penalties",
        "top_k",
        "typical_p",
        "top_p",
        "min_p",
        "temperature",
    ]


def test_trace_under_ollama_defaults() -> None:
    s = Sampler(Options(seed=42), 8)
    tr = s.sample_traced(np.array([1, 2, 0.5, -1, 3, 2.5, 0, 1.5], dtype=F32))
    assert [st.name for st in tr.stages] == ["top_k", "top_p", "temperature"]
    assert [st.size for st in tr.stages] == [8, 5, 5]
    assert tr.draws == (StdMT19937(42).uniform_double(),) and not tr.resampled
    assert tr.token == 1 and tr.final.ids[0] == 4  # spec §8.4: first token 1


def test_typical_p_zero_is_off_as_ollama_omits_it() -> None:
    for typical, on in ((0.0, False), (1.0, False), (0.5, True)):
        tr = Sampler(Options(seed=1, typical_p=typical), 8).sample_traced(_SPEC_LOGITS)
        assert ("typical_p" in [st.name for st in tr.stages]) == on


def test_penalty_window_slides() -> None:
    s = Sampler(Options(seed=1, repeat_last_n=3, repeat_penalty=2.0), 8)
    s.accept_prompt([1, 1, 2])
    s.accept(3)  # the window is now 1 2 3: token 1 once
    tr = s.sample_traced(np.ones(8, dtype=F32), n_top=8)
    penalized = {i for i, lg, _ in tr.stages[0].top if lg == 0.5}
    assert penalized == {1, 2, 3}


# --- end-to-end vectors from spec/sampling.md §8.4 (measured with llama.cpp there) -----------


@pytest.mark.parametrize(
    ("opts", "tokens"),
    [
        (Options(seed=42), [1, 4, 1, 5, 4, 4, 4, 4, 4, 5, 4, 5]),
        (
            Options(seed=42, top_p=float(F32(0.95)), min_p=float(F32(0.05))),
            [1, 4, 1, 5, 4, 4, 4, 4, 4, 5, 4, 5],
        ),
        (
            Options(seed=42, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0),
            [5, 1, 5, 4, 4, 1, 4, 4, 1, 5, 1, 5],
        ),
        (Options(seed=42, repeat_penalty=float(F32(1.3))), [1, 4, 1, 4, 4, 5, 5, 4, 4, 1, 4, 1]),
    ],
)
def test_spec_end_to_end_vectors(opts: Options, tokens: list[int]) -> None:
    s = Sampler(opts, 8)
    got = []
    for _ in range(12):
        t = s.sample(_SPEC_LOGITS)
        s.accept(t)
        got.append(t)
    assert got == tokens


def test_constraint_resample_draws_twice() -> None:
    allowed = np.zeros(8, dtype=bool)
    allowed[[0, 6]] = True
    s = Sampler(Options(seed=42), 8, constraint=AllowSet(allowed))
    tr = s.sample_traced(_SPEC_LOGITS)
    assert tr.resampled and len(tr.draws) == 2 and tr.token in (0, 6)
    assert "grammar" in [st.name for st in tr.stages]
    assert tr.rejected is not None and not allowed[tr.rejected]


@pytest.mark.parametrize("seed", range(20))
def test_trace_places_the_draw_in_the_chosen_interval(seed: int) -> None:
    for opts in (Options(seed=seed), Options(seed=seed, top_k=0, top_p=1.0, temperature=1.5)):
        tr = Sampler(opts, 8).sample_traced(_SPEC_LOGITS)
        start, end = dist_interval(tr.final, tr.index)
        assert tr.final.ids[tr.index] == tr.token and tr.rejected is None
        assert start < tr.draws[-1] <= end
        assert end - start == pytest.approx(tr.prob, rel=1e-6)


# --- sorting ---------------------------------------------------------------------------------


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), min_size=1, max_size=300))
@settings(max_examples=150, deadline=None)
def test_emulated_sorts_are_sorts(keys: list[float]) -> None:
    k = np.array(keys, dtype=F32)
    for order in (stdsort.sort(k), stdsort.partial_sort_full(k, k.size)):
        assert sorted(order.tolist()) == list(range(k.size))
        assert np.all(np.diff(k[order]) >= 0)
    m = max(1, k.size // 3)
    head = stdsort.partial_sort(k, m)
    assert np.array_equal(k[head], np.sort(k)[:m])


# --- hypothesis properties -------------------------------------------------------------------

logit_lists = st.lists(
    st.floats(-20, 20, allow_nan=False, width=32) | st.sampled_from([0.0, 1.0, -1.0]),
    min_size=2,
    max_size=200,
)


@given(logit_lists, st.integers(1, 50), st.floats(0, 1), st.floats(0, 1))
@settings(max_examples=200, deadline=None)
def test_filters_keep_the_maximum(logits: list[float], k: int, p: float, mp: float) -> None:
    c = cands(logits)
    top = max(np.array(logits, dtype=F32))
    assert apply_top_k(c, k).size <= k
    for out in (apply_top_k(c, k), apply_top_p(c, p, 0), apply_min_p(c, mp, 0)):
        assert out.size >= 1 and out.logits.max() == top


@given(logit_lists, st.floats(0, 0.999))
@settings(max_examples=200, deadline=None)
def test_top_p_keeps_the_shortest_prefix_reaching_p(logits: list[float], p: float) -> None:
    out = apply_top_p(cands(logits), p, 0)
    assert out.sorted and np.all(np.diff(out.logits) <= 0)
    cum = np.cumsum(out.p, dtype=F32)  # p from the softmax over the whole input
    assert cum[-1] >= F32(p) or out.size == len(logits)  # reaches p, or float rounding kept all
    assert not np.any(cum[:-1] >= F32(p))  # and no shorter prefix does


@given(logit_lists, st.sampled_from([0.0, 0.5, 1.0, 1.5]), st.integers(0, 2**32 - 2))
@settings(max_examples=200, deadline=None)
def test_distribution_sums_to_one_and_temp0_is_argmax(
    logits: list[float], temp: float, seed: int
) -> None:
    x = np.array(logits, dtype=F32)
    opts = Options(seed=seed, temperature=temp, top_k=0, top_p=1.0)
    tr = Sampler(opts, x.size).sample_traced(x)
    assert abs(float(np.sum(tr.final.p, dtype=np.float64)) - 1) < 1e-5
    if temp == 0:
        assert tr.token == int(np.argmax(x))


def _sampler(case: Case) -> Sampler:
    constraint = None if case.allowed is None else AllowSet(case.allowed)
    s = Sampler(
        case.opts, case.n_vocab, seed=case.seed, constraint=constraint, min_keep=case.min_keep
    )
    s.accept_prompt(case.prompt)
    return s


@given(st.integers(0, 2**32 - 2), st.integers(0, 999))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_a_samplers_tokens_depend_only_on_its_own_seed(seed: int, case_seed: int) -> None:
    """Two samplers stepped in turn (seeds s and s+1) draw what each draws alone: no RNG state
    is shared between requests. The alone-run itself is checked against llama.cpp elsewhere."""
    case = make_case(case_seed)
    a, b = Case(**{**case.__dict__, "seed": seed}), Case(**{**case.__dict__, "seed": seed + 1})
    sa, sb = _sampler(a), _sampler(b)
    got_a, got_b = [], []
    for x in case.logits:
        for s, got in ((sa, got_a), (sb, got_b)):
            token = s.sample_traced(x, n_top=0).token
            got.append(token)
            s.accept(token)
    assert (got_a, got_b) == (engine_run(a)[0], engine_run(b)[0])


# --- logprobs --------------------------------------------------------------------------------


def test_token_logprobs() -> None:
    x = np.log(np.array([0.25, 0.5, 0.125, 0.125])).astype(F32)
    lp = token_logprobs(x, 0, 2)
    assert abs(lp.logprob - math.log(0.25)) < 1e-6
    assert [t for t, _ in lp.top] == [1, 0]
    assert abs(lp.top[0][1] - math.log(0.5)) < 1e-6
    assert token_logprobs(x, 2, 0).top == ()


# --- golden vectors and the live oracle ------------------------------------------------------


def _golden() -> list[dict]:  # type: ignore[type-arg]
    return json.loads(GOLDEN.read_text())["cases"]


def _case_for(rec: dict) -> Case:  # type: ignore[type-arg]
    case = make_case(rec["case_seed"], large=rec["n_vocab"] > 80 or rec["case_seed"] >= 10**6)
    assert rec["n_vocab"] == case.n_vocab and rec["seed"] == case.seed  # generator unchanged
    assert rec["params"] == case.params()
    return case


@pytest.mark.slow
def test_golden_choices_match_llama_cpp() -> None:
    records = _golden()
    n_tokens = sum(len(r["tokens"]) for r in records)
    assert n_tokens >= 10_000
    mismatched = [r["case_seed"] for r in records if engine_run(_case_for(r))[0] != r["tokens"]]
    assert mismatched == []


@needs_oracle
@pytest.mark.oracle
def test_golden_file_is_llama_cpps_output() -> None:
    for rec in _golden()[::20]:
        assert oracle_run(_case_for(rec))[0] == rec["tokens"]


@needs_oracle
@pytest.mark.oracle
@given(st.integers(0, 2**31), st.booleans())
@settings(max_examples=150, deadline=None)
def test_differential_against_llama_cpp(case_seed: int, large: bool) -> None:
    """Tokens and the final candidate arrays (ids, logits, p) bit for bit."""
    case = make_case(case_seed, large=large)
    want, want_final = oracle_run(case)
    got, got_final = engine_run(case)
    assert got == want
    for a, b in zip(want_final, got_final, strict=True):
        assert a["id"].tolist() == b.ids.tolist()
        assert a["logit"].tobytes() == b.logits.tobytes()
        assert a["p"].tobytes() == b.p.tobytes()


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"top_k": 0},
        {"top_k": 0, "top_p": 1.0, "min_p": float(F32(0.05))},
        {"top_k": 0, "typical_p": float(F32(0.9))},
        {"top_k": 200, "repeat_penalty": float(F32(1.1))},
    ],
)
def test_full_vocabulary_with_ties_against_llama_cpp(cfg: dict[str, object]) -> None:
    """SmolLM2's vocabulary size on a 0.25 grid: every sort path with thousands of ties."""
    import dataclasses

    r = np.random.default_rng(len(cfg))
    V = 49152
    logits = tuple(
        (np.round(r.standard_normal(V) * 12) / 4).astype(F32) for _ in range(2)
    )  # N(0, 3^2) rounded to multiples of 0.25
    prompt = tuple(int(t) for t in r.integers(0, V, 64))
    opts = dataclasses.replace(Options(), **cfg)  # type: ignore[arg-type]
    case = Case(0, V, opts, 0, int(r.integers(0, 2**32 - 1)), prompt, logits, None)
    want, want_final = oracle_run(case)
    got, got_final = engine_run(case)
    assert got == want
    for a, b in zip(want_final, got_final, strict=True):
        assert a["id"].tolist() == b.ids.tolist() and a["p"].tobytes() == b.p.tobytes()
