"""Continuous batching and the scheduler's limits against a live server (issue 13), and
cancellation of prompt processing and embeddings on disconnect (issue 19 items 1 and 3).

Expected bytes come from the same request run alone on a server with NUM_PARALLEL 1 (where no
batching can happen), never from the batched run under test.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engine import load
from engine.models import heap
from server.app import create_app
from server.scheduler import Scheduler
from server.store import Store
from tests.server.live import live_server, resident_bytes
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 260  # ~3,400 tokens


def _requests() -> list[dict[str, Any]]:
    """8 requests: mixed prompt lengths and options, seeded and greedy, two with `format`."""
    base = {"model": "smollm2", "raw": True}
    prompts = ["Once upon a time", "The capital of France is",
               "List three colours: " + "red, green, blue, " * 20, "def fib(n):",
               "Write a JSON object with a number:", "1, 2, 3, 4,",
               "A long story: " + "the cat sat on the mat. " * 40, "Hello"]  # fmt: skip
    options = [{"temperature": 0}, {"seed": 7, "temperature": 0.9},
               {"seed": 1, "top_k": 5}, {"temperature": 0, "repeat_penalty": 1.3},
               {"seed": 3}, {"seed": 11, "top_p": 0.5, "min_p": 0.1},
               {"temperature": 0, "num_batch": 32}, {"seed": 5, "temperature": 1.5}]  # fmt: skip
    out = []
    for i, (prompt, opts) in enumerate(zip(prompts, options, strict=True)):
        body = {**base, "prompt": prompt, "logprobs": True,
                "options": {**opts, "num_predict": 12}}  # fmt: skip
        if i in (3, 4):
            body["format"] = SCHEMA if i == 4 else "json"
        out.append(body)
    return out


def _run(url: str, body: dict[str, Any]) -> tuple[str, list[Any]]:
    r = httpx.post(url + "/api/generate", json={**body, "stream": False}, timeout=600)
    assert r.status_code == 200, r.text
    answer = r.json()
    return answer["response"], answer["logprobs"]


def _store(root: Path, smollm2: Path) -> Store:
    store = Store(root / "models")
    store.create_from_gguf("smollm2", smollm2)
    return store


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Iterator[str]:
    store = _store(tmp_path_factory.mktemp("solo"), smollm2_path)
    with live_server(create_app(store, Scheduler(load, num_parallel=1))) as url:
        yield url


@pytest.fixture(scope="module")
def batched_app(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Starlette:
    store = _store(tmp_path_factory.mktemp("batched"), smollm2_path)
    return create_app(store, Scheduler(load, num_parallel=8))


@pytest.fixture(scope="module")
def batched(batched_app: Starlette) -> Iterator[str]:
    with live_server(batched_app) as url:
        yield url


def test_concurrent_requests_give_their_solo_bytes(solo, batched, batched_app):  # acceptance
    bodies = _requests()
    alone = [_run(solo, b) for b in bodies]
    results: dict[int, tuple[str, list[Any]]] = {}
    errors: list[BaseException] = []
    cancelled_lines: list[dict[str, Any]] = []

    def worker(i: int) -> None:
        try:
            time.sleep(0.05 * (7 - i))  # arrival order differs from the solo order
            results[i] = _run(batched, bodies[i])
        except BaseException as e:  # reported below
            errors.append(e)

    def cancelled_stream() -> None:
        body = {**bodies[0], "options": {"temperature": 0, "num_predict": 200}}
        with httpx.stream("POST", batched + "/api/generate", json=body, timeout=600) as r:
            for line in r.iter_lines():
                cancelled_lines.append(json.loads(line))
                if len(cancelled_lines) == 3:
                    break  # leaving the block closes the connection mid-stream

    runner = batched_app.state.scheduler
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    threads.append(threading.Thread(target=cancelled_stream))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors
    for i, expected in enumerate(alone):
        assert results[i] == expected, i
    assert len(cancelled_lines) == 3 and not cancelled_lines[-1]["done"]
    (loaded,) = runner.loaded()
    assert loaded.batcher.steps > 0
    # Batched for real: far fewer forwards than the requests' evaluations run one by one.
    solo_evals = sum(12 + 1 for _ in bodies)
    assert loaded.batcher.steps < solo_evals


def _close_during_prefill(url: str, path: str, body: dict[str, Any]) -> None:
    """Send `body` on a raw socket and close it 1.5 s later, while the prompt is evaluated."""
    raw = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        time.sleep(1.5)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "smollm2", "prompt": LONG, "raw": True,
                           "options": {"num_ctx": 4096, "num_predict": 2}}),
        ("/api/generate", {"model": "smollm2", "prompt": LONG, "raw": True, "stream": False,
                           "options": {"num_ctx": 4096, "num_predict": 2}}),
        ("/api/embeddings", {"model": "smollm2", "prompt": LONG, "options": {"num_ctx": 4096}}),
        ("/api/embed", {"model": "smollm2", "input": LONG, "options": {"num_ctx": 4096}}),
    ],
)  # fmt: skip
def test_disconnect_during_prompt_processing_stops_the_work(solo, path, body):  # 19.1, 19.3
    short = {"model": "smollm2", "prompt": "Hi", "raw": True, "stream": False,
             "options": {"num_ctx": 4096, "num_predict": 2, "temperature": 0}}  # fmt: skip
    httpx.post(solo + "/api/generate", json=short, timeout=600)  # loaded for this num_ctx
    _close_during_prefill(solo, path, body)
    t0 = time.monotonic()
    r = httpx.post(solo + "/api/generate", json=short, timeout=120)
    assert r.status_code == 200
    assert time.monotonic() - t0 < 20  # liveness: the abandoned prompt no longer runs


def _tiny_store(root: Path, names: list[str]) -> Store:
    store = Store(root / "models")
    for i, name in enumerate(names):
        # distinct seeds, so no two share a GGUF (and its loaded weights)
        store.create_from_gguf(name, write_tiny_model(root / f"{name}.gguf", seed=i))
    return store


def _ps(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]]


def test_max_loaded_models_unloads_the_idle_one_with_the_shortest_session(tmp_path):
    store = _tiny_store(tmp_path, ["a", "b", "c"])
    with live_server(create_app(store, Scheduler(load, max_loaded_models=2))) as url:
        httpx.post(url + "/api/generate", json={"model": "a", "keep_alive": "10m"})
        httpx.post(url + "/api/generate", json={"model": "b", "keep_alive": "5m"})
        assert sorted(_ps(url)) == ["a:latest", "b:latest"]
        httpx.post(url + "/api/generate", json={"model": "c"})
        assert sorted(_ps(url)) == ["a:latest", "c:latest"]


def test_a_model_that_does_not_fit_evicts_idle_ones_or_is_refused(tmp_path):
    store = _tiny_store(tmp_path, ["a", "b"])
    probe = Scheduler(load)
    sizes = {}
    with live_server(create_app(store, probe)) as url:
        for name in ("a", "b"):
            httpx.post(url + "/api/generate", json={"model": name})
        sizes = {r.record.name: r.size() for r in probe.loaded()}
    budget = sizes["b:latest"] + sizes["a:latest"] // 2  # b fits, but not next to a
    with live_server(create_app(store, Scheduler(load, memory_budget=budget))) as url:
        httpx.post(url + "/api/generate", json={"model": "a"})
        r = httpx.post(url + "/api/generate", json={"model": "b"})
        assert r.status_code == 200, r.text
        assert _ps(url) == ["b:latest"]
    with live_server(create_app(store, Scheduler(load, memory_budget=1))) as url:
        r = httpx.post(url + "/api/generate", json={"model": "a"})
        assert r.status_code == 500
        assert "more than the budget" in r.json()["error"]
        assert httpx.get(url + "/api/version").status_code == 200


def test_num_parallel_bounds_running_requests_and_max_queue_answers_503(tmp_path, smollm2_path):
    store = Store(tmp_path / "models")
    store.create_from_gguf("a", smollm2_path)
    sched = Scheduler(load, num_parallel=1, max_queue=1)
    body = {"model": "a", "prompt": "Once upon a time", "raw": True, "stream": True,
            "options": {"num_predict": 100000, "num_ctx": 2048, "temperature": 0}}  # fmt: skip
    with live_server(create_app(store, sched)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/api/generate", json=body) as first:
            lines = first.iter_lines()  # kept: dropping the iterator closes the response
            next(lines)  # running: the one parallel slot is taken
            waiting: list[httpx.Response] = []
            t = threading.Thread(
                target=lambda: waiting.append(
                    httpx.post(
                        url + "/api/generate",
                        json={
                            **body,
                            "stream": False,
                            "options": {**body["options"], "num_predict": 2},
                        },
                        timeout=60,
                    )  # fmt: skip
                )
            )
            t.start()
            deadline = time.monotonic() + 10
            while sched._waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            (runner,) = sched.loaded()
            assert runner.in_flight == 1 and not waiting  # queued, not running
            r = http.post(url + "/api/generate", json={**body, "stream": False}, timeout=5)
            assert r.status_code == 503
            assert r.json() == {
                "error": "server busy, please try again.  maximum pending requests exceeded"
            }
        t.join(timeout=60)
        assert waiting and waiting[0].status_code == 200
        assert len(runner.free_slots) == 1  # one KV cache: NUM_PARALLEL bounds them
        assert runner.size() == runner.weight_bytes + runner.free_slots[0].cache.nbytes
        http.post(url + "/api/generate", json={"model": "a", "keep_alive": 0})
        assert _ps(url) == [] and runner.free_slots == []  # unloading releases the caches


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_unloading_gives_the_memory_back(tmp_path, smollm2_path):  # issue 13's memory bound
    store = _store(tmp_path, smollm2_path)
    gc.collect()
    heap.trim()  # memory earlier tests freed would otherwise serve this model's arrays
    before = resident_bytes()
    bodies = [{**b, "model": "smollm2"} for b in _requests()[2:6]]
    with live_server(create_app(store, Scheduler(load, num_parallel=4))) as url:
        threads = [threading.Thread(target=_run, args=(url, b)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        grown = resident_bytes() - before  # the weights, four caches and the steps' scratch
        httpx.post(url + "/api/generate", json={"model": "smollm2", "keep_alive": 0})
        assert _ps(url) == []
        deadline = time.monotonic() + 10  # the server's reaper returns memory once a second
        while resident_bytes() - before > 0.1 * grown and time.monotonic() < deadline:
            time.sleep(0.1)
        left = resident_bytes() - before
    assert grown > 300 * 2**20
    assert left <= 0.1 * grown, f"{left / 2**20:.0f} MiB of {grown / 2**20:.0f} MiB kept"
