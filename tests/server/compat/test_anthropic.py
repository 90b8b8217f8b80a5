"""The Anthropic-compatible POST /v1/messages (server/compat/anthropic.py) over a live server,
with the official `anthropic` client and SmolLM2, checked against the native /api/chat it
translates onto; and one seeded request giving the same text through all three chat routes."""

from __future__ import annotations

import anthropic
import openai
import pytest
from starlette.applications import Starlette

from server.app import create_app
from tests.server.compat.conftest import HI, native_chat
from tests.server.live import CHATML_TOOLS, api_store
from tests.server.test_chat_api import WEATHER_TOOL

pytestmark = pytest.mark.slow

STORY = [{"role": "user", "content": "Tell me a story."}]
GREEDY = {"temperature": 0}  # the client has no sampling arguments: sent as extra_body
# Two worked examples in the model's history make SmolLM2 answer a weather question with a
# call in the template's `{` format, without a grammar (the Anthropic API has no format).
TOOL_SHOTS = [
    {"role": "user", "content": "Weather in London?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "London"}}'},
    {"role": "user", "content": "Weather in Rome?"},
    {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Rome"}}'},
]
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": WEATHER_TOOL["function"]["description"],
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path) -> Starlette:
    store = api_store(tmp_path_factory.mktemp("v1msg"), smollm2_path)
    store.create_from_gguf("tooler", smollm2_path, template=CHATML_TOOLS, messages=TOOL_SHOTS)
    store.create_from_gguf("seeded", smollm2_path, parameters={"seed": 42})
    return create_app(store)


@pytest.fixture(scope="module")
def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def test_message_is_the_native_chat(client, http):
    out = client.messages.create(
        model="smollm2", max_tokens=6, messages=HI, system="Answer in French.", extra_body=GREEDY
    )
    native = native_chat(
        http,
        messages=[{"role": "system", "content": "Answer in French."}, *HI],
        options={"temperature": 0, "num_predict": 6},
    )
    (block,) = out.content
    assert block.type == "text" and block.text == native["message"]["content"]
    assert (out.type, out.role, out.model, out.stop_reason) == (
        "message", "assistant", "smollm2", "max_tokens",
    )  # fmt: skip
    assert out.id.startswith("msg_")
    assert out.usage.input_tokens == native["prompt_eval_count"]
    assert out.usage.output_tokens == 6
    blocks = client.messages.create(
        model="smollm2", max_tokens=6, extra_body=GREEDY,
        system=[{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}],
    )  # fmt: skip
    assert blocks.content == out.content


def test_stream_events(client):
    with client.messages.stream(
        model="smollm2", max_tokens=6, messages=HI, extra_body=GREEDY
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e.type for e in events if e.type not in ("text",)]
    assert raw[:2] == ["message_start", "content_block_start"]
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(raw[2:-3]) == {"content_block_delta"}
    whole = client.messages.create(model="smollm2", max_tokens=6, messages=HI, extra_body=GREEDY)
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_thinking(client, http):
    on = {"type": "enabled", "budget_tokens": 1024}
    out = client.messages.create(
        model="thinker", max_tokens=6, messages=HI, thinking=on, extra_body=GREEDY
    )
    native = native_chat(
        http, model="thinker", messages=HI, think=True, options={"temperature": 0,
                                                                 "num_predict": 6},
    )  # fmt: skip
    assert out.content[0].type == "thinking"
    assert out.content[0].thinking == native["message"]["thinking"]
    with client.messages.stream(
        model="thinker", max_tokens=6, messages=HI, thinking=on, extra_body=GREEDY
    ) as stream:
        final = stream.get_final_message()
    assert final.content == out.content
    # a model that cannot think answers without thinking instead of failing (Ollama's rule
    # for Anthropic clients); /api/chat refuses the same request
    relaxed = client.messages.create(
        model="smollm2", max_tokens=4, messages=HI, thinking=on, extra_body=GREEDY
    )
    plain = native_chat(http, messages=HI, options={"temperature": 0, "num_predict": 4})
    assert relaxed.content[0].text == plain["message"]["content"]
    r = http.post("/api/chat", json={"model": "smollm2", "messages": HI, "think": True})
    assert r.status_code == 400


def test_tool_use_and_tool_result(client, http):
    question = [{"role": "user", "content": "Weather in Paris?"}]
    out = client.messages.create(
        model="tooler", max_tokens=40, messages=question, tools=[ANTHROPIC_WEATHER],
        extra_body=GREEDY,
    )  # fmt: skip
    assert out.stop_reason == "tool_use"
    (use,) = [b for b in out.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    assert use.id.startswith("call_")
    with client.messages.stream(
        model="tooler",
        max_tokens=40,
        messages=question,
        tools=[ANTHROPIC_WEATHER],
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()  # fmt: skip
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert (streamed.name, streamed.input) == (use.name, use.input)
    assert final.stop_reason == "tool_use"

    history = [
        *question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in out.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
            {"type": "text", "text": "So?"},
        ]},
    ]  # fmt: skip
    answer = client.messages.create(
        model="tooler", max_tokens=12, messages=history, tools=[ANTHROPIC_WEATHER],
        extra_body=GREEDY,
    )  # fmt: skip
    native = native_chat(
        http,
        model="tooler",
        tools=[WEATHER_TOOL],
        options={"temperature": 0, "num_predict": 12},
        messages=[
            *question,
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": use.id, "function": {"name": "get_weather", "arguments": use.input}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": use.id},
            {"role": "user", "content": "So?"},
        ],
    )  # fmt: skip
    assert answer.content[0].text == native["message"]["content"]


