"""The OpenAI-compatible /v1 routes (server/compat/openai.py) over a live server, with the
official `openai` client and SmolLM2; every answer is checked against the native /api route it
translates onto (docs/compat.md)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import jsonschema
import numpy as np
import openai
import pydantic
import pytest

from tests.server.compat.conftest import CITY_SCHEMA, HI, native_chat
from tests.server.test_chat_api import CALL_SCHEMA, WEATHER_TOOL

pytestmark = pytest.mark.slow


def sse_data(http: httpx.Client, path: str, body: dict[str, Any]) -> list[str]:
    with http.stream("POST", path, json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in r.iter_lines() if line]


# --------------------------------------------------------------------------------------------
# /v1/chat/completions


def test_chat_is_the_native_chat(client, http):
    out = client.chat.completions.create(model="smollm2", messages=HI, temperature=0, max_tokens=5)
    native = native_chat(http, messages=HI, options={"temperature": 0, "num_predict": 5})
    (choice,) = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == native["message"]["content"]
    assert choice.finish_reason == "length"
    assert out.object == "chat.completion" and out.system_fingerprint == "fp_ollama"
    assert out.id.startswith("chatcmpl-")
    assert out.usage.prompt_tokens == native["prompt_eval_count"]
    assert out.usage.completion_tokens == native["eval_count"] == 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + 5


def test_max_completion_tokens_is_num_predict(client):
    out = client.chat.completions.create(
        model="smollm2", messages=HI, temperature=0, max_completion_tokens=3
    )
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_chat_stream(client, http):
    stream = client.chat.completions.create(
        model="smollm2",
        messages=HI,
        temperature=0,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    *pieces, finish, usage = chunks
    assert pieces[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in pieces[1:])
    assert all(c.choices[0].finish_reason is None for c in pieces)
    assert finish.choices[0].finish_reason == "length"
    assert finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    whole = client.chat.completions.create(
        model="smollm2", messages=HI, temperature=0, max_tokens=6
    )
    assert "".join(c.choices[0].delta.content for c in pieces) == whole.choices[0].message.content
    data = sse_data(
        http,
        "/v1/chat/completions",
        {"model": "smollm2", "messages": HI, "max_tokens": 2, "stream": True},
    )
    assert data[-1] == "[DONE]"
    assert "usage" not in json.loads(data[-2])  # no usage chunk unless asked for


def test_seed_stop_and_penalties_reach_the_sampler(client, http):
    story = [{"role": "user", "content": "Tell me a story."}]
    options = {"seed": 7, "temperature": 0.9, "top_p": 0.8, "frequency_penalty": 1.0,
               "presence_penalty": 1.0, "num_predict": 16, "stop": ["."]}  # fmt: skip
    native = native_chat(http, messages=story, options=options)
    out = client.chat.completions.create(
        model="smollm2", messages=story, seed=7, temperature=0.9, top_p=0.8,
        frequency_penalty=1.0, presence_penalty=1.0, max_tokens=16, stop=".",
    )  # fmt: skip
    assert out.choices[0].message.content == native["message"]["content"]
    no_penalties = native_chat(
        http, messages=story, options={**options, "frequency_penalty": 0, "presence_penalty": 0}
    )
    assert no_penalties["message"]["content"] != native["message"]["content"]


def test_logprobs(client, http):
    out = client.chat.completions.create(
        model="smollm2", messages=HI, temperature=0, max_tokens=4, logprobs=True, top_logprobs=2
    )
    native = native_chat(
        http, messages=HI, options={"temperature": 0, "num_predict": 4}, top_logprobs=2,
        logprobs=True,
    )  # fmt: skip
    content = out.choices[0].logprobs.content
    assert [c.model_dump(exclude_none=True) for c in content] == native["logprobs"]
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)


def test_json_object_and_json_schema(client):
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a city as JSON."}],
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "A big city and its population."}],
        temperature=0,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), CITY_SCHEMA)


class City(pydantic.BaseModel):
    city: str
    population: int


def test_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "A big city and its population."}],
        temperature=0,
        max_tokens=60,
        response_format=City,
    )
    parsed = out.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.city


def test_tool_call_and_result_round_trip(client):
    question = [{"role": "user", "content": "Weather in Paris?"}]
    forced = {"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}}
    out = client.chat.completions.create(
        model="chatml", messages=question, tools=[WEATHER_TOOL], response_format=forced,
        temperature=0, max_tokens=40,
    )  # fmt: skip
    (choice,) = out.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    history = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    rendered = client.chat.completions.create(
        model="chatml", messages=history, tools=[WEATHER_TOOL],
        extra_body={"_debug_render_only": True},
    )  # fmt: skip
    prompt = rendered.model_extra["_debug_info"]["rendered_template"]
    assert '{"name": "get_weather", "arguments": {"city":"Paris"}}' in prompt
    assert prompt.endswith(
        "<tool_response>sunny</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )

    stream = client.chat.completions.create(
        model="chatml", messages=question, tools=[WEATHER_TOOL], response_format=forced,
        temperature=0, max_tokens=40, stream=True,
    )  # fmt: skip
    chunks = list(stream)
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [
        ("get_weather", call.function.arguments)
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_reasoning_effort_is_think(client, http):
    body = {"model": "thinker", "messages": HI, "max_tokens": 5, "temperature": 0}
    thinking = http.post("/v1/chat/completions", json={**body, "reasoning_effort": "high"}).json()
    native = native_chat(
        http, model="thinker", messages=HI, think="high", options={"temperature": 0,
                                                                   "num_predict": 5},
    )  # fmt: skip
    assert thinking["choices"][0]["message"]["reasoning"] == native["message"]["thinking"]
    off = http.post("/v1/chat/completions", json={**body, "reasoning": {"effort": "none"}}).json()
    assert "reasoning" not in off["choices"][0]["message"]
    assert off["choices"][0]["message"]["content"]


def test_errors_in_openai_shape(client, http):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing", messages=HI)
    assert e.value.body == {"message": "model 'missing' not found", "type": "not_found_error",
                            "param": None, "code": None}  # fmt: skip
    cases = [
        ({"messages": []}, "[] is too short - 'messages'"),
        ({"temperature": "hot"}, "json: cannot unmarshal string into Go struct field "
                                 "ChatCompletionRequest.temperature of type float64"),
        ({"messages": [{"role": "user", "content": 3}]}, "invalid message content type: float64"),
        ({"reasoning_effort": "huge"}, 'invalid reasoning value: "huge" (must be "minimal", '
         '"low", "medium", "high", "xhigh", "ultra", "max", or "none")'),
        ({"reasoning_effort": "high"}, '"smollm2" does not support thinking'),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url":
          {"url": "https://example.com/a.png"}}]}]},
         "image URLs are not currently supported, please use base64 encoded data instead"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
          {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]},
         "invalid tool call arguments"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs must be between 0 and 20"),
    ]  # fmt: skip
    for change, message in cases:
        r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": HI, **change})
        assert (r.status_code, r.json()["error"]) == (
            400,
            {"message": message, "type": "invalid_request_error", "param": None, "code": None},
        ), change
    r = http.post("/v1/chat/completions", content=b"[1]")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.chat.completions.create(model="smollm2", messages=HI, max_tokens=1).choices


# --------------------------------------------------------------------------------------------
# /v1/completions


def test_completions_are_the_native_generate(client, http):
    out = client.completions.create(model="smollm2", prompt="The sky is", temperature=0,
                                    max_tokens=6)  # fmt: skip
    native = http.post("/api/generate", json={
        "model": "smollm2", "prompt": "The sky is", "stream": False,
        "options": {"temperature": 0, "num_predict": 6},
    }).json()  # fmt: skip
    assert out.choices[0].text == native["response"]
    assert out.choices[0].finish_reason == "length" and out.object == "text_completion"
    assert out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens == native["prompt_eval_count"]
    chunks = list(client.completions.create(
        model="smollm2", prompt="The sky is", temperature=0, max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    *pieces, usage = chunks
    assert "".join(c.choices[0].text for c in pieces) == native["response"]
    assert pieces[-1].choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage.completion_tokens == 6
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "x", "stop": [1]})
    assert (r.status_code, r.json()["error"]["message"]) == (
        400,
        "invalid type for 'stop' field: float64",
    )


def test_completions_suffix(http):
    body = {"model": "fim", "prompt": "def add(a, b):", "suffix": "    return c",
            "max_tokens": 8, "temperature": 0}  # fmt: skip
    out = http.post("/v1/completions", json=body).json()
    native = http.post("/api/generate", json={
        "model": "fim", "prompt": body["prompt"], "suffix": body["suffix"], "stream": False,
        "options": {"temperature": 0, "num_predict": 8},
    }).json()  # fmt: skip
    assert out["choices"][0]["text"] == native["response"]


# --------------------------------------------------------------------------------------------
# /v1/embeddings and /v1/models


def test_embeddings(client, http):
    native = http.post("/api/embed", json={"model": "smollm2", "input": ["alpha", "beta"]}).json()
    out = client.embeddings.create(model="smollm2", input=["alpha", "beta"],
                                   encoding_format="float")  # fmt: skip
    assert [d.embedding for d in out.data] == native["embeddings"]
    assert [d.index for d in out.data] == [0, 1] and out.model == "smollm2"
    assert out.usage.prompt_tokens == out.usage.total_tokens == native["prompt_eval_count"]
    packed = http.post("/v1/embeddings", json={"model": "smollm2", "input": "alpha",
                                               "encoding_format": "base64"}).json()  # fmt: skip
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    assert np.array_equal(vector, np.array(native["embeddings"][0], np.float32))
    short = client.embeddings.create(model="smollm2", input="alpha", dimensions=16)
    native16 = http.post("/api/embed", json={"model": "smollm2", "input": "alpha",
                                             "dimensions": 16}).json()  # fmt: skip
    # the client asks for base64 when no encoding_format is given, and decodes it as float32
    assert np.array_equal(np.array(short.data[0].embedding, np.float32),
                          np.array(native16["embeddings"][0], np.float32))  # fmt: skip
    assert len(short.data[0].embedding) == 16
    for body, message in [
        ({"input": "a", "encoding_format": "hex"},
         "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."),
        ({"input": []}, "invalid input"),
        ({}, "invalid input"),
        ({"input": [[1, 2]]}, "invalid input type"),
    ]:  # fmt: skip
        r = http.post("/v1/embeddings", json={"model": "smollm2", **body})
        assert (r.status_code, r.json()["error"]["message"]) == (400, message), body
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="missing", input="a")


def test_models(client, http):
    listed = client.models.list()
    tags = http.get("/api/tags").json()["models"]
    assert [m.id for m in listed.data] == [t["model"] for t in tags]
    assert all(m.object == "model" and m.owned_by == "library" for m in listed.data)
    one = client.models.retrieve("smollm2")
    assert one.id == "smollm2"
    assert one.created == next(m.created for m in listed.data if m.id == "smollm2:latest")
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("missing")
    assert e.value.body["message"] == "model 'missing' not found"
