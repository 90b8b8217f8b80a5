"""OpenAI's chat completions, completions, embeddings and models, as Ollama translates them
(docs/compat.md; Ollama's openai/openai.go and middleware/openai.go).

Each request class reads the OpenAI body, builds the `native` body for /api/chat,
/api/generate or /api/embed, and turns the native events back: `frames(event)` gives the
server-sent events for one native event, `answer(event)` the object for the combined one.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from typing import Any

import numpy as np

from server.compat.fields import Fields, decode_object, json_kind, sse
from server.errors import InvalidRequest
from server.names import parse_name
from server.store import ModelRecord

FINGERPRINT = "fp_ollama"
_IMAGE_PREFIXES = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))
# OpenAI's reasoning efforts onto Ollama's think levels; the tiers past Ollama's ends are
# clamped to the nearest one, as Ollama does, rather than rejected.
_EFFORT_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; the type follows the status as Ollama picks it."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _go_type(value: Any) -> str:
    """Go's %T for a decoded JSON value, for Ollama's 'invalid message content type' text."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    return "map[string]interface {}"


def _stops(value: Any, strict: bool) -> list[str] | None:
    """`stop` as a list: a string, or a list whose non-strings chat drops and completions
    reject (Ollama's two translations differ here)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    for v in value:
        if strict and not isinstance(v, str):
            kind = "float64" if isinstance(v, int | float) else _go_type(v)
            raise InvalidRequest(f"invalid type for 'stop' field: {kind}")
    return [v for v in value if isinstance(v, str)]


def _include_usage(f: Fields) -> bool:
    options = f.object("stream_options", "*openai.StreamOptions")
    return bool(options and options.bool("include_usage"))


def _usage(event: dict[str, Any]) -> dict[str, int]:
    prompt, completion = event.get("prompt_eval_count", 0), event.get("eval_count", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sampling_options(f: Fields) -> dict[str, Any]:
    """The options chat and completions share: temperature and top_p default to 1 (OpenAI's
    defaults, not the model's), and a given seed makes the run reproducible."""
    options: dict[str, Any] = {}
    max_tokens = f.int("max_tokens")
    if max_tokens is None:
        max_tokens = f.int("max_completion_tokens")  # refllama: the newer spelling too
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    temperature = f.float("temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    seed = f.int("seed")
    if seed is not None:
        options["seed"] = seed
    return options


# --------------------------------------------------------------------------------------------
# /v1/chat/completions


def image_data(url: Any) -> str:
    """A data URL's base64 payload (checked); remote URLs are refused as Ollama refuses them."""
    if not isinstance(url, str):
        raise InvalidRequest("invalid message format")
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "image URLs are not currently supported, please use base64 encoded data instead"
        )
    if url.startswith("data:;base64,"):
        data = url.removeprefix("data:;base64,")
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise InvalidRequest("invalid image input")
        data = url.removeprefix(prefix)
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise InvalidRequest("invalid image input") from None
    return data


def _tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) as native ones (arguments an object)."""
    native = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        try:
            arguments = json.loads(fn.get("arguments") or "")
        except (TypeError, json.JSONDecodeError):
            raise InvalidRequest("invalid tool call arguments") from None
        if not isinstance(arguments, dict):
            raise InvalidRequest("invalid tool call arguments")
        entry: dict[str, Any] = {"function": {"name": fn.get("name", ""), "arguments": arguments}}
        if call.get("id"):
            entry["id"] = call["id"]
        native.append(entry)
    return native


def _tool_name(messages: list[dict[str, Any]], call_id: str) -> str:
    """The function name of the latest assistant call with this id (last one wins)."""
    for msg in reversed(messages):
        for call in msg.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name", ""))
    return ""


def _messages(raw: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as native ones; each content part becomes its own native message."""
    for m in raw:
        if not isinstance(m, dict):
            raise InvalidRequest(
                f"json: cannot unmarshal {json_kind(m)} into Go value of type openai.Message"
            )
    out: list[dict[str, Any]] = []
    for m in raw:
        f = Fields(m, "Message")
        role = f.str("role") or ""
        reasoning = f.str("reasoning") or ""
        call_id = f.str("tool_call_id") or ""
        calls = f.list("tool_calls", "[]openai.ToolCall")
        tool_name = ""
        if role.lower() == "tool":
            tool_name = f.str("name") or (_tool_name(raw, call_id) if call_id else "")
        content = m.get("content")
        if isinstance(content, str):
            out.append(
                {"role": role, "content": content, "thinking": reasoning,
                 "tool_calls": _tool_calls(calls), "tool_name": tool_name,
                 "tool_call_id": call_id}
            )  # fmt: skip
        elif isinstance(content, list):
            for part in content:
                out.append({"role": role, **_content_part(part)})
            if out and calls:
                out[-1].update(
                    tool_calls=_tool_calls(calls), tool_name=tool_name, tool_call_id=call_id,
                    thinking=reasoning,
                )  # fmt: skip
        elif "tool_calls" in m and m["tool_calls"] is not None:
            out.append(
                {"role": role, "thinking": reasoning, "tool_calls": _tool_calls(calls),
                 "tool_call_id": call_id}
            )  # fmt: skip
        else:
            raise InvalidRequest(f"invalid message content type: {_go_type(content)}")
    return out