def test_errors_in_anthropic_shape(client, http):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="missing", max_tokens=4, messages=HI)
    body = e.value.body
    assert (body["type"], body["error"]) == (
        "error",
        {"type": "not_found_error", "message": "model 'missing' not found"},
    )
    assert body["request_id"].startswith("req_")
    cases = [
        ({"max_tokens": 0}, "max_tokens is required and must be positive"),
        ({"messages": []}, "messages is required"),
        ({"model": ""}, "model is required"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
          "type": "url", "url": "https://example.com/a.png"}}]}]},
         "invalid image source type: url. Only base64 images are supported."),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]},
         "tool_use block missing required 'id' field"),
        ({"stop_sequences": [1]}, "json: cannot unmarshal number into Go struct field "
                                  "MessagesRequest.stop_sequences of type string"),
        ({"messages": ["hi"]}, "json: cannot unmarshal string into Go value of type "
                               "anthropic.MessageParam"),
        ({"temperature": "warm"}, "json: cannot unmarshal string into Go struct field "
                                  "MessagesRequest.temperature of type float64"),
    ]  # fmt: skip
    for change, message in cases:
        body = {"model": "smollm2", "max_tokens": 4, "messages": HI, **change}
        r = http.post("/v1/messages", json=body)
        assert r.status_code == 400, change
        assert r.json()["error"] == {"type": "invalid_request_error", "message": message}
    assert client.messages.create(model="smollm2", max_tokens=1, messages=HI).content


def test_seeded_request_same_text_through_three_routes(url, http):
    """The model's stored seed (the Anthropic API has none) with the same sampling settings
    gives the same text through /api/chat, /v1/chat/completions and /v1/messages."""
    sampling = {"temperature": 0.8, "top_p": 0.9}
    native = native_chat(
        http, model="seeded", messages=STORY, options={**sampling, "num_predict": 12}
    )
    oa = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    chat = oa.chat.completions.create(
        model="seeded", messages=STORY, max_tokens=12, seed=42, **sampling
    )
    msg = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0).messages.create(
        model="seeded", max_tokens=12, messages=STORY, extra_body=sampling
    )
    text = native["message"]["content"]
    assert chat.choices[0].message.content == msg.content[0].text == text
    other = native_chat(
        http, model="seeded", messages=STORY, options={**sampling, "seed": 43, "num_predict": 12}
    )
    assert other["message"]["content"] != text  # the seed decides the text
