"""POST /api/chat over a live server with SmolLM2 (spec/ollama-api.md §5-§8, checklist C*, K*),
and concurrent streaming clients."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import ollama
import pytest
from starlette.applications import Starlette

from server.app import create_app
from tests.server.live import SYSTEM, THINKING, api_store, live_server, tiny_store
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi!"}]
GREEDY = {"temperature": 0, "num_predict": 10}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
# Forces the model's output to be one call in the template's `{` tool-call format.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path) -> Starlette:
    return create_app(api_store(tmp_path_factory.mktemp("chat"), smollm2_path))


def chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/api/chat", json={"stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()


def render(http: httpx.Client, **body: Any) -> str:
    out = chat(http, _debug_render_only=True, **body)
    assert out["message"] == {"role": "", "content": ""} and out["done"] is False
    return out["_debug_info"]["rendered_template"]


def test_stream_events_and_concatenation(http):  # C4, C5, C11
    body = {"model": "smollm2", "messages": HI, "options": GREEDY}
    with http.stream("POST", "/api/chat", json=body) as r:
        events = [json.loads(line) for line in r.iter_lines()]
    assert r.headers["content-type"] == "application/x-ndjson"
    for e in events:
        assert e["message"]["role"] == "assistant" and isinstance(e["message"]["content"], str)
        assert "context" not in e
    *pieces, final = events
    assert all(not e["done"] for e in pieces) and final["done"] is True
    assert final["eval_count"] > 0 and final["prompt_eval_count"] > 0
    whole = chat(http, **body)
    assert whole["message"]["content"] == "".join(e["message"]["content"] for e in events)
    assert "context" not in whole


def test_model_system_and_history(http):  # C6, C7, T3
    out = render(http, model="chatml", messages=HI)
    assert out == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nThe secret word is apple.<|im_end|>\n"
        "<|im_start|>assistant\nNoted.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    own = render(http, model="chatml", messages=[{"role": "system", "content": "Own."}, *HI])
    assert "Own." in own and SYSTEM not in own


def test_roles_lowercased_and_same_roles_merged(http):  # C8, T4
    out = render(
        http,
        model="thinker",
        think=False,
        messages=[{"role": "User", "content": "a"}, {"role": "USER", "content": "b"}],
    )
    assert out.startswith("<|im_start|>user\na\n\nb<|im_end|>\n")


def test_capability_errors(http):  # C9, C10
    r = http.post("/api/chat", json={"model": "fim", "messages": HI, "tools": [WEATHER_TOOL]})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "registry.ollama.ai/library/fim:latest does not support tools"},
    )
    r = http.post("/api/chat", json={"model": "emb", "messages": HI})
    assert (r.status_code, r.json()) == (400, {"error": '"emb" does not support chat'})
    r = http.post("/api/chat", json={"model": "smollm2", "messages": HI, "think": "extreme"})
    assert r.status_code == 400 and r.json()["error"].startswith('invalid think value: "extreme"')


def test_bad_images(http):  # C12
    for image in ("data:image/png;base64,aGk=", "a b"):
        msg = {"role": "user", "content": "x", "images": [image]}
        r = http.post("/api/chat", json={"model": "smollm2", "messages": [msg]})
        assert r.status_code == 400 and r.json()["error"].startswith("illegal base64 data")


def test_tools_rendered_and_calls_parsed(http):  # C13, K5, §7
    prompt = render(http, model="chatml", messages=HI, tools=[WEATHER_TOOL])
    assert '"name":"get_weather"' in prompt
    out = chat(
        http,
        model="chatml",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        format=CALL_SCHEMA,
        options={"temperature": 0, "num_predict": 40},
    )
    (call,) = out["message"]["tool_calls"]
    assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert out["message"]["content"] == "" and out["done_reason"] == "stop"


def test_tool_results_in_history(http):  # §7.2
    out = render(
        http,
        model="chatml",
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    )  # fmt: skip
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in out
    assert "<tool_response>sunny</tool_response>" in out


def test_thinking_model(http):  # K8, K9
    out = chat(http, model="thinker", messages=HI, options=GREEDY)
    assert out["message"]["thinking"] and out["message"]["content"] == ""
    assert render(http, model="thinker", messages=HI).endswith("<think>\n")
    off = chat(http, model="thinker", messages=HI, think=False, options=GREEDY)
    assert "thinking" not in off["message"] and off["message"]["content"]


def test_official_client_chat_sync_and_async(url):  # acceptance
    options = {"seed": 4, "num_predict": 6}
    with ollama.Client(host=url) as client:
        whole = client.chat(model="smollm2", messages=HI, options=options)
        parts = list(client.chat(model="smollm2", messages=HI, options=options, stream=True))
    assert whole.message.content == "".join(p.message.content or "" for p in parts)

    async def run() -> str:
        client = ollama.AsyncClient(host=url)
        resp = await client.chat(model="smollm2", messages=HI, options=options)
        await client._client.aclose()
        return resp.message.content or ""

    assert asyncio.run(run()) == whole.message.content


def test_history_truncation(http):  # T13, T14, T15, T16
    turns = []
    for i in range(6):
        turns.append({"role": "user", "content": f"Message number {i}: " + "blah " * 20})
        turns.append({"role": "assistant", "content": f"Reply {i}."})
    last = {"role": "user", "content": "What now?"}
    messages = [*turns, last]
    full = render(http, model="chatml", messages=messages, options={"num_ctx": 160})
    assert "Message number 0" not in full and "The secret word" not in full  # oldest dropped
    assert SYSTEM in full and full.count("<|im_start|>") >= 3  # system kept
    assert "What now?" in full  # the last message is kept
    kept = render(http, model="chatml", messages=messages, truncate=False, options={"num_ctx": 160})
    assert "Message number 0" in kept and "The secret word" in kept  # truncate:false


def test_eight_concurrent_streams_equal_their_solo_runs(tmp_path):  # acceptance: concurrency
    """Eight streams interleave token by token on one model; each must equal its solo run.

    The tiny model keeps this fast; its outputs are deterministic per seed, so any sharing of
    cache, RNG or sampler state between requests would show as a difference."""
    prompts = [f"Say something about the number {i}." for i in range(8)]

    def body(i: int) -> dict[str, Any]:
        return {
            "model": "tiny",
            "messages": [{"role": "user", "content": prompts[i]}],
            "options": {"seed": 100 + i, "num_predict": 24},
        }

    with live_server(create_app(tiny_store(tmp_path))) as url:
        _concurrent_equals_solo(url, body)


def _concurrent_equals_solo(url: str, body: Any) -> None:

    with httpx.Client(base_url=url, timeout=300) as http:
        solo = [http.post("/api/chat", json={**body(i), "stream": False}).json() for i in range(8)]

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, dict[str, Any]]:
        text = ""
        async with client.stream("POST", "/api/chat", json=body(i)) as r:
            async for line in r.aiter_lines():
                event = json.loads(line)
                assert "error" not in event
                text += event["message"]["content"]
        return text, event

    async def all_at_once() -> list[tuple[str, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    results = asyncio.run(all_at_once())
    for (text, final), alone in zip(results, solo, strict=True):
        assert final["done"] is True
        assert text == alone["message"]["content"]
        assert final["eval_count"] == alone["eval_count"]
    assert len({text for text, _ in results}) > 1  # the seeds matter


# Closing tag "." : the first sentence the model writes is its "thinking" (spec §8.1 tags).
SENTENCE_THINKER = """\
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}.{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>{{ end }}"""


def test_thinking_then_format(http):  # §8.4
    r = http.post(
        "/api/create",
        json={"model": "sentence", "from": "smollm2", "template": SENTENCE_THINKER,
              "stream": False},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "Is grass green? Say why in one sentence. Then JSON."}]
    body = {"model": "sentence", "messages": messages, "format": schema,
            "options": {"temperature": 0, "num_predict": 60}}  # fmt: skip
    out = chat(http, **body)
    assert out["message"]["thinking"], out  # the unconstrained first sentence
    assert out["done_reason"] == "stop" and out["message"]["content"], out
    assert json.loads(out["message"]["content"])["answer"] in ("yes", "no")
    with http.stream("POST", "/api/chat", json=body) as r:
        events = [json.loads(line) for line in r.iter_lines()]
    assert "".join(e["message"].get("thinking", "") for e in events) == out["message"]["thinking"]
    assert "".join(e["message"]["content"] for e in events) == out["message"]["content"]


def test_old_thinking_dropped_for_qwen3_only(tmp_path):  # §6.2 step 3
    store = tiny_store(tmp_path)
    store.create_from_gguf("q3", write_tiny_model(tmp_path / "q3.gguf", "qwen3"), template=THINKING)
    store.create_from_gguf("llama", tmp_path / "tiny.gguf", template=THINKING)
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>secret</think>A1"},
        {"role": "user", "content": "Q2"},
    ]
    with live_server(create_app(store)) as base, httpx.Client(base_url=base) as http:
        qwen = render(http, model="q3", messages=messages)
        other = render(http, model="llama", messages=messages)
    assert "secret" not in qwen and "A1" in qwen
    assert "<think>secret</think>A1" in other
