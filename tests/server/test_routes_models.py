"""The model-management routes over HTTP (server/routes_models.py, server/create.py), on a real
uvicorn server, through raw httpx and the official `ollama` client (spec/ollama-api.md §11;
checklist B1-B3, CR1-CR8, M1-M13, M15), plus kill tests on a subprocess server."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from engine.gguf.quantize import quantize_gguf
from engine.gguf.reader import GGUFFile
from server.app import create_app
from server.cli.main import main as cli_main
from server.manifest import MEDIA_SYSTEM
from server.store import Store
from tests.server.conftest import ServerProcess, assert_consistent, write_tiny_gguf
from tests.server.live import live_server

ZERO = "sha256:" + "0" * 64


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _lines(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert resp.text.endswith("\n")
    return [json.loads(line) for line in resp.text.splitlines()]


def _upload(url: str, path: Path) -> str:
    data = path.read_bytes()
    digest = _digest(data)
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def _create(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/api/create", json=body, timeout=60)


@pytest.fixture
def tiny(server_url: str, tiny_gguf: Path) -> str:
    """`tiny:latest` created from the tiny GGUF through the API; returns its blob digest."""
    digest = _upload(server_url, tiny_gguf)
    resp = _create(server_url, {"model": "tiny", "files": {"tiny.gguf": digest}, "stream": False})
    assert resp.json() == {"status": "success"}
    return digest


# ---- blobs -------------------------------------------------------------------------------------


def test_blob_head_and_post(server_url: str, store: Store) -> None:  # B1, B2
    data = b"some blob bytes"
    digest = _digest(data)
    head = httpx.head(f"{server_url}/api/blobs/{digest}")
    assert head.status_code == 404 and head.content == b""
    assert httpx.post(f"{server_url}/api/blobs/{digest}", content=data).status_code == 201
    assert (store.blobs_dir / digest.replace(":", "-")).read_bytes() == data
    assert httpx.head(f"{server_url}/api/blobs/{digest}").status_code == 200
    # An existing blob answers 200 without reading (or checking) the body.
    assert httpx.post(f"{server_url}/api/blobs/{digest}", content=b"other").status_code == 200


def test_blob_digest_mismatch_and_bad_digest(server_url: str, store: Store) -> None:  # B3
    resp = httpx.post(f"{server_url}/api/blobs/{ZERO}", content=b"abc")
    actual = _digest(b"abc")
    assert resp.status_code == 400
    assert resp.json() == {"error": f'digest mismatch, expected "{ZERO}", got "{actual}"'}
    # Ollama keeps the bytes under their real digest; nothing else is left behind.
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == [actual.replace(":", "-")]
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "g" * 64):
        resp = httpx.post(f"{server_url}/api/blobs/{bad}", content=b"abc")
        assert (resp.status_code, resp.json()) == (400, {"error": "invalid digest format"})
    assert httpx.head(f"{server_url}/api/blobs/sha256:abc").status_code == 400
    # The dash form and upper-case hex are valid digests but never equal the computed one.
    upper = "sha256:" + actual[7:].upper()
    assert httpx.post(f"{server_url}/api/blobs/{upper}", content=b"abc").status_code == 400


def test_interrupted_upload_leaves_nothing(server_url: str, store: Store) -> None:
    # A raw socket, so the client's hang-up happens exactly here (an HTTP client library may keep
    # the half-sent connection open until garbage collection).
    host, port = server_url.removeprefix("http://").split(":")
    head = f"POST /api/blobs/{ZERO} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 200000\r\n\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + b"x" * 100_000)
        deadline = time.monotonic() + 5
        while not list(store.blobs_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(store.blobs_dir.iterdir()), "the server never opened its temporary file"
    deadline = time.monotonic() + 10
    while list(store.blobs_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(store.blobs_dir.iterdir()) == []


# ---- create --------------------------------------------------------------------------------


def test_create_from_files_streams_ollama_statuses(
    server_url: str, store: Store, tiny_gguf: Path
) -> None:  # CR1
    digest = _upload(server_url, tiny_gguf)
    resp = _create(
        server_url,
        {"model": "t", "files": {"tiny.gguf": digest}, "system": "S", "parameters": {"top_k": 5}},
    )
    assert resp.status_code == 200
    statuses = [e["status"] for e in _lines(resp)]
    system = _digest(b"S")
    params = _digest(b'{"top_k":5}\n')
    assert statuses == [
        "parsing GGUF",
        f"using existing layer {digest}",
        f"creating new layer {system}",
        f"creating new layer {params}",
        "writing manifest",
        "success",
    ]
    rec = store.resolve("t")
    assert rec.gguf_path.read_bytes() == tiny_gguf.read_bytes()
    # The same create again finds every layer in place.
    again = [e["status"] for e in _lines(_create(server_url, {"model": "t2", "from": "t"}))]
    assert again[:3] == [f"using existing layer {d}" for d in (digest, system, params)]


def test_create_validation_errors(server_url: str, tiny_gguf: Path, tmp_path: Path) -> None:
    digest = _upload(server_url, tiny_gguf)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"NOTGGUF" * 10)
    bad_digest = _upload(server_url, not_gguf)
    cases = [
        ({"model": "m"}, 400, "neither 'from' or 'files' was specified"),  # CR2
        ({"model": "m", "files": {"../x.gguf": digest}}, 400, "file path must be relative"),  # CR3
        ({"model": "m", "files": {"/x.gguf": digest}}, 400, "file path must be relative"),
        ({"model": "m", "files": {"a//x.gguf": digest}}, 400, "file path must be relative"),
        ({"model": "m", "files": {"x.gguf": ""}}, 400, "invalid digest format"),
        ({"files": {"x.gguf": digest}}, 400, "invalid model name"),
        ({"model": "bad name", "files": {"x.gguf": digest}}, 400, "invalid model name"),
        ({"model": "m", "files": {}}, 400, "no files provided to convert"),
        ({"model": "m", "from": "-bad"}, 400, "invalid model name"),
        (
            {"model": "m", "files": {"x.gguf": bad_digest}},
            400,
            "supplied file was not in GGUF format",
        ),
        ({"model": "m", "files": {"x.bin": bad_digest}}, 400, "unknown type"),
        (
            {"model": "m", "files": {"t.gguf": digest}, "adapters": {"a": digest, "b": digest}},
            400,
            "only one adapter is currently supported",
        ),
        (
            {"model": "m", "files": {"t.gguf": digest}, "template": "{{ .Prompt"},
            400,
            "template error: template: :1: unclosed action",
        ),  # CR7
        (
            {"model": "m", "files": {"t.gguf": digest}, "quantize": "q3_K_XL"},
            500,
            "unsupported quantization type q3_K_XL - supported types are "
            "F32, F16, Q4_K_S, Q4_K_M, Q8_0",
        ),
    ]
    for body, status, message in cases:
        resp = _create(server_url, {**body, "stream": False})
        assert (resp.status_code, resp.json()) == (status, {"error": message}), body
        assert resp.headers["content-type"].startswith("application/json")
    missing = _create(server_url, {"model": "m", "files": {"x.gguf": ZERO}, "stream": False})
    assert missing.status_code == 500 and "no such file or directory" in missing.json()["error"]
    adapter = _create(
        server_url, {"model": "m", "files": {"t.gguf": digest}, "adapters": {"a": digest}}
    )
    assert adapter.status_code == 400 and "adapters are not supported" in adapter.json()["error"]
    empty = httpx.post(f"{server_url}/api/create", content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})


def test_error_after_progress_is_a_stream_line(server_url: str, tiny_gguf: Path) -> None:
    digest = _upload(server_url, tiny_gguf)
    resp = _create(server_url, {"model": "m", "files": {"t.gguf": digest}, "template": "{{ end }}"})
    lines = _lines(resp)
    assert resp.status_code == 200
    assert lines[0] == {"status": "parsing GGUF"}
    assert lines[-1]["error"].startswith("template error: ")
    not_gguf = _upload(server_url, _write(tiny_gguf.with_name("bad.gguf"), b"NOTGGUF!"))
    resp = _create(server_url, {"model": "m", "files": {"bad.gguf": not_gguf}})
    assert (resp.status_code, _lines(resp)) == (
        200,
        [{"status": "parsing GGUF"}, {"error": "supplied file was not in GGUF format"}],
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_create_from_model_with_system(server_url: str, store: Store, tiny: str) -> None:  # CR4
    resp = _create(server_url, {"model": "mario", "from": "tiny", "system": "You are Mario."})
    system = _digest(b"You are Mario.")
    assert [e["status"] for e in _lines(resp)] == [
        f"using existing layer {tiny}",
        f"creating new layer {system}",
        "writing manifest",
        "success",
    ]
    rec = store.resolve("mario")
    layer = next(x for x in rec.manifest.layers if x.media_type == MEDIA_SYSTEM)
    assert store.read_blob(layer.digest) == b"You are Mario."
    assert rec.manifest.layers[0].from_ == "tiny:latest"
    assert rec.details.parent_model == "tiny:latest"


def test_create_merges_parameters_and_replaces_lists(
    server_url: str, store: Store, tiny: str
) -> None:  # CR5
    base = {"stop": ["a", "b"], "temperature": 0.5, "top_k": 10}
    assert (
        _create(server_url, {"model": "p1", "from": "tiny", "parameters": base}).status_code == 200
    )
    change = {"stop": ["c"], "temperature": 0.9}
    assert (
        _create(server_url, {"model": "p2", "from": "p1", "parameters": change}).status_code == 200
    )
    assert store.resolve("p2").parameters == {"stop": ["c"], "temperature": 0.9, "top_k": 10}
    assert store.resolve("p1").parameters == base


def test_create_field_layers_replace_and_append(server_url: str, store: Store, tiny: str) -> None:
    first = {
        "model": "f1",
        "from": "tiny",
        "template": "{{ .Prompt }}!",
        "system": "one",
        "license": "L1",
        "messages": [{"role": "User", "content": "hi"}],
    }
    assert _create(server_url, first).status_code == 200
    second = {"model": "f2", "from": "f1", "system": "two", "license": ["L2", "L3"]}
    assert _create(server_url, second).status_code == 200
    rec = store.resolve("f2")
    assert (rec.template, rec.system, rec.license) == ("{{ .Prompt }}!", "two", ("L1", "L2", "L3"))
    assert rec.messages == ({"role": "user", "content": "hi"},)
    unchanged = {"model": "f3", "from": "f1", "system": ""}  # empty system leaves it alone
    assert _create(server_url, unchanged).status_code == 200
    assert store.resolve("f3").system == "one"


def test_create_stream_false_answers_success_only(server_url: str, tiny: str) -> None:  # CR6
    resp = _create(server_url, {"model": "x", "from": "tiny", "stream": False})
    assert resp.status_code == 200 and resp.json() == {"status": "success"}
    assert resp.headers["content-type"] == "application/json"


def test_quantize_checks(server_url: str, tmp_path: Path) -> None:
    quantized = write_tiny_gguf(tmp_path / "q.gguf", file_type=2)
    digest = _upload(server_url, quantized)
    resp = _create(
        server_url, {"model": "q", "files": {"q.gguf": digest}, "quantize": "q8_0", "stream": False}
    )
    assert (resp.status_code, resp.json()) == (
        500,
        {"error": "quantization is only supported for F16, BF16 and F32 models"},
    )
    f32 = _upload(server_url, write_tiny_gguf(tmp_path / "f.gguf"))
    same = _create(server_url, {"model": "f", "files": {"f.gguf": f32}, "quantize": "F32"})
    assert [e["status"] for e in _lines(same)][:2] == [
        "parsing GGUF",
        f"using existing layer {f32}",
    ]


@pytest.mark.parametrize("quantize", ["q8_0", "q4_K_M"])
def test_create_quantizes_an_f16_model(
    server_url: str, store: Store, tmp_path: Path, quantize: str
) -> None:
    f16 = write_tiny_gguf(tmp_path / "f16.gguf", file_type=1, dtype=np.float16, width=256)
    digest = _upload(server_url, f16)
    resp = _create(server_url, {"model": "q", "files": {"f16.gguf": digest}, "quantize": quantize})
    events = _lines(resp)
    target = quantize.upper()
    quantizing = [e for e in events if e["status"].startswith("quantizing")]
    assert quantizing[0] == {
        "status": f"quantizing F16 model to {target}",
        "digest": "0" * 19,
        "total": f16.stat().st_size,
    }
    assert quantizing[-1]["completed"] == f16.stat().st_size
    expected = tmp_path / "expected.gguf"
    quantize_gguf(f16, expected, quantize)
    new = _digest(expected.read_bytes())
    statuses = [e["status"] for e in events if not e["status"].startswith("quantizing")]
    assert statuses == [
        "parsing GGUF", "verifying conversion", f"creating new layer {new}",
        "writing manifest", "success",
    ]  # fmt: skip
    rec = store.resolve("q")
    assert rec.gguf_path.read_bytes() == expected.read_bytes()
    assert rec.details.quantization_level == target
    assert not store.has_blob(digest)  # the replaced source layer is pruned
    assert [p.name for p in store.blobs_dir.iterdir() if not p.name.startswith("sha256-")] == []


def test_create_info_and_requires(server_url: str, store: Store, tiny: str) -> None:
    body = {
        "model": "i",
        "from": "tiny",
        "requires": "0.14.0",
        "info": {"capabilities": ["vision"], "parameter_size": "1B", "context_length": 9},
    }
    assert _create(server_url, body).status_code == 200
    rec = store.resolve("i")
    assert store.read_blob(rec.manifest.config.digest) == (
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
        b'"model_type":"1B","file_type":"unknown","requires":"0.14.0",'
        b'"capabilities":["vision"],"context_length":9,"architecture":"amd64","os":"linux"}\n'
    )
    shown = _show(server_url, {"model": "i"}).json()
    assert shown["requires"] == "0.14.0"
    assert shown["capabilities"] == ["vision", "completion"]
    assert _create(server_url, {"model": "i2", "from": "i"}).status_code == 200
    assert store.resolve("i2").config["requires"] == "0.14.0"  # inherited
    for info, message in (
        ({"model_family": 1}, 'info field "model_family" must be a string'),
        ({"context_length": -1}, 'info field "context_length" must be a non-negative integer'),
        ({"embedding_length": "x"}, 'info field "embedding_length" must be a number'),
    ):
        resp = _create(server_url, {"model": "x", "from": "tiny", "info": info})
        assert (resp.status_code, resp.json()) == (400, {"error": message})


def test_projector_and_embedding_models(server_url: str, store: Store, tmp_path: Path) -> None:
    model = _upload(server_url, write_tiny_gguf(tmp_path / "m.gguf"))
    proj_file = write_tiny_gguf(tmp_path / "p.gguf", extra={"general.type": "projector"})
    projector = _upload(server_url, proj_file)
    files = {"model.gguf": model, "mmproj.gguf": projector}
    assert _create(server_url, {"model": "v", "files": files}).status_code == 200
    rec = store.resolve("v")
    assert rec.projectors == (store.blob_path(projector),)
    shown = _show(server_url, {"model": "v"}).json()
    assert shown["capabilities"] == ["completion", "vision"]
    assert shown["projector_info"]["general.type"] == "projector"
    assert f"\nFROM {store.blob_path(projector)}\n" in shown["modelfile"]
    embed = _upload(
        server_url, write_tiny_gguf(tmp_path / "e.gguf", extra={"llama.pooling_type": 1})
    )
    assert _create(server_url, {"model": "e", "files": {"e.gguf": embed}}).status_code == 200
    assert _show(server_url, {"model": "e"}).json()["capabilities"] == ["embedding"]


def test_create_from_a_missing_model_tries_to_pull_it(server_url: str) -> None:
    resp = _create(server_url, {"model": "x", "from": "127.0.0.1:1/no/model"})
    lines = _lines(resp)
    assert lines[0] == {"status": "pulling manifest"}
    assert "error" in lines[-1] and len(lines) == 2


# ---- tags ------------------------------------------------------------------------------------


def test_tags_empty(server_url: str) -> None:  # M1
    resp = httpx.get(f"{server_url}/api/tags")
    assert resp.content == b'{"models":[]}'
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    head = httpx.head(f"{server_url}/api/tags")
    assert head.status_code == 200 and head.content == b""


def test_tags_entries(server_url: str, store: Store, tiny: str) -> None:  # M2, M3, M4
    assert (
        _create(
            server_url,
            {"model": "Jdoe/Tools:v1", "from": "tiny", "template": "{{ .Prompt }}{{ .Tools }}"},
        ).status_code
        == 200
    )
    models = httpx.get(f"{server_url}/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["Jdoe/Tools:v1", "tiny:latest"]  # newest first
    for m in models:
        rec = store.resolve(m["name"])
        path = store.manifest_path(rec.parsed)
        assert m["model"] == m["name"]
        assert m["digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert m["size"] == sum(x.size for x in rec.manifest.blobs)
        assert m["details"] == {
            "parent_model": "tiny:latest" if m["name"] != "tiny:latest" else "tiny.gguf",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "112",
            "quantization_level": "F32",  # file_type 0: "unknown" in the config, repaired here
            "context_length": 64,
            "embedding_length": 8,
        }
        assert m["modified_at"][:19] == time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime)
        )
    assert models[0]["capabilities"] == ["completion", "tools"]


def test_ollama_client_manages_models(server_url: str, tiny_gguf: Path) -> None:
    with ollama.Client(host=server_url) as client:
        _manage_with_client(client, tiny_gguf)


def _manage_with_client(client: ollama.Client, tiny_gguf: Path) -> None:
    digest = client.create_blob(tiny_gguf)
    events = list(client.create("Tiny", files={"tiny.gguf": digest}, system="hi", stream=True))
    assert events[0].status == "parsing GGUF" and events[-1].status == "success"
    assert [m.model for m in client.list().models] == ["Tiny:latest"]
    shown = client.show("tiny")  # M15: case-insensitive lookup
    assert "\nSYSTEM hi\n" in shown.modelfile and shown.details.family == "llama"
    assert shown.capabilities == ["completion"]
    assert client.copy("tiny", "copy:v1").status == "success"
    assert client.create("derived", from_="copy:v1", parameters={"num_ctx": 32}).status == "success"
    assert sorted(m.model for m in client.list().models) == [
        "Tiny:latest",
        "copy:v1",
        "derived:latest",
    ]
    assert client.delete("Tiny").status == "success"
    with pytest.raises(ollama.ResponseError) as e:
        client.show("tiny")
    assert e.value.status_code == 404 and e.value.error == "model 'tiny:latest' not found"


# ---- show ------------------------------------------------------------------------------------


def _show(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/api/show", json=body)


def test_show_errors(server_url: str) -> None:  # M5
    assert _show(server_url, {}).json() == {"error": "model is required"}
    assert _show(server_url, {}).status_code == 400
    resp = _show(server_url, {"model": "foo"})
    assert (resp.status_code, resp.json()) == (404, {"error": "model 'foo:latest' not found"})
    resp = _show(server_url, {"model": "a/b/c/d"})
    assert (resp.status_code, resp.json()) == (400, {"error": "invalid model name"})
    resp = _show(server_url, {"model": 1})
    assert resp.status_code == 400 and "cannot unmarshal number" in resp.json()["error"]


def test_show_plain_model(server_url: str, store: Store, tiny: str, tiny_gguf: Path) -> None:
    resp = _show(server_url, {"name": " tiny "})  # deprecated alias, trimmed
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    body = resp.json()
    rec = store.resolve("tiny")
    assert body["template"] == "{{ messages }}"  # M6: no TEMPLATE, so the GGUF's Jinja source
    assert "parameters" not in body and "system" not in body and "license" not in body
    assert body["modelfile"].startswith(  # M11
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM tiny:latest\n\n"
        f"FROM {rec.gguf_path}\n"
    )
    info = body["model_info"]  # M8
    gguf = GGUFFile(tiny_gguf)
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert info["general.parameter_count"] == 4 * 8 + 8 + 8 * 8 + 8 == 112
    assert info["llama.context_length"] == 64
    assert info["llama.attention.layer_norm_rms_epsilon"] == 1e-05
    assert info["tokenizer.ggml.tokens"] is None  # M9
    verbose = _show(server_url, {"model": "tiny", "verbose": True}).json()["model_info"]
    assert verbose["tokenizer.ggml.tokens"] == ["<s>", "</s>", "a", "b"]
    assert verbose["tokenizer.ggml.token_type"] == [3, 3, 1, 1]
    assert body["tensors"] == [
        {"name": t.name, "type": "F32", "shape": list(reversed(t.shape))}
        for t in gguf.tensors.values()
    ]
    assert body["tensors"][0] == {"name": "token_embd.weight", "type": "F32", "shape": [8, 4]}
    assert body["capabilities"] == ["completion"]  # M10
    assert body["details"]["quantization_level"] == "unknown"  # show keeps "unknown"
    assert "context_length" not in body["details"]


def test_show_parameters_and_capabilities(server_url: str, tiny: str) -> None:  # M7, M10
    body = {
        "model": "fim",
        "from": "tiny",
        "template": "{{ if .Suffix }}<pre>{{ .Prompt }}<suf>{{ .Suffix }}{{ end }}{{ .Tools }}",
        "parameters": {"stop": ["<a>", "<b>"], "num_ctx": 1048576, "temperature": 0.7},
        "messages": [{"role": "user", "content": "hi"}],
        "license": "MIT",
    }
    assert _create(server_url, body).status_code == 200
    shown = _show(
        server_url, {"model": "fim", "system": "override", "options": {"top_k": 7}}
    ).json()
    assert sorted(shown["parameters"].split("\n")) == [
        "num_ctx                        1.048576e+06",
        'stop                           "<a>"',
        'stop                           "<b>"',
        "temperature                    0.7",
    ]
    assert shown["capabilities"] == ["completion", "tools", "insert"]
    assert shown["system"] == "override"
    assert shown["license"] == "MIT"
    assert shown["messages"] == [{"role": "user", "content": "hi"}]
    assert "PARAMETER top_k 7\n" in shown["modelfile"]  # options reach the Modelfile only
    assert "top_k" not in shown["parameters"]
    assert "SYSTEM override\n" in shown["modelfile"]


# ---- copy and delete ---------------------------------------------------------------------------


def test_copy(server_url: str, store: Store, tiny: str) -> None:  # M12
    resp = httpx.post(f"{server_url}/api/copy", json={"source": "tiny", "destination": "ns/c:1"})
    assert resp.status_code == 200 and resp.content == b""
    tags = {m["name"]: m["digest"] for m in httpx.get(f"{server_url}/api/tags").json()["models"]}
    assert tags["ns/c:1"] == tags["tiny:latest"]
    cases = [
        ({"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
        ({"source": "", "destination": "x"}, 400, 'source "" is invalid'),
        ({"source": "tiny", "destination": "a b"}, 400, 'destination "a b" is invalid'),
    ]
    for body, status, message in cases:
        resp = httpx.post(f"{server_url}/api/copy", json=body)
        assert (resp.status_code, resp.json()) == (status, {"error": message})
    same = httpx.post(f"{server_url}/api/copy", json={"source": "tiny", "destination": "TINY"})
    assert same.status_code == 200 and len(store.list_models()) == 2


def _delete(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.request("DELETE", f"{url}/api/delete", json=body)


def test_delete(server_url: str, store: Store, tiny: str) -> None:  # M13
    assert (
        _create(server_url, {"model": "s", "from": "tiny", "system": "only s"}).status_code == 200
    )
    only_s = _digest(b"only s")
    resp = _delete(server_url, {"model": "s"})
    assert resp.status_code == 200 and resp.content == b""
    assert not store.has_blob(only_s) and store.has_blob(tiny)
    cases = [
        ({"model": "s"}, 404, "model 's' not found"),
        ({}, 400, "model is required"),
        ({"model": "a b"}, 400, 'name "a b" is invalid'),
    ]
    for body, status, message in cases:
        resp = _delete(server_url, body)
        assert (resp.status_code, resp.json()) == (status, {"error": message})
    assert _delete(server_url, {"name": "TINY"}).status_code == 200
    assert list(store.blobs_dir.iterdir()) == []
    assert httpx.get(f"{server_url}/api/tags").json() == {"models": []}


@pytest.mark.parametrize("route", ["show", "copy", "pull", "push"])
def test_empty_body(server_url: str, route: str) -> None:
    resp = httpx.post(f"{server_url}/api/{route}", content=b"")
    assert (resp.status_code, resp.json()) == (400, {"error": "missing request body"})


# ---- kill tests: a SIGKILLed server leaves a consistent, loadable store ------------------------


def test_kill_mid_upload(server_process: ServerProcess, smollm2_path: Path) -> None:
    data = smollm2_path.read_bytes()
    digest = _digest(data)
    sent = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[:20_000_000]
        sent.set()
        time.sleep(30)
        yield data[20_000_000:]

    def upload() -> None:
        try:
            httpx.post(f"{server_process.url}/api/blobs/{digest}", content=body(), timeout=60)
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert sent.wait(30)
    time.sleep(0.5)
    server_process.kill()
    store = Store(server_process.models)
    assert not store.has_blob(digest)
    assert_consistent(store)
    restarted = ServerProcess(server_process.models)
    try:
        assert httpx.head(f"{restarted.url}/api/blobs/{digest}").status_code == 404
        assert httpx.post(f"{restarted.url}/api/blobs/{digest}", content=data).status_code == 201
    finally:
        restarted.kill()
    assert store.blob_path(digest).read_bytes() == data


def test_kill_mid_create(tmp_path: Path) -> None:
    """SIGKILL while the create is quantizing (its progress line repeats only while the
    quantizer thread is alive; the one 4096x4096 tensor takes ~3.6 s to quantize on an
    uncontended AVX512 core, the repeat comes after 0.5 s): no manifest, a consistent store,
    and a restarted server completes the same create."""
    models = tmp_path / "models"
    store = Store(models)
    f32 = write_tiny_gguf(tmp_path / "f32.gguf", width=4096)
    digest, _ = store.add_blob_file(f32)
    body = {"model": "q", "files": {"f32.gguf": digest}, "quantize": "q4_K_M"}
    proc = ServerProcess(models)
    quantizing = 0
    try:
        with httpx.stream("POST", f"{proc.url}/api/create", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                event = json.loads(line)
                assert event["status"] != "success"
                if event["status"].startswith("quantizing"):
                    quantizing += 1
                if quantizing == 2:  # the repeat: the quantizer thread is alive
                    proc.kill()
                    break
    except httpx.HTTPError:
        pass
    finally:
        proc.kill()
    assert quantizing == 2
    assert store.list_models() == []  # the kill landed before the manifest
    assert_consistent(store)
    restarted = ServerProcess(models)
    try:
        done = _lines(_create(restarted.url, body))
    finally:
        restarted.kill()
    assert done[-1] == {"status": "success"}
    assert [r.name for r in store.list_models()] == ["q:latest"]
    assert_consistent(store)


# ---- acceptance: a Modelfile-created SmolLM2 answers through /api/chat -------------------------

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


@pytest.mark.slow
def test_cli_create_from_modelfile_then_chat(
    tmp_path: Path, smollm2_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (tmp_path / "Modelfile").write_text(
        f'FROM {smollm2_path}\nTEMPLATE """{CHATML}"""\nPARAMETER stop <|im_end|>\n'
        "PARAMETER temperature 0\nSYSTEM You are a helpful assistant.\n"
    )
    store = Store(tmp_path / "models")
    with live_server(create_app(store)) as url:
        monkeypatch.setenv("OLLAMA_HOST", url)
        with pytest.raises(SystemExit) as done:
            cli_main(["create", "smol", "-f", str(tmp_path / "Modelfile")])
        assert done.value.code == 0
        progress = capsys.readouterr().err
        assert "parsing GGUF" in progress and progress.rstrip().endswith("success")
        rec = store.resolve("smol")
        assert rec.parameters == {"stop": ["<|im_end|>"], "temperature": 0.0}
        assert rec.gguf_path.read_bytes() == smollm2_path.read_bytes()
        with ollama.Client(host=url) as client:
            reply = client.chat(
                "smol",
                messages=[{"role": "user", "content": "What is 2+2?"}],
                options={"num_predict": 2},
            )
    assert reply.done and reply.message.role == "assistant"
    assert reply.eval_count == 2 and reply.message.content


def test_cli_list_show_cp_rm(
    server_url: str, tiny: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", server_url)

    def run(*argv: str) -> str:
        with pytest.raises(SystemExit) as done:
            cli_main(list(argv))
        assert done.value.code == 0, argv
        return str(capsys.readouterr().out)

    assert run("cp", "tiny", "other") == "copied 'tiny' to 'other'\n"
    listing = run("list").splitlines()
    assert listing[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    digest = httpx.get(f"{server_url}/api/tags").json()["models"][0]["digest"]
    assert sorted(row.split()[:2] for row in listing[1:]) == [
        ["other:latest", digest[:12]],
        ["tiny:latest", digest[:12]],
    ]
    shown = run("show", "tiny")
    assert "architecture        llama" in shown and "context length      64" in shown
    assert run("show", "--template", "tiny") == "{{ messages }}\n"  # the GGUF's Jinja source
    assert run("rm", "tiny", "other") == "deleted 'tiny'\ndeleted 'other'\n"
    with pytest.raises(SystemExit) as failed:
        cli_main(["rm", "tiny"])
    assert failed.value.code == 1
    assert capsys.readouterr().err == "Error: model 'tiny' not found\n"


def test_cli_create_reports_modelfile_errors(
    tmp_path: Path, server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", server_url)
    (tmp_path / "Modelfile").write_text("SYSTEM no from\n")
    with pytest.raises(SystemExit) as failed:
        cli_main(["create", "x", "-f", str(tmp_path / "Modelfile")])
    assert failed.value.code == 1
    assert capsys.readouterr().err == "Error: no FROM line\n"