def _content_part(part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest("invalid message format")
    if part.get("type") == "text":
        if not isinstance(part.get("text"), str):
            raise InvalidRequest("invalid message format")
        return {"content": part["text"]}
    if part.get("type") == "image_url":
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        return {"images": [image_data(url)]}
    raise InvalidRequest("invalid message format")


def _format(f: Fields) -> Any:
    """`response_format` as native `format`: "json", a JSON schema, or None."""
    rf = f.object("response_format", "*openai.ResponseFormat")
    if rf is None:
        return None
    kind = (rf.str("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = rf.object("json_schema", "*openai.JsonSchema")
        return schema.get("schema") if schema is not None else None
    return None


def _think(f: Fields) -> bool | str | None:
    reasoning = f.object("reasoning", "*openai.Reasoning")
    return think_level(
        reasoning.str("effort") if reasoning is not None else f.str("reasoning_effort")
    )


def think_level(effort: str | None) -> bool | str | None:
    """A reasoning effort as the native `think` value (None when no effort is given)."""
    if not effort:
        return None
    if effort not in _EFFORT_THINK:
        raise InvalidRequest(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")'
        )
    return _EFFORT_THINK[effort]


def _tool_call_json(call: dict[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    return {
        "id": call.get("id", ""),
        "index": fn.get("index", 0),
        "type": "function",
        "function": {
            "name": fn["name"],
            "arguments": json.dumps(fn["arguments"], ensure_ascii=False, separators=(",", ":")),
        },
    }


class ChatCompletions:
    """One POST /v1/chat/completions: the native /api/chat body, and the way back."""

    kind = "chat"
    relax_thinking = False

    def __init__(self, raw: bytes) -> None:
        f = Fields(decode_object(raw, "openai.ChatCompletionRequest"), "ChatCompletionRequest")
        raw_messages = f.list("messages", "[]openai.Message")
        model = f.str("model") or ""
        self.stream = bool(f.bool("stream"))
        self.include_usage = _include_usage(f)
        if not raw_messages:
            raise InvalidRequest("[] is too short - 'messages'")
        options = _sampling_options(f)
        stops = _stops(f.get("stop"), strict=False)
        if stops is not None:
            options["stop"] = stops
        for key in ("frequency_penalty", "presence_penalty"):
            value = f.float(key)
            if value is not None:
                options[key] = value
        top_p = f.float("top_p")
        options["top_p"] = 1.0 if top_p is None else top_p
        self.native: dict[str, Any] = {
            "model": model,
            "messages": _messages(raw_messages),
            "format": _format(f),
            "options": options,
            "stream": self.stream,
            "tools": f.list("tools", "[]api.Tool"),
            "think": _think(f),
            "logprobs": bool(f.bool("logprobs")),
            "top_logprobs": f.int("top_logprobs") or 0,
            "_debug_render_only": bool(f.bool("_debug_render_only")),
            "trace": bool(f.bool("trace")),
        }
        self.id = f"chatcmpl-{random.randrange(999)}"
        self.created = int(time.time())  # one `created` for every chunk, as OpenAI stamps it
        self._first_sent = False
        self._tool_call_sent = False

    def _object(self, obj: str, model: str, choices: list[Any]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": model,
                "system_fingerprint": FINGERPRINT, "choices": choices}  # fmt: skip

    def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion object for the combined native event."""
        msg = event["message"]
        calls = [_tool_call_json(c) for c in msg.get("tool_calls", [])]
        message: dict[str, Any] = {"role": msg["role"], "content": msg["content"]}
        if msg.get("thinking"):
            message["reasoning"] = msg["thinking"]
        if calls:
            message["tool_calls"] = calls
        reason = event.get("done_reason") or None
        if reason == "stop" and calls:
            reason = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
        if event.get("logprobs"):
            choice["logprobs"] = {"content": event["logprobs"]}
        out = self._object("chat.completion", event["model"], [choice])
        out["usage"] = _usage(event)
        for key in ("_debug_info", "trace"):
            if key in event:
                out[key] = event[key]
        return out

    def frames(self, event: dict[str, Any]) -> bytes:
        """The SSE frames for one native event; the final one adds the finish chunk, the usage
        chunk when asked for, and `data: [DONE]`."""
        if "error" in event:
            return sse(error_body(500, event["error"]))
        msg, done = event["message"], event["done"]
        # The final native event usually carries no text: OpenAI goes straight to the finish
        # chunk then, unless nothing at all was sent yet (an empty completion opens with role).
        empty_trailer = (
            done and self._first_sent and not msg["content"] and not msg.get("thinking")
            and not msg.get("tool_calls") and not event.get("logprobs")
        )  # fmt: skip
        frames = []
        if not empty_trailer:
            frames += [sse(c) for c in self._chunks(event)]
            self._first_sent = True
        if done:
            reason = event.get("done_reason") or "stop"
            if reason == "stop" and self._tool_call_sent:
                reason = "tool_calls"
            finish = self._object(
                "chat.completion.chunk",
                event["model"],
                [{"index": 0, "delta": {}, "finish_reason": reason}],
            )
            frames.append(sse(finish))
            if self.include_usage:
                frames.append(sse({**finish, "choices": [], "usage": _usage(event)}))
            frames.append(sse("[DONE]"))
        return b"".join(frames)

    def _chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """One chunk, or two when one native event carries both thinking and an answer."""
        msg = event["message"]
        calls = [_tool_call_json(c) for c in msg.get("tool_calls", [])]
        role = {} if self._first_sent else {"role": "assistant"}
        answer: dict[str, Any] = {"content": msg["content"]}
        if calls:
            answer["tool_calls"] = calls
            self._tool_call_sent = True
        thinking = {"reasoning": msg["thinking"]} if msg.get("thinking") else {}
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        if event.get("logprobs"):
            choice["logprobs"] = {"content": event["logprobs"]}
        extra = {"trace": event["trace"]} if event.get("trace") else {}
        if thinking and (msg["content"] or calls):
            deltas = [{**role, **thinking}, answer]
        else:
            deltas = [{**role, **answer, **thinking}]
        chunks = []
        for i, delta in enumerate(deltas):
            c = {**choice, "delta": delta} if i == 0 else {"index": 0, "delta": delta,
                                                           "finish_reason": None}  # fmt: skip
            chunks.append({**self._object("chat.completion.chunk", event["model"], [c]), **extra})
        return chunks


# --------------------------------------------------------------------------------------------
# /v1/completions


class Completions:
    """One POST /v1/completions: the native /api/generate body, and the way back."""

    kind = "generate"
    relax_thinking = False

    def __init__(self, raw: bytes) -> None:
        f = Fields(decode_object(raw, "openai.CompletionRequest"), "CompletionRequest")
        options = _sampling_options(f)
        stops = _stops(f.get("stop"), strict=True)
        if stops is not None:
            options["stop"] = stops
        options["frequency_penalty"] = f.float("frequency_penalty") or 0.0
        options["presence_penalty"] = f.float("presence_penalty") or 0.0
        options["top_p"] = f.float("top_p") or 1.0  # Go's zero value means "unset" here
        logprobs = f.int("logprobs") or 0
        self.stream = bool(f.bool("stream"))
        self.include_usage = _include_usage(f)
        self.native: dict[str, Any] = {
            "model": f.str("model") or "",
            "prompt": f.str("prompt") or "",
            "options": options,
            "stream": self.stream,
            "suffix": f.str("suffix") or "",
            "logprobs": logprobs > 0,
            "top_logprobs": max(logprobs, 0),
            "_debug_render_only": bool(f.bool("_debug_render_only")),
            "trace": bool(f.bool("trace")),
        }
        self.id = f"cmpl-{random.randrange(999)}"

    def _object(self, event: dict[str, Any]) -> dict[str, Any]:
        choice = {"text": event["response"], "index": 0,
                  "finish_reason": event.get("done_reason") or None}  # fmt: skip
        out = {"id": self.id, "object": "text_completion", "created": int(time.time()),
               "model": event["model"], "system_fingerprint": FINGERPRINT,
               "choices": [choice]}  # fmt: skip
        if event.get("trace"):
            out["trace"] = event["trace"]
        return out

    def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        return {**self._object(event), "usage": _usage(event)}

    def frames(self, event: dict[str, Any]) -> bytes:
        """One chunk per native event; with include_usage every chunk carries zero usage and a
        last chunk without choices carries the counts (Ollama's shape), then `[DONE]`."""
        if "error" in event:
            return sse(error_body(500, event["error"]))
        chunk = self._object(event)
        if self.include_usage:
            chunk["usage"] = _usage({})
        frames = [sse(chunk)]
        if event["done"]:
            if self.include_usage:
                frames.append(sse({**chunk, "choices": [], "usage": _usage(event)}))
            frames.append(sse("[DONE]"))
        return b"".join(frames)


# --------------------------------------------------------------------------------------------
# /v1/embeddings and /v1/models


class Embeddings:
    """One POST /v1/embeddings: the native /api/embed body, and the embedding list back."""

    def __init__(self, raw: bytes) -> None:
        f = Fields(decode_object(raw, "openai.EmbedRequest"), "EmbedRequest")
        self.model = f.str("model") or ""
        self.encoding_format = f.str("encoding_format") or ""
        if self.encoding_format.lower() not in ("", "float", "base64"):
            raise InvalidRequest(
                f"Invalid value for 'encoding_format' = {self.encoding_format}. "
                "Supported values: ['float', 'base64']."
            )
        inputs = f.get("input")
        if inputs == "":
            inputs = [""]
        if inputs is None or inputs == []:
            raise InvalidRequest("invalid input")
        self.native = {"model": self.model, "input": inputs, "dimensions": f.int("dimensions")}

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The embedding list for the native /api/embed body; base64 is little-endian float32."""
        data = []
        for i, vector in enumerate(body["embeddings"]):
            embedding: Any = vector
            if self.encoding_format.lower() == "base64":
                embedding = base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
            data.append({"object": "embedding", "embedding": embedding, "index": i})
        count = body.get("prompt_eval_count", 0)
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"prompt_tokens": count, "total_tokens": count}}  # fmt: skip


def model_entry(model_id: str, record: ModelRecord) -> dict[str, Any]:
    """One model object: `owned_by` is the name's namespace, `created` the manifest's mtime."""
    return {
        "id": model_id,
        "object": "model",
        "created": record.modified_ns // 1_000_000_000,
        "owned_by": parse_name(model_id).namespace,
    }


def model_list(records: list[ModelRecord]) -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(r.name, r) for r in records]}
