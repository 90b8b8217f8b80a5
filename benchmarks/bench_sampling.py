"""Time one sampling step at SmolLM2's vocabulary size: the NumPy chain vs llama.cpp's chain.

    python benchmarks/bench_sampling.py [--vocab 49152] [--repeat 30] [--smoke]

Each configuration samples from fresh N(0, 3^2) logits (plus a tie-heavy variant rounded to a
0.25 grid) with a 64-token penalty history; llama.cpp's column uses llama-cpp-python's low-level
sampler API in the same process when it is importable.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import os
import statistics
import time

import numpy as np
from _machine import machine_line

from engine.sampling.chain import Sampler, token_logprobs
from engine.sampling.options import Options

CONFIGS: dict[str, Options] = {
    "ollama defaults": Options(seed=1),
    "greedy (temp 0)": Options(seed=1, temperature=0.0),
    "top_k 0, top_p .9": Options(seed=1, top_k=0),
    "top_k 0, top_p 1, temp 1": Options(seed=1, top_k=0, top_p=1.0, temperature=1.0),
    "min_p .05, penalties": Options(seed=1, min_p=0.05, repeat_penalty=1.1),
    "typical .9, top_k 0": Options(seed=1, typical_p=0.9, top_k=0),
}


def _llama_chain(o: Options, n_vocab: int):  # type: ignore[no-untyped-def]
    import llama_cpp as L

    params = L.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = L.llama_sampler_chain_init(params)
    for s in (
        L.llama_sampler_init_penalties(
            n_vocab, o.repeat_last_n, o.repeat_penalty, o.frequency_penalty, o.presence_penalty
        ),
        L.llama_sampler_init_top_k(max(o.top_k, 0)),
        L.llama_sampler_init_typical(o.typical_p, 0),
        L.llama_sampler_init_top_p(o.top_p, 0),
        L.llama_sampler_init_min_p(o.min_p, 0),
        L.llama_sampler_init_temp_ext(max(o.temperature, 0.0), 0.0, 1.0),
        L.llama_sampler_init_dist(1),
    ):
        L.llama_sampler_chain_add(chain, s)
    return chain


def _time_llama(o: Options, logits: list[np.ndarray], history: np.ndarray) -> list[float]:
    import llama_cpp as L

    V = logits[0].size
    chain = _llama_chain(o, V)
    for t in history:
        L.llama_sampler_accept(chain, int(t))
    rec = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    times = []
    for x in logits:
        t0 = time.perf_counter()
        arr = np.zeros(V, dtype=rec)
        arr["id"] = np.arange(V)
        arr["logit"] = x
        cur = L.llama_token_data_array(
            data=arr.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
            size=V,
            selected=-1,
            sorted=False,
        )
        L.llama_sampler_apply(chain, ctypes.byref(cur))
        L.llama_sampler_accept(chain, int(arr["id"][cur.selected]))
        times.append(time.perf_counter() - t0)
    L.llama_sampler_free(chain)
    return times


def _time_numpy(o: Options, logits: list[np.ndarray], history: np.ndarray) -> list[float]:
    s = Sampler(o, logits[0].size)
    s.accept_prompt(history.tolist())
    times = []
    for x in logits:
        t0 = time.perf_counter()
        s.accept(s.sample(x))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="a quick run (small vocab, 3 steps)")
    args = ap.parse_args()
    V, n = (2000, 3) if args.smoke else (args.vocab, args.repeat)
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(machine_line(f"OPENBLAS_NUM_THREADS={blas}", f"V={V}"))
    print(f"{'config':<28} {'logits':<8} {'numpy ms (med/min)':>20} {'llama.cpp ms':>14}")
    r = np.random.default_rng(0)
    history = r.integers(0, V, 64)
    for grid in (0.0, 0.25):
        logits = []
        for _ in range(n + 1):  # the first step is a warm-up
            x = r.standard_normal(V) * 3
            logits.append((np.round(x / grid) * grid if grid else x).astype(np.float32))
        for name, o in CONFIGS.items():
            t_np = _time_numpy(dataclasses.replace(o), logits, history)[1:]
            col = f"{statistics.median(t_np) * 1e3:8.2f} / {min(t_np) * 1e3:7.2f}"
            ll = ""
            if have_llama:
                t_ll = _time_llama(o, logits, history)[1:]
                ll = f"{statistics.median(t_ll) * 1e3:14.2f}"
            kind = "0.25grid" if grid else "normal"
            print(f"{name:<28} {kind:<8} {col:>20} {ll:>14}")
    t = []
    for x in logits[:n]:
        t0 = time.perf_counter()
        token_logprobs(x, 0, 5)
        t.append(time.perf_counter() - t0)
    print(
        f"{'token_logprobs(top 5)':<28} {'0.25grid':<8} "
        f"{statistics.median(t) * 1e3:8.2f} / {min(t) * 1e3:7.2f}"
    )


if __name__ == "__main__":
    main()
