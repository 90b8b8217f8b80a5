"""Same request, same bytes over HTTP: streamed or not, alone or among 8, after a cached prefix,
with 1 or 2 OpenBLAS threads (each a separate `create_app` server process on loopback)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.store import Store
from tests.server.conftest import ServerProcess

_SERVE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import uvicorn
    from server.app import create_app
    from server.store import Store
    app = create_app(Store(Path(sys.argv[1])))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)

# Fields that describe time, not content.
_TIMING = {"created_at", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}


def _content(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in _TIMING}


def _requests() -> list[dict[str, Any]]:
    """Seeded and greedy generations with logprobs: 8 different bodies."""
    out = []
    for i in range(8):
        options = {"seed": 100 + i, "num_predict": 8, "temperature": 0.0 if i % 3 == 0 else 0.8}
        out.append(
            {
                "model": "smollm2",
                "prompt": f"Write a line about the number {i}.",
                "options": options,
                "logprobs": True,
                "top_logprobs": 3,
            }
        )
    return out


def _joined(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream as the non-streamed answer says it: text joined, logprobs concatenated."""
    final = _content(events[-1])
    final["response"] = "".join(e["response"] for e in events)
    final["logprobs"] = [lp for e in events for lp in e.get("logprobs") or []]
    return final


async def _stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        return [json.loads(line) async for line in r.aiter_lines() if line]


def _run_all(url: str) -> dict[str, Any]:
    """Every request alone (not streamed, then streamed), all 8 at once, and a 2-turn chat."""
    bodies = _requests()
    with httpx.Client(base_url=url, timeout=600) as http:
        solo = [
            _content(http.post("/api/generate", json={**b, "stream": False}).json()) for b in bodies
        ]

        async def together() -> list[list[dict[str, Any]]]:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                return await asyncio.gather(*(_stream(client, b) for b in bodies))

        concurrent = [_joined(events) for events in asyncio.run(together())]
        first = {"role": "user", "content": "Name a colour."}
        turn = {"model": "smollm2", "stream": False, "options": {"seed": 5, "num_predict": 10}}
        one = http.post("/api/chat", json={**turn, "messages": [first]}).json()
        follow = [first, one["message"], {"role": "user", "content": "And another?"}]
        cached = http.post("/api/chat", json={**turn, "messages": follow}).json()
        http.post("/api/generate", json={"model": "smollm2", "keep_alive": 0})  # unload
        fresh = http.post("/api/chat", json={**turn, "messages": follow}).json()
    return {
        "solo": solo,
        "concurrent": concurrent,
        "chat": [_content(one), _content(cached), _content(fresh)],
    }


@pytest.mark.slow
def test_same_bytes_streamed_concurrent_cached_and_across_threads(
    tmp_path: Path, smollm2_path: Path
) -> None:
    store = Store(tmp_path / "models")
    store.create_from_gguf("smollm2", smollm2_path)
    runs = {}
    for threads in (1, 2):
        server = ServerProcess(store.root, serve=_SERVE, blas_threads=threads)
        try:
            runs[threads] = _run_all(server.url)
        finally:
            server.kill()
    one = runs[1]
    for solo, concurrent in zip(one["solo"], one["concurrent"], strict=True):
        assert solo["eval_count"] == 8 or solo["done_reason"] == "stop"
        assert concurrent == solo
    _, cached, fresh = one["chat"]  # after the first turn (its rows cached) vs after an unload
    assert cached == fresh
    assert runs[2] == runs[1]
