"""Anthropic's Messages API as Ollama translates it (docs/compat.md; Ollama's
anthropic/anthropic.go and middleware/anthropic.go).

`Messages` reads the Anthropic body and builds the native /api/chat body; `answer(event)` is the
message object for the combined native event, `frames(event)` the stream events for one native
event (message_start, content blocks for thinking, text and each tool_use, message_delta with
the stop reason and usage, message_stop).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from server.compat.fields import Fields, decode_object, json_kind, sse
from server.errors import InvalidRequest

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object, with a request id as Ollama adds one."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message},
            "request_id": _id("req")}  # fmt: skip


def _image(source: Any) -> str:
    if not isinstance(source, dict):
        raise InvalidRequest("invalid image source")
    if source.get("type") != "base64":
        raise InvalidRequest(
            f"invalid image source type: {source.get('type', '')}. "
            "Only base64 images are supported."
        )
    data = source.get("data", "")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise InvalidRequest(f"invalid base64 image data: {e}") from None
    return str(data)


def _tool_result(content: Any) -> tuple[str, list[str]]:
    """A tool_result's content (a string or text/image blocks) as text and images."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text, images = [], []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "image":
            if not isinstance(block.get("source"), dict):
                raise InvalidRequest("invalid tool_result image source")
            images.append(_image(block["source"]))
    return "".join(text), images


