"""server/app.py over a real uvicorn server: HTTP conventions, errors, CORS/Host, load/unload,
keep_alive, /api/ps and the tokenize extensions (spec/ollama-api.md §1, §3, §11.9-§11.11).

The model is tests/tiny_model.py's random-weight llama: these tests are about HTTP behaviour,
so a model that loads in milliseconds keeps them fast."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest

from engine import load
from engine.errors import EngineError
from server.app import create_app
from server.guard import host_allowed, origin_allowed
from server.scheduler import Scheduler
from server.store import Store
from tests.server.live import live_server, tiny_store, write_embedding_header


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tiny_store(tmp_path_factory.mktemp("app"))
    with live_server(create_app(store)) as base:
        yield base


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


def _loaded(http: httpx.Client) -> list[str]:
    return [m["name"] for m in http.get("/api/ps").json()["models"]]


def test_root_and_version(http):  # G1, G2
    r = http.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    head = http.head("/")
    assert head.status_code == 200 and head.content == b""
    v = http.get("/api/version")
    assert v.status_code == 200 and list(v.json()) == ["version"]
    assert all(p.isdigit() for p in v.json()["version"].split("."))
    assert http.head("/api/version").status_code == 200


def test_unknown_path_and_wrong_method(http):  # G3
    r = http.get("/api/nope")
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")
    r = http.get("/api/generate")
    assert (r.status_code, r.text) == (405, "405 method not allowed")


@pytest.mark.parametrize(
    "path", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/tokenize"]
)
def test_empty_body_and_malformed_json(http, path):  # G4, G5
    r = http.post(path, content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    r = http.post(path, content=b'{"model": ')
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert r.headers["content-type"] == "application/json; charset=utf-8"


def test_unknown_keys_ignored_and_null_body(http):  # G6, §1.4 rule 2
    r = http.post("/api/chat", json={"model": "tiny", "messages": [], "Bogus": 1})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"
    r = http.post("/api/chat", content=b"null")
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_error_statuses_before_streaming(http):  # G8, GE3, GE4, C3, E9
    cases = [
        ("/api/generate", {"model": ""}, 404, "model '' not found"),
        ("/api/generate", {"model": "nope"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": ""}, 400, "model is required"),
        ("/api/chat", {"model": "nope"}, 404, "model 'nope' not found"),
        ("/api/embed", {"model": "nope"}, 404, 'model "nope" not found, try pulling it first'),
        ("/api/embeddings", {"model": ""}, 400, "model is required"),
        ("/api/generate", {"model": "bad name!"}, 400, "invalid model name"),
    ]
    for path, body, status, message in cases:
        r = http.post(path, json=body)
        assert (r.status_code, r.json()) == (status, {"error": message}), (path, body)


def test_option_type_errors_are_500_and_unknown_options_ignored(http):  # O5, O7
    base = {"model": "tiny", "prompt": "", "stream": False}
    r = http.post("/api/generate", json={**base, "options": {"temperature": "hot"}})
    assert (r.status_code, r.json()) == (
        500,
        {"error": 'option "temperature" must be of type float32'},
    )
    r = http.post("/api/generate", json={**base, "options": {"stop": "x"}})
    assert r.json() == {"error": 'option "stop" must be of type array'}
    r = http.post("/api/generate", json={**base, "options": {"stop": [1]}})
    assert r.json() == {"error": 'option "stop" must be of an array of strings'}
    r = http.post("/api/generate", json={**base, "options": {"tfs_z": 1, "penalize_newline": 1}})
    assert r.status_code == 200 and r.json()["done_reason"] == "load"


def test_keep_alive_errors(http):  # O9
    base = {"model": "tiny", "prompt": ""}
    r = http.post("/api/generate", json={**base, "keep_alive": "10"})
    assert (r.status_code, r.json()) == (400, {"error": 'time: missing unit in duration "10"'})
    r = http.post("/api/generate", json={**base, "keep_alive": True})
    assert (r.status_code, r.json()) == (400, {"error": "Unsupported type: 'bool'"})


def test_load_unload_and_ps(http):  # GE1, GE2, C1, C2, O11, M14
    r = http.post("/api/generate", json={"model": "tiny"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["model"] == "tiny" and body["response"] == "" and body["done"] is True
    assert body["done_reason"] == "load"
    assert "tiny:latest" in _loaded(http)
    (entry,) = [m for m in http.get("/api/ps").json()["models"] if m["name"] == "tiny:latest"]
    assert entry["model"] == "tiny:latest" and entry["size_vram"] == 0
    assert entry["size"] > 0 and entry["context_length"] == 256  # lowered to the training context
    assert entry["details"]["family"] == "llama" and entry["details"]["parent_model"] == ""
    assert len(entry["digest"]) == 64
    assert datetime.fromisoformat(entry["expires_at"]).timestamp() > time.time() + 200

    r = http.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload" and r.json()["done"] is True
    assert "tiny:latest" not in _loaded(http)
    r = http.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"  # not loaded: still 200

    r = http.post("/api/chat", json={"model": "tiny", "messages": []})
    assert r.json()["message"] == {"role": "assistant", "content": ""}
    assert r.json()["done_reason"] == "load"
    r = http.post("/api/chat", json={"model": "tiny", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert http.get("/api/ps").json() == {"models": []}


def test_keep_alive_sets_and_keeps_session_duration(http):  # O9, O10, §3.2
    http.post("/api/generate", json={"model": "tiny", "keep_alive": "1h"})
    first = datetime.fromisoformat(http.get("/api/ps").json()["models"][0]["expires_at"])
    assert 3500 < first.timestamp() - time.time() <= 3600
    http.post("/api/generate", json={"model": "tiny"})  # no keep_alive: duration unchanged
    again = datetime.fromisoformat(http.get("/api/ps").json()["models"][0]["expires_at"])
    assert 3500 < again.timestamp() - time.time() <= 3600
    http.post("/api/generate", json={"model": "tiny", "keep_alive": -1})
    forever = datetime.fromisoformat(http.get("/api/ps").json()["models"][0]["expires_at"])
    assert forever.year > 2200
    http.post("/api/generate", json={"model": "tiny", "keep_alive": 1.5})
    time.sleep(3.0)  # the reaper runs every second
    assert "tiny:latest" not in _loaded(http)


def test_keep_alive_zero_on_a_generation_unloads_after_it(http):  # O11
    r = http.post(
        "/api/generate",
        json={"model": "tiny", "prompt": "Hi", "keep_alive": 0, "stream": False,
              "options": {"num_predict": 2}},
    )  # fmt: skip
    assert r.json()["done"] is True
    assert "tiny:latest" not in _loaded(http)


def test_num_ctx_change_reloads(http):  # O12
    def load(options: dict) -> None:
        http.post("/api/generate", json={"model": "tiny", "options": options})

    load({"num_ctx": 64})
    assert http.get("/api/ps").json()["models"][0]["context_length"] == 64
    load({"num_ctx": 64, "temperature": 0.1})
    assert http.get("/api/ps").json()["models"][0]["context_length"] == 64
    load({"num_ctx": 128})
    assert [m["context_length"] for m in http.get("/api/ps").json()["models"]] == [128]


def test_official_client_ps_and_version_shapes(url, http):  # acceptance: client works unchanged
    with ollama.Client(host=url) as client:
        client.generate(model="tiny")
        ps = client.ps()
    assert [m.model for m in ps.models] == ["tiny:latest"]
    assert ps.models[0].size_vram == 0 and ps.models[0].expires_at is not None


def test_tokenize_and_detokenize(http):
    text = "Hello world"
    r = http.post("/api/tokenize", json={"model": "tiny", "content": text})
    ids = r.json()["tokens"]
    assert all(isinstance(t, int) for t in ids) and ids
    pieces = http.post(
        "/api/tokenize", json={"model": "tiny", "content": text, "with_pieces": True}
    ).json()["tokens"]
    assert [p["id"] for p in pieces] == ids and "".join(p["piece"] for p in pieces) == text
    back = http.post("/api/detokenize", json={"model": "tiny", "tokens": ids}).json()
    assert back == {"content": text}
    bad = http.post("/api/detokenize", json={"model": "tiny", "tokens": [10**9]})
    assert bad.status_code == 400 and "10000000" in bad.json()["error"]


def test_cors_and_host_checks(http):  # §1.3
    ok = http.get("/api/version", headers={"Origin": "http://localhost:3000"})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    pre = http.options(
        "/api/chat",
        headers={"Origin": "app://x", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert "x-stainless-lang" in pre.headers["access-control-allow-headers"]
    assert http.get("/", headers={"Origin": "https://evil.example"}).status_code == 403
    assert http.get("/", headers={"Host": "evil.example"}).status_code == 403
    assert http.get("/", headers={"Host": "myhost.local:11434"}).status_code == 200


def test_origin_and_host_rules():
    assert origin_allowed("https://127.0.0.1:8080", ())
    assert origin_allowed("vscode-webview://abc", ())
    assert origin_allowed("chrome-extension://id", ())
    assert not origin_allowed("http://example.com", ())
    assert origin_allowed("http://example.com", ("http://*.com",))
    for host in ("", "localhost:11434", "127.0.0.1", "[::1]:80", "10.0.0.5", "a.internal"):
        assert host_allowed(host), host
    assert not host_allowed("8.8.8.8")
    assert not host_allowed("example.com")


def test_queue_limit_answers_503(tmp_path):  # §1.7
    store = Store(tmp_path / "models")
    store.create_from_gguf("emb", write_embedding_header(tmp_path / "emb.gguf"))
    sched = Scheduler(load, max_queue=0)
    with live_server(create_app(store, sched)) as base:
        r = httpx.post(base + "/api/embed", json={"model": "emb"})
    assert r.status_code == 503
    assert r.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }


class FailingModel:
    """A real model whose eval_many (what the server's batcher runs) raises once a cache holds
    `fail_at` positions: an engine failure in the middle of a generation."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.fail_at = 10**9

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def eval_many(self, requests: Any, **kwargs: Any) -> Any:
        if any(cache.n_past >= self.fail_at for _, cache in requests):
            raise EngineError("simulated engine failure")
        return self._model.eval_many(requests, **kwargs)


def test_errors_before_and_after_streaming_began(tmp_path):  # G8, G9, §1.7
    store = tiny_store(tmp_path)
    app = create_app(store, Scheduler(lambda path: FailingModel(load(path))))
    prompt = "Once upon a time"
    body = {"model": "tiny", "prompt": prompt, "raw": True, "options": {"temperature": 0}}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=120) as http:
        http.post("/api/generate", json={"model": "tiny"})
        (runner,) = app.state.scheduler.loaded()
        n_prompt = len(runner.model.tokenizer.encode(prompt))
        runner.model.fail_at = n_prompt + 3
        with http.stream("POST", "/api/generate", json=body) as r:
            lines = [json.loads(line) for line in r.iter_lines()]
        assert r.status_code == 200
        assert lines[-1] == {"error": "simulated engine failure"}
        assert len(lines) >= 2 and all(not line.get("done") for line in lines[:-1])

        r = http.post("/api/generate", json={**body, "stream": False})
        assert (r.status_code, r.json()) == (500, {"error": "simulated engine failure"})

        runner.model.fail_at = 0  # fails while the prompt is processed: before any line
        r = http.post("/api/generate", json=body)
        assert (r.status_code, r.json()) == (500, {"error": "simulated engine failure"})
        assert r.headers["content-type"] == "application/json"
        runner.model.fail_at = 10**9
        ok = http.post(
            "/api/generate", json={**body, "stream": False, "options": {"num_predict": 2}}
        )
        assert ok.status_code == 200  # the model was released after each failure


def test_default_num_ctx_from_environment(http, monkeypatch):  # O2
    http.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "100")
    http.post("/api/generate", json={"model": "tiny"})
    assert http.get("/api/ps").json()["models"][0]["context_length"] == 100
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH")
    http.post("/api/generate", json={"model": "tiny"})
    assert http.get("/api/ps").json()["models"][0]["context_length"] == 256  # 4096, lowered


def test_missing_model_blob_is_404(tmp_path):  # §4.2 step 10
    store = tiny_store(tmp_path)
    store.resolve("tiny").gguf_path.unlink()
    with live_server(create_app(store)) as base:
        r = httpx.post(base + "/api/generate", json={"model": "tiny", "prompt": "x"})
    assert (r.status_code, r.json()) == (
        404,
        {"error": 'model "tiny" not found, try pulling it first'},
    )
