"""POST /v1/responses (server/compat/responses.py) over a live server, with the official `openai`
client's `client.responses` and SmolLM2; every answer is checked against the native /api/chat
request it translates onto (docs/compat.md)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pydantic
import pytest

from tests.server.compat.conftest import CITY_SCHEMA, HI, native_chat
from tests.server.test_chat_api import CALL_SCHEMA, WEATHER_TOOL

pytestmark = pytest.mark.slow

GREEDY5 = {"temperature": 0, "num_predict": 5}
# The Responses API's flat function tool (no "function" wrapper).
WEATHER = {"type": "function", **WEATHER_TOOL["function"]}
FORCED_CALL = {"format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}}


def test_a_string_input_is_the_native_chat(client, http):
    out = client.responses.create(
        model="smollm2", input="Hi!", instructions="Be brief.", temperature=0,
        max_output_tokens=5,
    )  # fmt: skip
    native = native_chat(
        http, messages=[{"role": "system", "content": "Be brief."}, *HI], options=GREEDY5
    )
    assert out.output_text == native["message"]["content"] != ""
    (item,) = out.output
    assert (item.type, item.role, item.status) == ("message", "assistant", "completed")
    assert out.object == "response" and out.status == "completed"
    assert out.id.startswith("resp_") and item.id.startswith("msg_")
    assert out.instructions == "Be brief." and out.max_output_tokens == 5
    assert (out.temperature, out.top_p, out.text.format.type) == (0, 1.0, "text")
    assert out.usage.input_tokens == native["prompt_eval_count"]
    assert out.usage.output_tokens == native["eval_count"] == 5
    assert out.usage.total_tokens == out.usage.input_tokens + 5


def test_input_items_are_messages(client, http):
    history = [
        {"role": "user", "content": "The secret word is apple."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "What is the secret word?"},
    ]
    native = native_chat(http, messages=history, options=GREEDY5)
    items = [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "The secret "},
                     {"type": "input_text", "text": "word is apple."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Noted."}]},
        {"role": "user", "content": "What is the secret word?"},  # the shorthand form
    ]  # fmt: skip
    out = client.responses.create(model="smollm2", input=items, temperature=0,
                                  max_output_tokens=5)  # fmt: skip
    assert out.output_text == native["message"]["content"]


def test_stream_events(client):
    whole = client.responses.create(model="smollm2", input="Hi!", temperature=0,
                                    max_output_tokens=6)  # fmt: skip
    events = list(client.responses.create(model="smollm2", input="Hi!", temperature=0,
                                          max_output_tokens=6, stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == whole.output_text != ""
    assert events[-4].text == text and events[-2].item.content[0].text == text
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert completed.id == created.id and completed.status == "completed"
    assert completed.output_text == text and completed.usage.output_tokens == 6
    assert len({e.item_id for e in deltas} | {events[2].item.id}) == 1


def test_no_input_loads_the_model(client):
    out = client.responses.create(model="smollm2", input=[])
    assert out.output_text == "" and out.usage.output_tokens == 0
    events = list(client.responses.create(model="smollm2", input=[], stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.completed"
    ]  # fmt: skip
    assert events[-1].response.output == []


def test_json_schema_output_validates(client):
    out = client.responses.create(
        model="smollm2", input="A big city and its population.", temperature=0,
        max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA,
                         "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(out.output_text), CITY_SCHEMA)
    assert out.text.format.type == "json_schema" and out.text.format.name == "city"


class City(pydantic.BaseModel):
    city: str
    population: int


def test_parse_with_a_pydantic_model(client):
    out = client.responses.parse(model="smollm2", input="A big city and its population.",
                                 temperature=0, max_output_tokens=60, text_format=City)  # fmt: skip
    assert isinstance(out.output_parsed, City) and out.output_parsed.city


def test_tool_call_and_output_round_trip(client, http):
    question = "Weather in Paris?"
    out = client.responses.create(model="chatml", input=question, tools=[WEATHER],
                                  text=FORCED_CALL, temperature=0,
                                  max_output_tokens=40)  # fmt: skip
    (call,) = out.output
    assert (call.type, call.status, call.name) == ("function_call", "completed", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    assert out.tools[0].name == "get_weather"

    followup = [
        {"role": "user", "content": question},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    answer = client.responses.create(model="chatml", input=followup, tools=[WEATHER],
                                     temperature=0, max_output_tokens=8)  # fmt: skip
    native = native_chat(
        http, model="chatml", tools=[WEATHER_TOOL], options={"temperature": 0, "num_predict": 8},
        messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": call.call_id, "function": {"name": "get_weather",
                                                  "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": call.call_id},
        ],
    )  # fmt: skip
    assert answer.output_text == native["message"]["content"] != ""
    without_result = native_chat(
        http, model="chatml", tools=[WEATHER_TOOL], options={"temperature": 0, "num_predict": 8},
        messages=[{"role": "user", "content": question}],
    )  # fmt: skip
    assert answer.output_text != without_result["message"]["content"]

    events = list(client.responses.create(model="chatml", input=question, tools=[WEATHER],
                                          text=FORCED_CALL, temperature=0, max_output_tokens=40,
                                          stream=True))  # fmt: skip
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.arguments for e in done] == [call.arguments]
    assert "response.output_text.delta" not in [e.type for e in events]
    (streamed,) = events[-1].response.output
    assert (streamed.type, streamed.name, streamed.arguments) == (
        "function_call",
        "get_weather",
        call.arguments,
    )


def test_reasoning_effort_is_think(client, http):
    body = {"model": "thinker", "input": "Hi!", "max_output_tokens": 5, "temperature": 0}
    out = http.post("/v1/responses", json={**body, "reasoning": {"effort": "high"}}).json()
    native = native_chat(http, model="thinker", messages=HI, think="high", options=GREEDY5)
    thinking = native["message"]["thinking"]
    assert thinking
    reasoning = out["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [
        {"type": "summary_text", "text": thinking}
    ]
    assert out["reasoning"] == {"effort": "high", "summary": None}
    events = list(client.responses.create(**body, reasoning={"effort": "high"}, stream=True))
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == thinking
    off = http.post("/v1/responses", json={**body, "reasoning": {"effort": "none"}}).json()
    assert [item["type"] for item in off["output"]] == ["message"]


def test_errors_in_openai_shape(client, http):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="missing", input="Hi!")
    assert e.value.body == {"message": "model 'missing' not found", "type": "not_found_error",
                            "param": None, "code": None}  # fmt: skip
    cases = [
        ({"input": 3}, "input must be a string or array: json: cannot unmarshal number into Go "
                       "value of type []json.RawMessage"),
        ({"input": [{"type": "bogus"}]}, 'input[0]: unknown input item type: "bogus"'),
        ({"input": [{"content": "x"}]}, "input[0]: input item missing required 'type' field"),
        ({"input": [{"role": "user", "content": [{"type": "video"}]}]},
         "input[0]: content[0]: unknown content type: video"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "file inputs are not currently supported"),
        ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                  "image_url": "https://example.com/a.png"}]}]},
         "image URLs are not currently supported, please use base64 encoded data instead"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
         "failed to parse function call arguments: json: cannot unmarshal array into Go value "
         "of type api.ToolCallFunctionArguments"),
        ({"temperature": "hot"}, "json: cannot unmarshal string into Go struct field "
                                 "ResponsesRequest.temperature of type float64"),
        ({"reasoning": {"effort": "huge"}}, 'invalid reasoning value: "huge" (must be '
         '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")'),
        ({"reasoning": {"effort": "high"}}, '"smollm2" does not support thinking'),
        ({"tools": [{"type": "web_search"}]},
         "the web_search tool is not supported: refllama runs no web search"),
    ]  # fmt: skip
    for change, message in cases:
        r = http.post("/v1/responses", json={"model": "smollm2", "input": "Hi!", **change})
        assert (r.status_code, r.json()["error"]) == (
            400,
            {"message": message, "type": "invalid_request_error", "param": None, "code": None},
        ), change
    for raw in (b"[1]", b"{", b""):
        r = http.post("/v1/responses", content=raw)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.responses.create(model="smollm2", input="Hi!", max_output_tokens=1).output_text
