"""Qwen2.5-Coder-0.5B-Instruct imported with a bare `FROM qwen.gguf` (no TEMPLATE): its own Jinja
chat template gives it `tools`, and tool calls it writes in that template's `<tool_call>` JSON
blocks come back parsed through the official client, streaming and not (issue 15).

The prompt is the server's rendering (`_debug_render_only`); llama.cpp's greedy continuation of
that same prompt is the oracle for the call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from starlette.applications import Starlette

from engine.gguf.reader import GGUFFile
from server.app import create_app
from server.store import Store
from tests.conftest import needs_oracle
from tests.server.live import live_server

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
GREEDY = {"temperature": 0, "num_predict": 48}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Starlette:
    return create_app(Store(tmp_path_factory.mktemp("qwen") / "models"))


@pytest.fixture(scope="module")
def url(app: Starlette) -> Iterator[str]:
    with live_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str, qwen_path: Path) -> Iterator[ollama.Client]:
    """The official client, with `qwen` created from the GGUF alone (a bare FROM)."""
    with ollama.Client(host=url, timeout=600) as c:
        digest = c.create_blob(qwen_path)
        assert c.create("qwen", files={"qwen.gguf": digest}).status == "success"
        yield c


def test_bare_gguf_gets_its_templates_capabilities(client: ollama.Client, qwen_path: Path) -> None:
    shown = client.show("qwen")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template == GGUFFile(qwen_path).metadata["tokenizer.chat_template"]


def _llama_cpp_greedy(path: Path, prompt: str, n: int) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, verbose=False)
    out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1)
    return str(out["choices"][0]["text"])


def _calls_in(text: str) -> list[dict[str, Any]]:
    """The calls in a model output: the JSON inside `<tool_call>…</tool_call>` blocks, or the
    whole output when it is one JSON call (Qwen 0.5B drops the tags its template asks for)."""
    blocks = re.findall(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", text, re.S)
    if not blocks and text.strip().startswith("{"):
        blocks = [text.strip()]
    calls = [json.loads(b) for b in blocks]
    return [c for c in calls if isinstance(c, dict) and "name" in c and "arguments" in c]


@needs_oracle
def test_tool_calls_parsed_where_llama_cpp_calls(
    client: ollama.Client, url: str, qwen_path: Path
) -> None:
    body = {"model": "qwen", "messages": ASK, "tools": [WEATHER_TOOL], "stream": False}
    rendered = httpx.post(f"{url}/api/chat", json={**body, "_debug_render_only": True}, timeout=60)
    prompt = rendered.json()["_debug_info"]["rendered_template"]
    assert prompt.endswith("<|im_start|>assistant\n") and '"name": "get_weather"' in prompt
    oracle = _llama_cpp_greedy(qwen_path, prompt, GREEDY["num_predict"])
    oracle_calls = _calls_in(oracle)
    assert oracle_calls, (
        f"llama.cpp's greedy output holds no call, the prompt is no test: {oracle!r}"
    )
    want = [(c["name"], c["arguments"]) for c in oracle_calls]

    reply = client.chat("qwen", messages=ASK, tools=[WEATHER_TOOL], options=GREEDY)
    assert reply.message.content == ""
    assert [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls] == want

    chunks = list(
        client.chat("qwen", messages=ASK, tools=[WEATHER_TOOL], options=GREEDY, stream=True)
    )
    streamed = [c for chunk in chunks for c in chunk.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == want
    assert "".join(chunk.message.content for chunk in chunks) == ""
    assert chunks[-1].done


def test_tool_result_renders_through_the_template(url: str, client: ollama.Client) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "18 C and cloudy", "tool_name": "get_weather"},
    ]
    body = {"model": "qwen", "messages": messages, "tools": [WEATHER_TOOL], "stream": False}
    out = httpx.post(f"{url}/api/chat", json={**body, "_debug_render_only": True}, timeout=60)
    prompt = out.json()["_debug_info"]["rendered_template"]
    assert prompt.endswith(
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18 C and cloudy\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
