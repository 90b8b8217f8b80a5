"""Golden sampling vectors: llama.cpp's own sampler chain on random cases (spec/sampling.md §8).

Each case is a seeded sampler chain as llama-server builds it for Ollama's options, run over a
few steps of random logits. Everything about a case (vocabulary size, options, min_keep, RNG
seed, prompt history, logits, an optional allow-set standing in for a grammar) is regenerated
from its case seed with NumPy, so the JSON stores only the parameters and llama.cpp's choices.

    python tests/golden/make_sampling_golden.py            # rewrite sampling_golden.json
    python tests/golden/make_sampling_golden.py --check    # compare the engine, print mismatches

Needs llama_cpp (llama-cpp-python 0.3.36) for writing; tests/engine/test_sampling.py checks the
committed file without it and re-runs the oracle live when it is importable.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.sampling.chain import Candidates, Sampler
from engine.sampling.options import Options

GOLDEN = Path(__file__).with_name("sampling_golden.json")
N_CASES = 1000  # small-vocabulary chains; about 11,500 sampled tokens with the large ones

TOP_K = (0, 5, 20, 40, 100, 129, 200, 1000)
TOP_P = (1.0, 0.999, 0.95, 0.9, 0.5, 0.1, 0.0)
MIN_P = (0.0, 0.01, 0.05, 0.1, 0.3)
TYPICAL = (1.0, 0.9, 0.5)
TEMPERATURE = (0.8, 1.0, 0.5, 1.5, 0.0, -1.0)
REPEAT_LAST_N = (0, 3, 8, 64)
REPEAT_PENALTY = (1.0, 1.1, 1.3, 0.9)
FREQUENCY = (0.0, 0.5)
PRESENCE = (0.0, 0.7)
MIN_KEEP = (0, 1, 3, 300)
SCALE = (0.5, 2.0, 5.0, 12.0)
GRID = (0.0, 0.0, 0.5, 0.25, 0.05, 0.01)  # 0 = continuous logits; the others force ties


@dataclass(frozen=True)
class Case:
    """One sampler chain: options, seeds and `steps` logit vectors, all from `case_seed`."""

    case_seed: int
    n_vocab: int
    opts: Options
    min_keep: int
    seed: int
    prompt: tuple[int, ...]
    logits: tuple[npt.NDArray[np.float32], ...] = field(repr=False)
    allowed: npt.NDArray[np.bool_] | None = field(repr=False)  # (V,) stand-in grammar

    def params(self) -> list[float]:
        """The options as the golden JSON's `params` lists them, in this order."""
        o = self.opts
        return [
            o.top_k,
            o.top_p,
            o.min_p,
            o.typical_p,
            o.temperature,
            o.repeat_last_n,
            o.repeat_penalty,
            o.frequency_penalty,
            o.presence_penalty,
            self.min_keep,
        ]


def make_case(case_seed: int, large: bool = False) -> Case:
    """Regenerate a case deterministically; `large` uses V in 129..5000 (bucket/adaptive paths)."""
    r = np.random.default_rng(case_seed)
    V = int(r.integers(129, 5001)) if large else int(r.integers(20, 81))

    def pick(values: tuple) -> float:  # type: ignore[type-arg]
        return values[int(r.integers(len(values)))]

    opts = dataclasses.replace(
        Options(),
        top_k=int(pick(TOP_K)),
        top_p=float(np.float32(pick(TOP_P))),
        min_p=float(np.float32(pick(MIN_P))),
        typical_p=float(np.float32(pick(TYPICAL))),
        temperature=float(np.float32(pick(TEMPERATURE))),
        repeat_last_n=int(pick(REPEAT_LAST_N)),
        repeat_penalty=float(np.float32(pick(REPEAT_PENALTY))),
        frequency_penalty=float(np.float32(pick(FREQUENCY))),
        presence_penalty=float(np.float32(pick(PRESENCE))),
    )
    min_keep = int(pick(MIN_KEEP))
    seed = int(r.integers(0, 2**32 - 1))  # 0xFFFFFFFF would mean "random"
    prompt = tuple(int(t) for t in r.integers(0, V, size=int(r.integers(0, 31))))
    n_steps = int(r.integers(3, 21)) if not large else int(r.integers(2, 5))
    scale, grid = pick(SCALE), pick(GRID)
    logits = []
    for _ in range(n_steps):
        x = r.standard_normal(V) * scale
        if grid:
            x = np.round(x / grid) * grid
        logits.append(x.astype(np.float32))
    allowed = None
    if r.random() < 0.15:  # a grammar-like constraint: a random allow-set
        allowed = r.random(V) < float(r.choice([0.02, 0.2, 0.6]))
        allowed[int(r.integers(V))] = True
    return Case(case_seed, V, opts, min_keep, seed, prompt, tuple(logits), allowed)


