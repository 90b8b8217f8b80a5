"""Latency and throughput through HTTP, continuous batching included, with llama.cpp alongside.

    python benchmarks/bench_server.py                  # SmolLM2, 64 tokens, 1/2/4/8 streams
    python benchmarks/bench_server.py --streams 1,8 --repeat 2
    python benchmarks/bench_server.py --smoke          # tiny model, a few tokens (CI)

Rows: the engine's `generate` called in-process (no HTTP); then N concurrent streaming
/api/generate clients (greedy, raw prompt) on one live server with OLLAMA_NUM_PARALLEL = the
largest N, so they are batched: aggregate decode tokens/s, p50/p95 time to first token over all
clients, the process's peak RSS so far, and whether every stream's text equals the 1-stream
text (batch invariance). A line after them gives the process's resident memory (now, not
peak) right after the server loaded the model, after the runs, and after the model unloaded
(keep_alive 0), the point being that the KV caches and scratch of the runs are given back.
With llama-cpp-python importable, a last row streams the same prompt through llama_cpp's
create_completion (one stream). Each timing is repeated --repeat times after one warm-up; rates
are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from _machine import machine_line  # noqa: E402

from engine import load  # noqa: E402
from engine.generate import generate  # noqa: E402
from engine.gguf.fetch import model_path  # noqa: E402
from engine.sampling.options import resolve  # noqa: E402
from server.app import create_app  # noqa: E402
from server.scheduler import Scheduler  # noqa: E402
from server.store import Store  # noqa: E402
from tests.server.live import live_server, resident_bytes  # noqa: E402
from tests.tiny_model import write_tiny_model  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"

Timing = tuple[float, float]  # (time to first token s, tokens/s)


def _engine(path: Path, tokens: int) -> Callable[[], Timing]:
    model = load(path)
    opts = resolve({}, {"temperature": 0, "num_predict": tokens})
    ids = model.tokenizer.encode(PROMPT)

    def run() -> Timing:
        t0 = time.perf_counter()
        first, n = 0.0, 0
        for _ in generate(model, ids, opts):
            n += 1
            if n == 1:
                first = time.perf_counter() - t0
        return first, n / (time.perf_counter() - t0)

    return run


def _body(tokens: int) -> dict:
    options = {"temperature": 0, "num_predict": tokens}
    return {"model": "m", "prompt": PROMPT, "raw": True, "options": options}


async def _stream(client: httpx.AsyncClient, tokens: int) -> tuple[float, int, str]:
    """One streaming request: (time to first token s, tokens generated, text)."""
    t0 = time.perf_counter()
    first, n, text = 0.0, 0, []
    async with client.stream("POST", "/api/generate", json=_body(tokens)) as r:
        async for line in r.aiter_lines():
            event = json.loads(line)
            if first == 0.0:
                first = time.perf_counter() - t0
            text.append(event.get("response", ""))
            if event["done"]:
                n = event["eval_count"]
    return first, n, "".join(text)


Level = tuple[list[float], float, list[str]]  # (first-token times, aggregate tokens/s, texts)


def _http(url: str, tokens: int, clients: int) -> Callable[[], Level]:
    async def many() -> Level:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_stream(client, tokens) for _ in range(clients)))
            wall = time.perf_counter() - t0
        return (
            [f for f, _, _ in results],
            sum(n for _, n, _ in results) / wall,
            [t for _, _, t in results],
        )

    return lambda: asyncio.run(many())


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unload(url: str) -> None:
    """Ask the server to unload the model (Ollama's keep_alive 0) and wait until it has."""
    httpx.post(url + "/api/generate", json={"model": "m", "keep_alive": 0}, timeout=60)
    deadline = time.monotonic() + 60
    while httpx.get(url + "/api/ps").json()["models"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the model did not unload within 60 s")
        time.sleep(0.1)


def _llama_cpp(path: Path, tokens: int) -> Callable[[], Timing] | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, verbose=False)

    def run() -> Timing:
        t0 = time.perf_counter()
        first, n = 0.0, 0
        for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
            n += 1
            if n == 1:
                first = time.perf_counter() - t0
        return first, n / (time.perf_counter() - t0)

    return run


def _time(fn: Callable[[], Timing], repeat: int) -> tuple[list[float], list[float]]:
    fn()  # warm-up: loads, first-use caches
    runs = [fn() for _ in range(repeat)]
    return [r[0] for r in runs], [r[1] for r in runs]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny model, 8 tokens, 1 repeat")
    args = p.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    tmp = Path(tempfile.mkdtemp())
    if args.smoke:
        path, args.tokens, args.repeat = write_tiny_model(tmp / "tiny.gguf"), 8, 1
    else:
        path = model_path("smollm2")
    store = Store(tmp / "models")
    store.create_from_gguf("m", path)

    blas = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(
        machine_line(
            f"OPENBLAS_NUM_THREADS={blas}",
            f"model {path.name}, {args.tokens} tokens, repeat {args.repeat}",
        )
    )
    header = f"{'':30} {'tok/s':>8} {'TTFT p50 s':>11} {'TTFT p95 s':>11} {'peak RSS MiB':>13}"
    print(header + f" {'= solo bytes':>13}")
    firsts, rates = _time(_engine(path, args.tokens), args.repeat)
    print(f"{'engine generate (no HTTP)':30} {statistics.median(rates):8.1f} "
          f"{statistics.median(firsts):11.3f} {'':11} {_peak_rss_mib():13.0f}")  # fmt: skip
    gc.collect()  # the in-process model above is gone before the server loads its own
    sched = Scheduler(load, num_parallel=max(levels))
    solo_text: str | None = None
    with live_server(create_app(store, sched)) as url:
        httpx.post(url + "/api/generate", json={"model": "m"}, timeout=600)  # load only
        loaded = resident_bytes() / 2**20
        for n in levels:
            run = _http(url, args.tokens, n)
            run()  # warm-up
            ttfts, level_rates, same = [], [], True
            for _ in range(args.repeat):
                f, rate, texts = run()
                ttfts += f
                level_rates.append(rate)
                if solo_text is None:
                    solo_text = texts[0]
                same = same and all(t == solo_text for t in texts)
            print(f"{f'HTTP, {n} streams (aggregate)':30} {statistics.median(level_rates):8.1f} "
                  f"{_pct(ttfts, 0.5):11.3f} {_pct(ttfts, 0.95):11.3f} {_peak_rss_mib():13.0f} "
                  f"{'yes' if same else 'NO':>13}")  # fmt: skip
        after_runs = resident_bytes() / 2**20
        _unload(url)
        time.sleep(2.5)  # the server's reaper returns an unloaded model's memory within 1 s
        unloaded = resident_bytes() / 2**20
    print(
        f"RSS MiB now: model loaded {loaded:.0f}, after the runs {after_runs:.0f}, "
        f"after unload {unloaded:.0f} ({unloaded / loaded:.2f}x loaded)"
    )
    reference = _llama_cpp(path, args.tokens)
    if reference is not None:
        firsts, rates = _time(reference, args.repeat)
        print(f"{'llama-cpp-python, 1 stream':30} {statistics.median(rates):8.1f} "
              f"{statistics.median(firsts):11.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
