"""Fuzzing every route of a live server with Hypothesis-generated bodies (issue 19).

For each route, bodies are drawn from three families: arbitrary bytes, arbitrary JSON values,
and objects over the route's own field names (in any letter case) holding values of any JSON
type, sometimes plausible ones (real model names, small prompts). The properties: a client
mistake is never a 5xx (the one exception is Ollama's own 500 for a wrongly typed option,
spec §2.3), every error body is a JSON `{"error": "..."}` object, and the server still answers
`/api/version` afterwards.

Bounds: a fixed number of examples per route, derandomized so CI sees the same bodies every run;
generation is capped at a few tokens of the tiny random model. Network safety: any name a pull,
push or create could fetch from a registry is rewritten to a closed loopback port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from server.app import create_app
from server.store import Store
from tests.server.conftest import free_port
from tests.server.live import CHATML_TOOLS, write_embedding_header
from tests.tiny_model import write_tiny_model

EXAMPLES = 30  # per route; about 20 s for all of them on one core
MODELS = ("tiny", "tools", "emb", "Tiny:Latest", "missing", "", "a/b/c/d", "x:y:z", "127.0.0.1")
PROMPTS = ("a", "b a", "<s>", "{{ .Prompt }}", "")

_FIELDS_COMMON = ("model", "options", "stream", "keep_alive", "format", "think", "truncate",
                  "shift", "logprobs", "top_logprobs", "_debug_render_only", "trace")  # fmt: skip
ROUTES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/api/generate"): (
        *_FIELDS_COMMON,
        "prompt",
        "suffix",
        "system",
        "template",
        "context",
        "raw",
        "images",
    ),  # fmt: skip
    ("POST", "/api/chat"): (*_FIELDS_COMMON, "messages", "tools"),
    ("POST", "/api/embed"): ("model", "input", "truncate", "dimensions", "keep_alive", "options"),
    ("POST", "/api/embeddings"): ("model", "prompt", "keep_alive", "options"),
    ("POST", "/api/tokenize"): ("model", "content", "add_special", "parse_special", "with_pieces"),
    ("POST", "/api/detokenize"): ("model", "tokens"),
    ("POST", "/api/create"): (
        "model",
        "from",
        "files",
        "adapters",
        "template",
        "system",
        "license",
        "parameters",
        "messages",
        "quantize",
        "stream",
    ),  # fmt: skip
    ("POST", "/api/show"): ("model", "name", "verbose", "system", "template", "options"),
    ("POST", "/api/copy"): ("source", "destination"),
    ("DELETE", "/api/delete"): ("model", "name"),
    ("POST", "/api/pull"): ("model", "name", "insecure", "stream"),
    ("POST", "/api/push"): ("model", "name", "insecure", "stream"),
    ("POST", "/api/blobs/sha256:" + "0" * 64): (),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64): (),
    ("GET", "/api/tags"): (),
    ("GET", "/api/ps"): (),
    ("GET", "/api/version"): (),
    ("GET", "/"): (),
}
# Names these routes could resolve against a remote registry, and names delete must not hit.
_GUARDED_ROUTES = {"/api/pull", "/api/push", "/api/create", "/api/delete"}
_NAME_KEYS = {"model", "name", "from", "source", "destination"}
_SAFE_PORT = free_port()  # bound for a moment, then closed: connections to it are refused

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
plausible = {
    "model": st.sampled_from(MODELS),
    "name": st.sampled_from(MODELS),
    "prompt": st.sampled_from(PROMPTS),
    "content": st.sampled_from(PROMPTS),
    "input": st.sampled_from(PROMPTS) | st.lists(st.sampled_from(PROMPTS), max_size=3),
    "messages": st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
            optional={"content": st.sampled_from(PROMPTS), "tool_calls": json_values},
        ),
        max_size=3,
    ),
    "tokens": st.lists(st.integers(min_value=-5, max_value=300), max_size=5),
    "options": st.dictionaries(
        st.sampled_from(["temperature", "top_k", "top_p", "seed", "num_ctx", "stop", "min_p"]),
        json_values,
        max_size=3,
    ),
    "keep_alive": st.sampled_from(["5m", "0", "-1", "1h30m", "x", 0, -1, 1.5]) | json_values,
    "format": st.sampled_from(["json", "", {"type": "object"}, {"type": "string"}]) | json_values,
}


def _field_value(key: str) -> st.SearchStrategy[Any]:
    return plausible[key] | json_values if key in plausible else json_values


def _object_for(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(fields).flatmap(
        lambda k: st.sampled_from([k, k.upper(), k.title()]).map(lambda spelled: (k, spelled))
    )
    pair = keys.flatmap(lambda ks: _field_value(ks[0]).map(lambda v: (ks[1], v)))
    return st.lists(pair, max_size=len(fields)).map(dict)


def _bodies(path: str, fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    as_json = st.one_of(json_values, _object_for(fields) if fields else json_values)
    return st.one_of(
        st.binary(max_size=40),
        as_json.map(lambda v: json.dumps(_bounded(v, path, fields)).encode()),
    )


def _bounded(value: Any, path: str, fields: tuple[str, ...]) -> Any:
    """Keep a body local and short: names that could leave the machine point at a closed
    loopback port, no real model can be deleted, and generation stops after a few tokens."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for key, v in value.items():
        if key.lower() in _NAME_KEYS and isinstance(v, str) and path in _GUARDED_ROUTES:
            out[key] = f"127.0.0.1:{_SAFE_PORT}/fuzz/m"
        if key.lower() == "options" and isinstance(v, dict):
            out[key] = {**v, "num_predict": 3}
    if ("messages" in fields or "prompt" in fields) and "options" not in map(str.lower, out):
        out["options"] = {"num_predict": 3}
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    root: Path = tmp_path_factory.mktemp("fuzz")
    store = Store(root / "models")
    tiny = write_tiny_model(root / "tiny.gguf")
    store.create_from_gguf("tiny", tiny)
    store.create_from_gguf("tools", tiny, template=CHATML_TOOLS)
    store.create_from_gguf("emb", write_embedding_header(root / "emb.gguf"))
    return create_app(store)


@pytest.fixture(scope="module")
def fuzz_http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _check(r: httpx.Response) -> None:
    if r.status_code >= 500:
        text = r.json().get("error", "")
        # Ollama answers a wrongly typed option with 500 (spec §2.3); nothing else may be 5xx.
        assert r.status_code == 500 and text.startswith("option "), (r.status_code, r.text)
    if r.status_code >= 400 and r.request.method != "HEAD":
        body = r.json()
        assert isinstance(body, dict) and list(body) == ["error"], r.text
        assert isinstance(body["error"], str) and body["error"], r.text
    if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/x-nd"):
        for line in r.text.splitlines():
            assert isinstance(json.loads(line), dict)


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[f"{m} {p}" for m, p in ROUTES])
def test_no_route_fails_on_client_mistakes(
    fuzz_http: httpx.Client, method: str, path: str, record_property: Any
) -> None:
    fields = ROUTES[(method, path)]
    sent: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=_bodies(path, fields))
    def run(body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        r = fuzz_http.request(method, path, content=body, headers=headers)
        sent.append(r.status_code)
        _check(r)
        assert fuzz_http.get("/api/version").status_code == 200

    run()
    record_property("requests", len(sent))  # in --junitxml reports, for the fuzz counts
    assert len(sent) >= EXAMPLES  # every example reached the server (shrinking adds more)