def _message(msg: Any) -> list[dict[str, Any]]:
    """One Anthropic message as native messages: tool results become `tool` messages (before
    the user's text, after an assistant's), the rest one message with text, images, calls."""
    if not isinstance(msg, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(msg)} into Go value of type anthropic.MessageParam"
        )
    role = str(msg.get("role", "")).lower()
    content = msg.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(blocks, list):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(content)} into Go struct field "
            "MessageParam.content of type []anthropic.ContentBlock"
        )
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    thinking = ""
    for block in blocks:
        if not isinstance(block, dict):
            raise InvalidRequest(
                f"json: cannot unmarshal {json_kind(block)} into Go value of type "
                "anthropic.ContentBlock"
            )
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "image":
            if block.get("source") is None:
                raise InvalidRequest("invalid image source")
            images.append(_image(block["source"]))
        elif kind == "tool_use":
            if not block.get("id"):
                raise InvalidRequest("tool_use block missing required 'id' field")
            if not block.get("name"):
                raise InvalidRequest("tool_use block missing required 'name' field")
            arguments = block.get("input") or {}
            if not isinstance(arguments, dict):
                raise InvalidRequest("tool_use input must be an object")
            calls.append({"id": block["id"], "function": {"name": block["name"],
                                                          "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result":
            result, result_images = _tool_result(block.get("content"))
            results.append({"role": "tool", "content": result, "images": result_images,
                            "tool_call_id": str(block.get("tool_use_id", ""))})  # fmt: skip
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking = block["thinking"]
    out = results if role == "user" else []
    if text or images or calls or thinking:
        out.append({"role": role, "content": "".join(text), "images": images,
                    "tool_calls": calls, "thinking": thinking})  # fmt: skip
    if role != "user":
        out += results
    return out


def _system(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        value = "".join(
            b["text"]
            for b in value
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    if isinstance(value, str) and value:
        return [{"role": "system", "content": value}]
    return []


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(tool)} into Go value of type anthropic.Tool"
        )
    schema = tool.get("input_schema")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(f'invalid input_schema for tool "{tool.get("name", "")}"')
    function: dict[str, Any] = {"name": tool.get("name", ""),
                                "description": tool.get("description", "")}  # fmt: skip
    if schema is not None:
        function["parameters"] = schema
    return {"type": "function", "function": function}


def _think(f: Fields) -> bool | str | None:
    """`thinking.type` enabled/disabled wins; else `output_config.effort` gives a level."""
    thinking = f.object("thinking", "*anthropic.ThinkingConfig")
    kind = thinking.str("type") if thinking is not None else None
    if kind == "enabled":
        return True
    if kind == "disabled":
        return False
    config = f.object("output_config", "*anthropic.OutputConfig")
    effort = ((config.str("effort") if config is not None else None) or "").strip().lower()
    effort = "high" if effort == "xhigh" else effort
    return effort if effort in ("high", "medium", "low", "max") else None


def _stop_reason(reason: str, has_calls: bool) -> str | None:
    if has_calls:
        return "tool_use"
    if reason == "stop":
        return "end_turn"
    if reason == "length":
        return "max_tokens"
    return "stop_sequence" if reason else None


class Messages:
    """One POST /v1/messages: the native /api/chat body, and the way back."""

    kind = "chat"
    # A thinking request to a model without thinking is answered without it, as Ollama does
    # for Anthropic clients (coding agents ask for thinking from every model).
    relax_thinking = True

    def __init__(self, raw: bytes) -> None:
        f = Fields(decode_object(raw, "anthropic.MessagesRequest"), "MessagesRequest")
        model = f.str("model") or ""
        max_tokens = f.int("max_tokens") or 0
        raw_messages = f.list("messages", "[]anthropic.MessageParam")
        if not model:
            raise InvalidRequest("model is required")
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens is required and must be positive")
        if not raw_messages:
            raise InvalidRequest("messages is required")
        messages = _system(f.get("system"))
        for m in raw_messages:
            messages += _message(m)
        options: dict[str, Any] = {"num_predict": max_tokens}
        for key in ("temperature", "top_p"):
            value = f.float(key)
            if value is not None:
                options[key] = value
        top_k = f.int("top_k")
        if top_k is not None:
            options["top_k"] = top_k
        stops = f.list("stop_sequences", "[]string")
        for stop in stops:
            if not isinstance(stop, str):
                raise InvalidRequest(
                    f"json: cannot unmarshal {json_kind(stop)} into Go struct field "
                    "MessagesRequest.stop_sequences of type string"
                )
        if stops:
            options["stop"] = stops
        self.stream = bool(f.bool("stream"))
        self.model = model
        self.native: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "options": options,
            "stream": self.stream,
            "tools": [_tool(t) for t in f.list("tools", "[]anthropic.Tool")],
            "think": _think(f),
            "trace": bool(f.bool("trace")),
        }
        self.id = _id("msg")
        self._started = False
        self._index = 0
        self._open: str | None = None  # the kind of content block now open
        self._thinking_done = False
        self._calls_sent: set[str] = set()

    def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        """The message object for the combined native event."""
        msg = event["message"]
        content: list[dict[str, Any]] = []
        if msg.get("thinking"):
            content.append({"type": "thinking", "thinking": msg["thinking"]})
        if msg["content"]:
            content.append({"type": "text", "text": msg["content"]})
        calls = msg.get("tool_calls", [])
        for c in calls:
            content.append({"type": "tool_use", "id": c.get("id", ""),
                            "name": c["function"]["name"],
                            "input": c["function"]["arguments"]})  # fmt: skip
        out: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant",
                               "model": event["model"], "content": content}  # fmt: skip
        reason = _stop_reason(event.get("done_reason", ""), bool(calls))
        if reason:
            out["stop_reason"] = reason
        out["usage"] = {"input_tokens": event.get("prompt_eval_count", 0),
                        "output_tokens": event.get("eval_count", 0)}  # fmt: skip
        if event.get("trace"):
            out["trace"] = event["trace"]
        return out

    def _event(self, kind: str, **data: Any) -> bytes:
        return sse({"type": kind, **data}, event=kind)

    def _close(self) -> bytes:
        """Stop the open content block (if any); the next one takes the next index."""
        if self._open is None:
            return b""
        frame = self._event("content_block_stop", index=self._index)
        self._index += 1
        if self._open == "thinking":
            self._thinking_done = True
        self._open = None
        return frame

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        self._open = kind
        return self._event("content_block_start", index=self._index, content_block=block)

    def frames(self, event: dict[str, Any]) -> bytes:
        if "error" in event:
            return self._event("error", error=error_body(500, event["error"])["error"])
        frames = []
        if not self._started:
            self._started = True
            usage = {"input_tokens": event.get("prompt_eval_count", 0), "output_tokens": 0}
            frames.append(self._event(
                "message_start",
                message={"id": self.id, "type": "message", "role": "assistant",
                         "model": self.model, "content": [], "usage": usage},
            ))  # fmt: skip
        msg = event["message"]
        if msg.get("thinking") and not self._thinking_done:
            if self._open != "thinking":
                frames += [self._close(), self._start("thinking", {"type": "thinking",
                                                                   "thinking": ""})]  # fmt: skip
            delta = {"type": "thinking_delta", "thinking": msg["thinking"]}
            frames.append(self._event("content_block_delta", index=self._index, delta=delta))
        if msg["content"]:
            if self._open != "text":
                frames += [self._close(), self._start("text", {"type": "text", "text": ""})]
            delta = {"type": "text_delta", "text": msg["content"]}
            frames.append(self._event("content_block_delta", index=self._index, delta=delta))
        for call in msg.get("tool_calls", []):
            call_id = call.get("id", "")
            if call_id in self._calls_sent:
                continue
            self._calls_sent.add(call_id)
            fn = call["function"]
            block = {"type": "tool_use", "id": call_id, "name": fn["name"], "input": {}}
            arguments = json.dumps(fn["arguments"], ensure_ascii=False, separators=(",", ":"))
            delta = {"type": "input_json_delta", "partial_json": arguments}
            frames += [
                self._close(),
                self._start("tool_use", block),
                self._event("content_block_delta", index=self._index, delta=delta),
                self._close(),
            ]
        if event["done"]:
            frames.append(self._close())
            reason = _stop_reason(event.get("done_reason", ""), bool(self._calls_sent))
            usage = {"input_tokens": event.get("prompt_eval_count", 0),
                     "output_tokens": event.get("eval_count", 0)}  # fmt: skip
            frames.append(self._event("message_delta", delta={"stop_reason": reason},
                                      usage=usage))  # fmt: skip
            frames.append(self._event("message_stop"))
        return b"".join(frames)