def all_cases(n: int = N_CASES) -> list[Case]:
    """The golden set: n small-vocabulary cases, then n // 25 large ones."""
    small = [make_case(s) for s in range(n)]
    large = [make_case(10**6 + s, large=True) for s in range(n // 25)]
    return small + large


class AllowSet:
    """A stand-in grammar for the resample path: a fixed set of allowed token ids."""

    def __init__(self, allowed: npt.NDArray[np.bool_]) -> None:
        self.allowed = allowed

    def accepts(self, token: int) -> bool:
        return bool(self.allowed[token])

    def mask(self) -> npt.NDArray[np.bool_]:
        return self.allowed

    def accept(self, token: int) -> None:
        if not self.allowed[token]:
            raise ValueError(f"token {token} is not allowed")


def engine_run(case: Case) -> tuple[list[int], list[Candidates]]:
    """The engine's tokens and final candidate arrays for a case."""
    constraint = None if case.allowed is None else AllowSet(case.allowed)
    s = Sampler(
        case.opts, case.n_vocab, seed=case.seed, constraint=constraint, min_keep=case.min_keep
    )
    s.accept_prompt(case.prompt)
    tokens, finals = [], []
    for x in case.logits:
        step = s.sample_traced(x, n_top=0)
        tokens.append(step.token)
        finals.append(step.final)
        s.accept(step.token)
    return tokens, finals


# --- the oracle: llama.cpp's chain through llama-cpp-python's low-level API (§8.1) ------------

_RECORD = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _server_chain(case: Case):  # type: ignore[no-untyped-def]
    """common_sampler_init's chain for these options, after llama-server's request clamping."""
    import llama_cpp as L

    o, mk = case.opts, case.min_keep
    params = L.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = L.llama_sampler_chain_init(params)
    for s in (
        L.llama_sampler_init_penalties(
            case.n_vocab,
            o.repeat_last_n,
            o.repeat_penalty,
            o.frequency_penalty,
            o.presence_penalty,
        ),
        L.llama_sampler_init_dry(None, 0.0, 1.75, 2, 64, None, 0),
        L.llama_sampler_init_top_n_sigma(-1.0),
        L.llama_sampler_init_top_k(max(o.top_k, 0)),
        L.llama_sampler_init_typical(o.typical_p, mk),
        L.llama_sampler_init_top_p(min(max(o.top_p, 0.0), 1.0), mk),
        L.llama_sampler_init_min_p(min(max(o.min_p, 0.0), 1.0), mk),
        L.llama_sampler_init_xtc(0.0, 0.1, mk, case.seed),
        L.llama_sampler_init_temp_ext(max(o.temperature, 0.0), 0.0, 1.0),
        L.llama_sampler_init_dist(case.seed),
    ):
        L.llama_sampler_chain_add(chain, s)
    return chain


def _apply(chain, logits: npt.NDArray[np.float32]) -> tuple[int, npt.NDArray[np.void]]:  # type: ignore[no-untyped-def]
    import llama_cpp as L

    arr = np.zeros(logits.size, dtype=_RECORD)
    arr["id"] = np.arange(logits.size)
    arr["logit"] = logits
    cur = L.llama_token_data_array(
        data=arr.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
        size=logits.size,
        selected=-1,
        sorted=False,
    )
    L.llama_sampler_apply(chain, ctypes.byref(cur))
    base = ctypes.cast(cur.data, ctypes.c_void_p).value
    raw = (ctypes.c_char * (cur.size * _RECORD.itemsize)).from_address(base)
    final = np.frombuffer(bytes(raw), dtype=_RECORD)
    return int(final["id"][cur.selected]), final


def oracle_run(case: Case) -> tuple[list[int], list[npt.NDArray[np.void]]]:
    """llama.cpp's tokens and final arrays, with llama-server's grammar check-then-resample."""
    import llama_cpp as L

    chain = _server_chain(case)
    try:
        for t in case.prompt:
            L.llama_sampler_accept(chain, t)
        tokens, finals = [], []
        for x in case.logits:
            tok, final = _apply(chain, x)
            if case.allowed is not None and not case.allowed[tok]:
                masked = np.where(case.allowed, x, np.float32(-np.inf)).astype(np.float32)
                tok, final = _apply(chain, masked)
            L.llama_sampler_accept(chain, tok)
            tokens.append(tok)
            finals.append(final)
        return tokens, finals
    finally:
        L.llama_sampler_free(chain)


def case_record(case: Case, tokens: list[int]) -> dict[str, object]:
    return {
        "case_seed": case.case_seed,
        "n_vocab": case.n_vocab,
        "params": case.params(),
        "seed": case.seed,
        "grammar": case.allowed is not None,
        "tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the engine with llama.cpp live")
    ap.add_argument("--cases", type=int, default=N_CASES)
    args = ap.parse_args()
    cases = all_cases(args.cases)
    if args.check:
        bad = 0
        n = 0
        for case in cases:
            want, _ = oracle_run(case)
            got, _ = engine_run(case)
            n += len(want)
            if want != got:
                bad += 1
                print("MISMATCH", case, want, got)
        print(f"{len(cases)} chains, {n} tokens, {bad} mismatching chains")
        return
    records = [case_record(c, oracle_run(c)[0]) for c in cases]
    meta = {
        "generator": "tests/golden/make_sampling_golden.py",
        "oracle": "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098), CPU build, glibc x86-64",
        "params_order": [
            "top_k",
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_last_n",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
            "min_keep",
        ],
        "n_tokens": sum(len(r["tokens"]) for r in records),  # type: ignore[arg-type]
    }
    GOLDEN.write_text(json.dumps({"meta": meta, "cases": records}, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN} with {len(records)} chains, {meta['n_tokens']} tokens")


if __name__ == "__main__":
    main()
