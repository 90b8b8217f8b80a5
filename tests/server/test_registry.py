"""Pull and push over the distribution protocol (server/oci.py; spec/ollama-api.md §11.7,
§11.8, §14; checklist P1-P9), against Debian's docker-registry and small stub registries."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import ollama
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.cli.main import main as cli_main
from server.routes_models import model_routes
from server.store import Store
from tests.server.conftest import ServerProcess, assert_consistent, needs_registry
from tests.server.live import live_server


def _stream(url: str, route: str, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    with httpx.stream("POST", f"{url}/api/{route}", json=body, timeout=120) as resp:
        return resp.status_code, [json.loads(line) for line in resp.iter_lines() if line]


def _blob_lines(events: list[dict[str, Any]], verb: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["status"].startswith(f"{verb} ") and "digest" in e:
            assert e["status"] == f"{verb} {e['digest'][7:19]}"
            out.setdefault(e["digest"], []).append(e)
    return out


def _collapse(statuses: list[str]) -> list[str]:
    """Statuses with runs of `pulling …`/`pushing …` progress folded into one entry."""
    out: list[str] = []
    for s in statuses:
        if not out or out[-1] != s:
            out.append(s)
    return out


@needs_registry
def test_push_delete_pull_is_byte_identical(
    registry: str, server_url: str, store: Store, smollm2_path: Path
) -> None:  # P1, P7, P9
    name = f"{registry}/test/smol:v1"
    store.create_from_gguf(name, smollm2_path, template="{{ .Prompt }}", system="S")
    local = store.resolve(name)
    with ollama.Client(host=server_url) as client:
        pushed = [e.status for e in client.push(name, insecure=True, stream=True)]
        order = [x.digest[7:19] for x in local.manifest.blobs]
        assert _collapse(pushed) == [
            "retrieving manifest",
            *[f"pushing {d}" for d in order],
            "pushing manifest",
            "success",
        ]
        assert client.delete(name).status == "success"
        assert list(store.blobs_dir.iterdir()) == []
        status, events = _stream(server_url, "pull", {"model": name, "insecure": True})
    assert status == 200
    assert _collapse([e["status"] for e in events]) == [
        "pulling manifest",
        *[f"pulling {d}" for d in order],
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    for digest, lines in _blob_lines(events, "pulling").items():
        size = next(x.size for x in local.manifest.blobs if x.digest == digest)
        assert all(e["total"] == size for e in lines)
        assert lines[-1]["completed"] == size
        assert "completed" not in lines[0] or lines[0]["completed"] > 0
    pulled = store.resolve(name)
    assert pulled.gguf_path.read_bytes() == smollm2_path.read_bytes()
    assert (pulled.template, pulled.system) == ("{{ .Prompt }}", "S")
    served = urllib.request.urlopen(
        urllib.request.Request(
            f"http://{registry}/v2/test/smol/manifests/v1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    ).read()
    assert store.manifest_path(pulled.parsed).read_bytes() == served
    assert_consistent(store)


@needs_registry
def test_existing_blobs_are_not_transferred_again(
    registry: str, server_url: str, store: Store, tiny_gguf: Path
) -> None:  # P5
    name = f"{registry}/test/tiny:again"
    rec = store.create_from_gguf(name, tiny_gguf, system="again")
    _, first = _stream(server_url, "push", {"model": name, "insecure": True})
    _, second = _stream(server_url, "push", {"model": name, "insecure": True})
    _, pulled = _stream(server_url, "pull", {"model": name, "insecure": True})
    for events in (second, pulled):
        verb = "pushing" if events is second else "pulling"
        lines = _blob_lines(events, verb)
        assert set(lines) == {x.digest for x in rec.manifest.blobs}
        for digest, entries in lines.items():
            size = next(x.size for x in rec.manifest.blobs if x.digest == digest)
            assert entries == [{"status": entries[0]["status"], "digest": digest,
                                "total": size, "completed": size}]  # fmt: skip
    assert first[-1] == {"status": "success"} and pulled[-1] == {"status": "success"}


@needs_registry
def test_pull_errors(registry: str, server_url: str) -> None:  # P2
    status, events = _stream(server_url, "pull", {"model": f"{registry}/no/such", "insecure": True})
    assert status == 200
    assert events == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    resp = httpx.post(
        f"{server_url}/api/pull",
        json={"model": f"{registry}/no/such", "insecure": True, "stream": False},
    )
    assert (resp.status_code, resp.json()) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    resp = httpx.post(f"{server_url}/api/pull", json={"model": f"http://{registry}/no/such"})
    assert (resp.status_code, resp.json()) == (500, {"error": "insecure protocol http"})
    resp = httpx.post(f"{server_url}/api/pull", json={"model": ""})
    assert (resp.status_code, resp.json()) == (400, {"error": "invalid model name"})


def test_push_errors(server_url: str, store: Store) -> None:  # P9
    resp = httpx.post(f"{server_url}/api/push", json={})
    assert (resp.status_code, resp.json()) == (400, {"error": "model is required"})
    status, events = _stream(server_url, "push", {"model": "127.0.0.1:1/a/b", "insecure": True})
    path = store.manifests_dir / "127.0.0.1:1/a/b/latest"
    assert (status, events) == (
        200,
        [
            {"status": "retrieving manifest"},
            {"status": "couldn't retrieve manifest"},
            {"error": f"open {path}: no such file or directory"},
        ],
    )


# ---- a stub registry: what pull asks for, and a blob that does not match its digest -------


class StubRegistry:
    """Serves one manifest and its blobs; records requests; can corrupt or slow a blob."""

    def __init__(self, manifest: bytes, blobs: dict[str, bytes]) -> None:
        self.manifest, self.blobs = manifest, blobs
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Accept)
        self.corrupt: set[str] = set()
        self.delay = 0.0  # seconds per MB of blob data
        self.realm = ""  # when set, manifests need `Bearer t0k`, handed out at /token
        self.token_queries: list[dict[str, str]] = []

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/{ns}/{model}/manifests/{tag}", self.get_manifest, methods=["GET"]),
                Route("/v2/{ns}/{model}/blobs/{digest}", self.blob, methods=["GET", "HEAD"]),
                Route("/token", self.token, methods=["GET"]),
            ]
        )

    async def token(self, request: Request) -> Response:
        self.token_queries.append(dict(request.query_params))
        return Response(json.dumps({"token": "t0k"}), media_type="application/json")

    async def get_manifest(self, request: Request) -> Response:
        self._record(request)
        if self.realm and request.headers.get("authorization") != "Bearer t0k":
            challenge = f'Bearer realm="{self.realm}",service="stub",scope="repository:x:pull"'
            return Response(b"", 401, headers={"WWW-Authenticate": challenge})
        return Response(
            self.manifest, media_type="application/vnd.docker.distribution.manifest.v2+json"
        )

    async def blob(self, request: Request) -> Response:
        self._record(request)
        digest = request.path_params["digest"]
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = b"X" + data[1:]
        headers = {"Content-Length": str(len(data))}
        if request.method == "HEAD":
            return Response(b"", headers=headers)
        return StreamingResponse(self._chunks(data), headers=headers)

    async def _chunks(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]
            await anyio.sleep(self.delay)

    def _record(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path, request.headers.get("accept", "")))


@pytest.fixture
def stub(tiny_gguf: Path, tmp_path: Path) -> Iterator[tuple[StubRegistry, str]]:
    """A stub serving `stub/tiny:v1` built from the tiny GGUF in a scratch store."""
    scratch = Store(tmp_path / "scratch")
    rec = scratch.create_from_gguf("x", tiny_gguf, system="stub")
    manifest = scratch.manifest_path(rec.parsed).read_bytes()
    blobs = {x.digest: scratch.read_blob(x.digest) for x in rec.manifest.blobs}
    registry = StubRegistry(manifest, blobs)
    with live_server(registry.app()) as url:
        yield registry, url.removeprefix("http://")


def test_pull_requests_and_insecure(stub: tuple[StubRegistry, str], server_url: str) -> None:
    registry, host = stub  # P3, P4
    status, events = _stream(
        server_url, "pull", {"model": f"{host}/stub/tiny:v1", "insecure": True}
    )
    assert events[-1] == {"status": "success"}
    method, path, accept = registry.requests[0]
    assert (method, path) == ("GET", "/v2/stub/tiny/manifests/v1")
    assert accept == "application/vnd.docker.distribution.manifest.v2+json"
    assert all(p.startswith("/v2/stub/tiny/") for _, p, _ in registry.requests)
    # Without `insecure` the client speaks TLS, which this plain-http stub cannot answer.
    before = len(registry.requests)
    _, events = _stream(server_url, "pull", {"model": f"{host}/stub/tiny:v2"})
    assert "error" in events[-1] and len(registry.requests) == before


def test_bearer_token_flow(stub: tuple[StubRegistry, str], server_url: str) -> None:
    registry, host = stub
    registry.realm = f"http://{host}/token"
    _, events = _stream(server_url, "pull", {"model": f"{host}/stub/tiny:v1", "insecure": True})
    assert events[-1] == {"status": "success"}
    (query,) = registry.token_queries
    assert (query["service"], query["scope"]) == ("stub", "repository:x:pull")
    assert [r[1] for r in registry.requests[:2]] == ["/v2/stub/tiny/manifests/v1"] * 2
    registry.realm = "http://elsewhere.invalid/token"
    _, events = _stream(server_url, "pull", {"model": f"{host}/stub/tiny:v1", "insecure": True})
    assert events[-1] == {
        "error": f'realm host "elsewhere.invalid" does not match original host "{host}"'
    }


def test_corrupt_blob_is_deleted_and_the_pull_fails(
    stub: tuple[StubRegistry, str], server_url: str, store: Store
) -> None:  # P6
    registry, host = stub
    bad = next(d for d, data in registry.blobs.items() if len(data) > 1000)
    registry.corrupt.add(bad)
    actual = "sha256:" + hashlib.sha256(b"X" + registry.blobs[bad][1:]).hexdigest()
    _, events = _stream(server_url, "pull", {"model": f"{host}/stub/tiny:v1", "insecure": True})
    assert events[-2:] == [
        {"status": "verifying sha256 digest"},
        {"error": f"digest mismatch, file must be downloaded again: want {bad}, got {actual}"},
    ]
    assert not store.has_blob(bad)
    assert not any("partial" in p.name for p in store.blobs_dir.iterdir())
    assert list(store.names()) == []
    assert_consistent(store)


@needs_registry
def test_kill_mid_pull_then_resume(registry: str, tmp_path: Path, smollm2_path: Path) -> None:  # P8
    """SIGKILL the server while a slow registry sends SmolLM2; the store stays consistent and
    the next pull (from the real registry) continues from the saved part records."""
    name = f"{registry}/kill/smol:v1"
    source = Store(tmp_path / "source")
    rec = source.create_from_gguf(name, smollm2_path)
    with live_server(Starlette(routes=model_routes(source))) as url:
        _, pushed = _stream(url, "push", {"model": name, "insecure": True})
        assert pushed[-1] == {"status": "success"}
    model = rec.manifest.layers[0].digest
    slow = StubRegistry(
        source.manifest_path(rec.parsed).read_bytes(),
        {x.digest: source.read_blob(x.digest) for x in rec.manifest.blobs},
    )
    slow.delay = 0.05
    models = tmp_path / "models"
    with live_server(slow.app()) as stub_url:
        proc = ServerProcess(models)
        seen = threading.Event()

        def watch() -> None:
            body = {"model": f"{stub_url.removeprefix('http://')}/kill/smol:v1", "insecure": True}
            try:
                with httpx.stream("POST", f"{proc.url}/api/pull", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if json.loads(line).get("completed", 0) > 20_000_000:
                            seen.set()
            except httpx.HTTPError:
                pass

        threading.Thread(target=watch, daemon=True).start()
        assert seen.wait(30)
        proc.kill()
    store = Store(models)
    assert_consistent(store)
    assert not store.has_blob(model) and list(store.names()) == []
    partial = store.blobs_dir / (model.replace(":", "-") + "-partial")
    saved = json.loads(Path(f"{partial}-0").read_text())
    assert partial.exists() and saved["Completed"] > 20_000_000
    restarted = ServerProcess(models)
    try:
        _, events = _stream(restarted.url, "pull", {"model": name, "insecure": True})
    finally:
        restarted.kill()
    first = _blob_lines(events, "pulling")[model][0]
    assert first["completed"] >= saved["Completed"]  # resumed, not restarted
    assert events[-1] == {"status": "success"}
    assert store.resolve(name).gguf_path.read_bytes() == smollm2_path.read_bytes()
    assert not any("partial" in p.name for p in store.blobs_dir.iterdir())
    assert_consistent(store)


@needs_registry
def test_pull_over_an_older_version_removes_its_unused_layers(
    registry: str, server_url: str, store: Store, tiny_gguf: Path, tmp_path: Path
) -> None:
    name = f"{registry}/test/tiny:moving"
    publisher = Store(tmp_path / "publisher")
    with live_server(Starlette(routes=model_routes(publisher))) as pub_url:
        publisher.create_from_gguf(name, tiny_gguf, system="version one")
        assert _stream(pub_url, "push", {"model": name, "insecure": True})[1][-1]["status"] == (
            "success"
        )
        _, first = _stream(server_url, "pull", {"model": name, "insecure": True})
        assert "removing unused layers" not in [e["status"] for e in first]
        publisher.create_from_gguf(name, tiny_gguf, system="version two")
        _stream(pub_url, "push", {"model": name, "insecure": True})
    _, second = _stream(server_url, "pull", {"model": name, "insecure": True})
    assert [e["status"] for e in second][-3:] == [
        "writing manifest",
        "removing unused layers",
        "success",
    ]
    assert store.resolve(name).system == "version two"
    assert not store.has_blob("sha256:" + hashlib.sha256(b"version one").hexdigest())


@needs_registry
def test_cli_push_and_pull(
    registry: str, server_url: str, store: Store, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    name = f"{registry}/cli/tiny:v1"
    store.create_from_gguf(name, tiny_gguf)
    monkeypatch.setenv("OLLAMA_HOST", server_url)
    for argv in (["push", "--insecure", name], ["rm", name], ["pull", "--insecure", name]):
        with pytest.raises(SystemExit) as done:
            cli_main(argv)
        assert done.value.code == 0, argv
    out = capsys.readouterr()
    assert out.out == f"deleted '{name}'\n"
    progress = out.err.replace("\r\x1b[K", "\n").splitlines()  # each redraw on its own line
    assert progress[0] == "retrieving manifest" and progress[-1] == "success"
    assert "pulling manifest" in progress and "verifying sha256 digest" in progress
    digest = store.resolve(name).manifest.layers[0].digest
    size = f"{tiny_gguf.stat().st_size / 1000:.1f} KB"
    # 80 columns (no terminal), one left free: 20 status + 1 + 4 percent + 5 + 13 + 18 -> 18 bar
    assert f"pulling {digest[7:19]} 100% ▕{'█' * 18}▏ {size}{' ' * 25}" in progress


def test_concurrent_pulls_of_one_model(
    server_url: str, store: Store, smollm2_path: Path, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    rec = source.create_from_gguf("x", smollm2_path)
    slow = StubRegistry(
        source.manifest_path(rec.parsed).read_bytes(),
        {x.digest: source.read_blob(x.digest) for x in rec.manifest.blobs},
    )
    slow.delay = 0.01
    results: list[list[dict[str, Any]]] = []
    with live_server(slow.app()) as stub_url:
        body = {"model": f"{stub_url.removeprefix('http://')}/c/smol:v1", "insecure": True}
        threads = [
            threading.Thread(target=lambda: results.append(_stream(server_url, "pull", body)[1]))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [r[-1] for r in results] == [{"status": "success"}] * 2
    model_gets = [r for r in slow.requests if r[0] == "GET" and "/blobs/" in r[1]]
    assert len(model_gets) == len(rec.manifest.blobs)  # each blob was downloaded once
    assert store.resolve(body["model"]).gguf_path.read_bytes() == smollm2_path.read_bytes()
    assert_consistent(store)
