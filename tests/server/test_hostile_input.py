"""Hostile input and faults against a live server (issue 19): each test pins one item.

The server is real uvicorn on loopback over a store holding the tiny random llama (`tiny`, and
`tools` with a tool-calling Go template) and SmolLM2 (`smollm2`), for the items that need a real
tokenizer (embedding, tokenizing).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from server.app import create_app
from server.body import MAX_BODY
from server.embeddings import pool
from server.store import Store
from tests.server.conftest import REPO, free_port, wait_http
from tests.server.live import CHATML_TOOLS
from tests.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Starlette:
    root = tmp_path_factory.mktemp("hostile")
    store = Store(root / "models")
    tiny = write_tiny_model(root / "tiny.gguf")
    store.create_from_gguf("tiny", tiny)
    store.create_from_gguf("tools", tiny, template=CHATML_TOOLS)
    store.create_from_gguf("smollm2", smollm2_path)
    return create_app(store)


def _post(http: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    return http.post(path, content=raw, headers={"Content-Type": "application/json"})


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# ---- 1: /api/embeddings truncates to num_ctx ------------------------------------------------


def test_legacy_embeddings_truncate_to_num_ctx(app: Starlette, http: httpx.Client) -> None:
    prompt = "The sky is blue and the grass is green. " * 40
    body = {"model": "smollm2", "prompt": prompt, "options": {"num_ctx": 32}}
    r = http.post("/api/embeddings", json=body)
    assert r.status_code == 200, r.text
    (runner,) = [x for x in app.state.scheduler.loaded() if x.record.name == "smollm2:latest"]
    ids = runner.model.tokenizer.encode(prompt, add_special=True, parse_special=False)
    assert len(ids) > 32
    expected = pool(runner.model.embed(ids[:32]), 0).astype(np.float64)
    assert np.array_equal(np.array(r.json()["embedding"]), expected)


# ---- 2: tokenizing and JSON decoding leave the event loop free; the body limit -------------


def test_version_answers_while_a_large_prompt_is_tokenized(http: httpx.Client) -> None:
    content = "The quick brown fox jumps over the lazy dog. " * 45_000  # 2 MB
    done = threading.Event()
    result: list[httpx.Response] = []

    def tokenize() -> None:
        result.append(http.post("/api/tokenize", json={"model": "smollm2", "content": content}))
        done.set()

    http.post("/api/tokenize", json={"model": "smollm2", "content": "load"})
    thread = threading.Thread(target=tokenize)
    thread.start()
    answered_meanwhile = 0
    while not done.is_set():
        r = http.get("/api/version")
        assert r.status_code == 200
        answered_meanwhile += not done.is_set()
    thread.join()
    assert result[0].status_code == 200
    assert len(result[0].json()["tokens"]) == 450_001  # 10 a sentence, and the last space
    # Each /api/version answer above arrived while the tokenize request was still running;
    # with tokenizing on the event loop only the ones before it started could.
    assert answered_meanwhile >= 20


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    raw = b'{"model":"tiny","prompt":"' + b"a" * MAX_BODY + b'"}'
    assert "too large" in _error(_post(http, "/api/generate", raw), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield raw[: len(raw) // 2]
        yield raw[len(raw) // 2 :]

    r = http.post("/api/chat", content=chunks(), headers={"Content-Type": "application/json"})
    assert "too large" in _error(r, 413)
    assert http.get("/api/version").status_code == 200


# ---- 4: raw NaN / Infinity are not JSON ----------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("NaN", "invalid character 'N' looking for beginning of value"),
        ("Infinity", "invalid character 'I' looking for beginning of value"),
        ("-Infinity", "invalid character 'I' in numeric literal"),
        ("1e400", "json: cannot unmarshal number 1e400 into Go value of type float64"),
    ],
)
def test_non_finite_numbers_are_rejected(http: httpx.Client, literal: str, message: str) -> None:
    raw = b'{"model":"tiny","keep_alive":' + literal.encode() + b"}"
    assert _error(_post(http, "/api/generate", raw), 400) == message
    assert http.get("/api/ps").status_code == 200


# ---- 5: a loaded model whose GGUF was deleted ----------------------------------------------


def test_deleting_a_loaded_model_keeps_ps_answering(
    app: Starlette, http: httpx.Client, tmp_path: Path
) -> None:
    store: Store = app.state.store
    store.create_from_gguf("doomed", write_tiny_model(tmp_path / "doomed.gguf", seed=19))
    record = store.resolve("doomed")
    r = http.post("/api/generate", json={"model": "doomed", "prompt": "a", "stream": False,
                                         "options": {"num_predict": 2}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert http.request("DELETE", "/api/delete", json={"model": "doomed"}).status_code == 200
    assert not record.gguf_path.exists()
    ps = http.get("/api/ps")
    assert ps.status_code == 200, ps.text
    assert "doomed:latest" in [m["name"] for m in ps.json()["models"]]
    stop = http.post("/api/generate", json={"model": "doomed", "keep_alive": 0})
    assert stop.status_code == 200, stop.text
    assert stop.json()["done_reason"] == "unload"
    assert "doomed:latest" not in [m["name"] for m in http.get("/api/ps").json()["models"]]


# ---- 6: malformed tools and tool_calls -----------------------------------------------------

_CALL = "json: cannot unmarshal {} into Go struct field ChatRequest.messages.tool_calls{}"
_TOOL = "json: cannot unmarshal {} into Go struct field ChatRequest.tools{}"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tool_calls", [1], _CALL.format("number", " of type api.ToolCall")),
        ("tool_calls", ["x"], _CALL.format("string", " of type api.ToolCall")),
        ("tool_calls", [{"function": "f"}], _CALL.format("string", ".function of type")),
        ("tool_calls", [{"function": {"name": 1}}], _CALL.format("number", ".function.name")),
        ("tool_calls", [{"function": {"arguments": "x"}}], _CALL.format("string", ".function.a")),
        ("tool_calls", [{"function": {"arguments": [1]}}], _CALL.format("array", ".function.a")),
        ("tool_calls", [{"id": 5, "function": {}}], _CALL.format("number", ".id of type string")),
        ("tools", [1], _TOOL.format("number", " of type api.Tool")),
        ("tools", ["x"], _TOOL.format("string", " of type api.Tool")),
        ("tools", [{"function": []}], _TOOL.format("array", ".function of type")),
        ("tools", [{"function": {"parameters": {"properties": "p"}}}], _TOOL.format("string", "")),
        ("tools", [{"function": {"parameters": {"properties": {"a": {"type": 3}}}}}], "number"),
    ],
)
def test_malformed_tools_are_400(http: httpx.Client, field: str, value: object, message: str):
    messages: list[dict[str, object]] = [{"role": "user", "content": "hi"}]
    body: dict[str, object] = {"model": "tools", "stream": False}
    if field == "tool_calls":
        messages.append({"role": "assistant", "tool_calls": value})
    else:
        body["tools"] = value
    r = http.post("/api/chat", json={**body, "messages": messages})
    assert message in _error(r, 400)


# ---- 7: deep nesting; an input without tokens ----------------------------------------------

_BODY_PATHS = ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tokenize",
               "/api/detokenize", "/api/create", "/api/show", "/api/copy", "/api/pull",
               "/api/push")  # fmt: skip
_BODY_ROUTES = [("POST", p) for p in _BODY_PATHS] + [("DELETE", "/api/delete")]


@pytest.mark.parametrize(("method", "path"), _BODY_ROUTES)
@pytest.mark.parametrize("depth", [600, 100_000])
def test_deep_nesting_is_400(http: httpx.Client, method: str, path: str, depth: int) -> None:
    for raw in (
        b"[" * depth + b"]" * depth,
        b'{"model":"tiny","options":' + b'{"a":' * depth + b"1" + b"}" * (depth + 1),
    ):
        r = http.request(method, path, content=raw)
        assert "exceeded max depth" in _error(r, 400)


def test_embed_input_without_tokens_is_400(http: httpx.Client) -> None:
    r = http.post("/api/embed", json={"model": "smollm2", "input": ["a", ""]})
    assert _error(r, 400) == "input 1 has no tokens to embed"


# ---- 8: create refuses parameters every generate would fail on -----------------------------


@pytest.mark.parametrize(
    "params", [{"temperature": "hot"}, {"num_ctx": [1]}, {"stop": 3}, {"top_k": {"a": 1}}]
)
def test_create_rejects_wrongly_typed_parameters(http: httpx.Client, params: dict) -> None:
    r = http.post("/api/create", json={"model": "badparams", "from": "tiny", "parameters": params,
                                       "stream": False})  # fmt: skip
    assert _error(r, 400).startswith("invalid parameter: ")
    assert http.post("/api/show", json={"model": "badparams"}).status_code == 404


# ---- 9: no temporary file survives a restart -----------------------------------------------


class _Serve:
    """`refllama serve` in a child process, so the test can SIGKILL it."""

    def __init__(self, models: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1",
               "OLLAMA_MODELS": str(models), "OLLAMA_HOST": self.url}  # fmt: skip
        serve = "from server.cli.main import main; main(['serve'])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", serve], cwd=REPO, env=env, stderr=subprocess.DEVNULL
        )
        wait_http(f"{self.url}/api/version", self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def test_temporary_files_of_a_killed_upload_go_at_next_start(tmp_path: Path) -> None:
    models = tmp_path / "models"
    data = os.urandom(8 << 20)
    digest = "sha256:" + sha256(data).hexdigest()
    sent = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: 4 << 20]
        sent.set()
        release.wait(30)
        yield data[4 << 20 :]

    def upload(url: str) -> None:
        try:
            httpx.post(f"{url}/api/blobs/{digest}", content=body(), timeout=30)
        except httpx.HTTPError:
            pass

    server = _Serve(models)
    try:
        thread = threading.Thread(target=upload, args=(server.url,), daemon=True)
        thread.start()
        assert sent.wait(30)
        blobs = models / "blobs"
        while not any(p.name.startswith("tmp-") and p.stat().st_size for p in blobs.iterdir()):
            assert thread.is_alive()
            time.sleep(0.01)
    finally:
        server.kill()
        release.set()
    assert [p.name[:4] for p in blobs.iterdir()] == ["tmp-"]
    restarted = _Serve(models)
    try:
        assert list(blobs.iterdir()) == []
        assert httpx.head(f"{restarted.url}/api/blobs/{digest}").status_code == 404
    finally:
        restarted.kill()


# ---- 10: slow headers time out; the Host check is Ollama's --------------------------------


def _closed_without_response(c: socket.socket) -> bool:
    """The server closed `c` without answering: an orderly EOF, or a reset when the close raced
    bytes the client had sent but the server never read."""
    try:
        return c.recv(1) == b""
    except ConnectionResetError:
        return True


def test_trickled_headers_are_cut_off(tmp_path: Path) -> None:
    server = _Serve(tmp_path / "models")
    port = int(server.url.rsplit(":", 1)[1])
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    try:
        request = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        open_ones = list(clients)
        for byte in request:  # one byte per client per second; 200 s to finish the headers
            for c in open_ones:
                try:
                    c.send(bytes([byte]))
                except OSError:
                    open_ones.remove(c)
            if not open_ones:
                break
            assert httpx.get(f"{server.url}/api/version").status_code == 200
            readable, _, _ = select.select(open_ones, [], [], 1.0)
            for c in readable:
                assert _closed_without_response(c)
                open_ones.remove(c)
        assert open_ones == [], f"{len(open_ones)} trickling clients still connected"
    finally:
        for c in clients:
            c.close()
        server.kill()


# ---- 10: the Host check is Ollama's ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("169.254.1.1", 403),  # link-local: not loopback, private, unspecified nor ours
        ("[2001:db8::1]", 403),  # a bare IPv6 literal fails Go's SplitHostPort and ParseAddr
        ("[2001:db8::1]:11434", 403),  # documentation range: Python calls it private, Go not
        ("192.0.2.1:11434", 403),
        ("127.0.0.1:11434", 200),
        ("[::1]:11434", 200),
        ("10.1.2.3", 200),
        ("[fd12::1]:80", 200),
        ("machine.internal", 200),
    ],
)
def test_host_check_matches_ollama(http: httpx.Client, host: str, status: int) -> None:
    assert http.get("/api/version", headers={"Host": host}).status_code == status
