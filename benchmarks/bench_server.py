"""Latency through HTTP: what the server adds on top of the engine, and concurrent throughput.

    python benchmarks/bench_server.py                  # SmolLM2, 64 tokens, 4 concurrent clients
    python benchmarks/bench_server.py --clients 8 --repeat 5
    python benchmarks/bench_server.py --smoke          # tiny model, a few tokens (CI)

Rows: the engine's `generate` called in-process (no HTTP); one streaming /api/generate client
on a live uvicorn server (same model, same greedy options, raw prompt); --clients streaming
clients at once (aggregate tokens/s, and each client's time to first token). With
llama-cpp-python importable, a last row streams the same prompt through llama_cpp's
create_completion for reference. Each timing is repeated --repeat times after one warm-up; the
table shows the median and the best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from server.store import Store  # noqa: E402
from tests.server.live import live_server  # noqa: E402
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


async def _stream(client: httpx.AsyncClient, tokens: int) -> Timing:
    t0 = time.perf_counter()
    first, n = 0.0, 0
    async with client.stream("POST", "/api/generate", json=_body(tokens)) as r:
        async for line in r.aiter_lines():
            event = json.loads(line)
            if first == 0.0:
                first = time.perf_counter() - t0
            if event["done"]:
                n = event["eval_count"]
    return first, n / (time.perf_counter() - t0)


def _http(url: str, tokens: int, clients: int) -> Callable[[], Timing]:
    async def many() -> Timing:
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(_stream(client, tokens) for _ in range(clients)))
            wall = time.perf_counter() - t0
        return statistics.median(f for f, _ in results), clients * tokens / wall

    return lambda: asyncio.run(many())


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model, 8 tokens, 1 repeat")
    args = p.parse_args()
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
    rows = [("engine generate (no HTTP)", _engine(path, args.tokens))]
    reference = _llama_cpp(path, args.tokens)
    with live_server(create_app(store)) as url:
        rows.append(("HTTP, 1 streaming client", _http(url, args.tokens, 1)))
        many = _http(url, args.tokens, args.clients)
        rows.append((f"HTTP, {args.clients} clients (aggregate)", many))
        if reference is not None:
            rows.append(("llama-cpp-python stream", reference))
        print(f"{'':34} {'first token s (med/min)':>24} {'tokens/s (med/max)':>20}")
        for name, fn in rows:
            firsts, rates = _time(fn, args.repeat)
            print(f"{name:34} {statistics.median(firsts):11.3f} /{min(firsts):8.3f}    "
                  f"{statistics.median(rates):9.1f} /{max(rates):7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
