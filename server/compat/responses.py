"""OpenAI's Responses API (POST /v1/responses) as Ollama translates it (docs/compat.md; Ollama's
openai/responses.go and middleware/openai.go).

Stateless only, as in Ollama: `input` (a string, or message / function_call /
function_call_output / reasoning items) and `instructions` become native /api/chat messages;
`tools`, `text.format` (json_schema), `reasoning.effort`, `temperature`, `top_p` and
`max_output_tokens` become the native fields. `answer(event)` is the response object for the
combined native event; `frames(event)` the typed server-sent events for one native event
(response.created, response.in_progress, output items with their deltas, response.completed),
each carrying its `sequence_number`.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from server.compat.fields import Fields, decode_object, json_kind, sse
from server.compat.openai import image_data, think_level
from server.errors import InvalidRequest

_RAW_ITEMS = "[]json.RawMessage"
_TYPE_ROLE = 'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }'


def _not_items(what: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"{what} must be a string or array: json: cannot unmarshal {json_kind(value)} into Go "
        f"value of type {_RAW_ITEMS}"
    )


def _contents(raw: list[Any], where: str) -> tuple[str, list[str]]:
    """Content parts as one text (input_text and output_text joined) and the images; a file
    is refused and an image without `image_url` skipped, as Ollama does."""
    text, images = [], []
    for j, part in enumerate(raw):
        if not isinstance(part, dict):
            raise InvalidRequest(
                f"{where}[{j}]: json: cannot unmarshal {json_kind(part)} into Go value of type "
                'struct { Type string "json:\\"type\\"" }'
            )
        f = Fields(part, "ResponsesContent")
        kind = f.str("type") or ""
        if kind in ("input_text", "output_text"):
            text.append(f.str("text") or "")
        elif kind == "input_image":
            url = f.str("image_url")
            if url:
                images.append(image_data(url))
        elif kind == "input_file":
            raise InvalidRequest("file inputs are not currently supported")
        else:
            raise InvalidRequest(f"{where}[{j}]: unknown content type: {kind}")
    return "".join(text), images


def _content(value: Any, where: str, what: str) -> tuple[str, list[str]]:
    """A message's `content` or an output's `output`: a string or a list of content parts."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise _not_items(what, value)
    return _contents(value, where)


def _arguments(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"failed to parse function call arguments: {e.msg}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            "failed to parse function call arguments: json: cannot unmarshal "
            f"{json_kind(value)} into Go value of type api.ToolCallFunctionArguments"
        )
    return value


def _messages(f: Fields) -> list[dict[str, Any]]:
    """`instructions` and `input` as native messages.

    A reasoning item's text becomes the thinking of the next assistant message or call (or a
    message of its own at the end); a function_call joins a directly preceding assistant
    message; an assistant message replayed between a call and its output joins the call's
    message, so the tool result follows the call it answers.
    """
    messages: list[dict[str, Any]] = []
    instructions = f.str("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    raw = f.get("input")
    if raw is None:
        return messages
    if isinstance(raw, str):
        if raw:
            messages.append({"role": "user", "content": raw})
        return messages
    if not isinstance(raw, list):
        raise _not_items("input", raw)
    items = [_item(i, item) for i, item in enumerate(raw)]
    pending = ""
    for i, (kind, item) in enumerate(items):
        if kind == "reasoning":
            pending = item["thinking"]
        elif kind == "message":
            msg = item
            if msg["role"] == "assistant" and pending:
                msg["thinking"], pending = pending, ""
            answered = items[i + 1][1]["tool_call_id"] if (
                i + 1 < len(items) and items[i + 1][0] == "function_call_output"
            ) else ""  # fmt: skip
            last = messages[-1] if messages else None
            if (
                msg["role"] == "assistant" and answered and last is not None
                and last["role"] == "assistant"
                and any(c.get("id") == answered for c in last.get("tool_calls", []))
            ):  # fmt: skip
                if last.get("content") and msg["content"]:
                    last["content"] += "\n"
                last["content"] = last.get("content", "") + msg["content"]
                last["images"] = last.get("images", []) + msg["images"]
                if msg.get("thinking"):
                    last["thinking"] = msg["thinking"]
                continue
            messages.append(msg)
        elif kind == "function_call":
            if messages and messages[-1]["role"] == "assistant":
                target = messages[-1]
                target.setdefault("tool_calls", []).append(item)
            else:
                target = {"role": "assistant", "content": "", "tool_calls": [item]}
                messages.append(target)
            if pending:
                target["thinking"], pending = pending, ""
        elif kind == "function_call_output":
            messages.append(item)
    if pending:
        messages.append({"role": "assistant", "content": "", "thinking": pending})
    return messages


def _item(i: int, raw: Any) -> tuple[str, dict[str, Any]]:
    """One input item as (kind, native message or call); web_search_call items are history
    metadata and carry nothing the model sees."""
    where = f"input[{i}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(
            f"{where}: json: cannot unmarshal {json_kind(raw)} into Go value of type {_TYPE_ROLE}"
        )
    f = Fields(raw, "ResponsesInputItem")
    kind, role = f.str("type") or "", f.str("role") or ""
    if not kind and role:
        kind = "message"
    if kind == "message":
        text, images = _content(raw.get("content"), f"{where}: content", f"{where}: content")
        return kind, {"role": role, "content": text, "images": images}
    if kind == "function_call":
        call = {"function": {"name": f.str("name") or "",
                             "arguments": _arguments(f.str("arguments") or "")}}  # fmt: skip
        if f.str("call_id"):
            call["id"] = f.str("call_id")
        return kind, call
    if kind == "function_call_output":
        text, images = _content(raw.get("output"), f"{where}: output", f"{where}: output")
        return kind, {"role": "tool", "content": text, "images": images,
                      "tool_call_id": f.str("call_id") or ""}  # fmt: skip
    if kind == "reasoning":
        return kind, {"thinking": f.str("encrypted_content") or ""}
    if kind == "web_search_call":
        return kind, {}
    if not kind:
        raise InvalidRequest(f"{where}: input item missing required 'type' field")
    raise InvalidRequest(f'{where}: unknown input item type: "{kind}"')


def _tools(raw: list[Any], prefix: str = "") -> list[dict[str, Any]]:
    """Responses tools (flat `name`, `parameters`) as native function tools; a namespace's
    members become tools named `namespace.member`."""
    tools = []
    for t in raw:
        if not isinstance(t, dict):
            raise InvalidRequest(
                f"json: cannot unmarshal {json_kind(t)} into Go struct field "
                "ResponsesRequest.tools of type openai.ResponsesTool"
            )
        f = Fields(t, "ResponsesTool")
        kind, name = f.str("type") or "", f.str("name") or ""
        if kind == "web_search":
            raise InvalidRequest(
                "the web_search tool is not supported: refllama runs no web search"
            )
        if kind == "namespace":
            qualified = f"{name}." if name else ""
            tools += _tools(f.list("tools", "[]openai.ResponsesTool"), prefix + qualified)
            continue
        parameters = f.object("parameters", "map[string]interface {}")
        function: dict[str, Any] = {"name": name if name.startswith(prefix) else prefix + name,
                                    "description": f.str("description") or ""}  # fmt: skip
        if parameters is not None:
            function["parameters"] = parameters.body
        tools.append({"type": kind, "function": function})
    return tools


def _echo_tool(t: dict[str, Any]) -> dict[str, Any]:
    out = {"type": t.get("type", ""), "name": t.get("name", ""),
           "description": t.get("description"), "strict": t.get("strict"),
           "parameters": t.get("parameters")}  # fmt: skip
    if t.get("tools"):
        out["tools"] = [_echo_tool(m) for m in t["tools"] if isinstance(m, dict)]
    return out


def _arguments_json(call: dict[str, Any]) -> str:
    return json.dumps(call["function"]["arguments"], ensure_ascii=False, separators=(",", ":"))


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_text_part(text)] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _reasoning_item(item_id: str, thinking: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": thinking}],
            "encrypted_content": thinking}  # fmt: skip


def _usage(event: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = event.get("prompt_eval_count", 0), event.get("eval_count", 0)
    return {"input_tokens": prompt, "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip


class Responses:
    """One POST /v1/responses: the native /api/chat body, and the way back."""

    kind = "chat"
    relax_thinking = False

    def __init__(self, raw: bytes) -> None:
        f = Fields(decode_object(raw, "openai.ResponsesRequest"), "ResponsesRequest")
        self.model = f.str("model") or ""
        self.stream = bool(f.bool("stream"))
        reasoning = f.object("reasoning", "openai.ResponsesReasoning")
        self._effort = (reasoning.str("effort") if reasoning is not None else None) or ""
        self._summary = (reasoning.str("summary") if reasoning is not None else None) or ""
        text = f.object("text", "*openai.ResponsesText")
        fmt = text.object("format", "*openai.ResponsesTextFormat") if text is not None else None
        self._format = {"type": "text"}
        schema = None
        if fmt is not None:
            self._format = {"type": fmt.str("type") or ""}
            if fmt.str("name"):
                self._format["name"] = fmt.str("name")
            if fmt.get("schema") is not None:
                self._format["schema"] = fmt.get("schema")
            if fmt.bool("strict") is not None:
                self._format["strict"] = fmt.bool("strict")
            if self._format["type"] == "json_schema":
                schema = fmt.get("schema")
        options: dict[str, Any] = {}
        temperature, top_p = f.float("temperature"), f.float("top_p")
        options["temperature"] = 1.0 if temperature is None else temperature
        if top_p is not None:  # unlike chat completions, the model's own top_p otherwise
            options["top_p"] = top_p
        self._max_output_tokens = f.int("max_output_tokens")
        if self._max_output_tokens is not None:
            options["num_predict"] = self._max_output_tokens
        raw_tools = f.list("tools", "[]openai.ResponsesTool")
        self.native: dict[str, Any] = {
            "model": self.model,
            "messages": _messages(f),
            "options": options,
            "stream": self.stream,
            "tools": _tools(raw_tools),
            "format": schema,
            "think": think_level(self._effort),
            "trace": bool(f.bool("trace")),
        }
        self._echo = {
            "instructions": f.str("instructions") or None,
            "tools": [_echo_tool(t) for t in raw_tools],
            "truncation": f.str("truncation") or "disabled",
            "top_p": 1.0 if top_p is None else top_p,
            "temperature": options["temperature"],
            "background": bool(f.bool("background")),
        }
        self.id = f"resp_{random.randrange(999999)}"
        self._item_id = f"msg_{random.randrange(999999)}"
        self.created = int(time.time())
        # stream state
        self._sequence = 0
        self._started = False
        self._index = 0  # output index of the next item
        self._done_items: list[dict[str, Any]] = []
        self._reasoning_id: str | None = None
        self._thinking = ""
        self._text_open = False
        self._text = ""
        self._calls_sent = False
        self._trace: list[dict[str, Any]] = []

    def _response(self, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        reasoning = None
        if self._effort or self._summary:
            reasoning = {"effort": self._effort or None, "summary": self._summary or None}
        e = self._echo
        return {
            "id": self.id, "object": "response", "created_at": self.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status, "incomplete_details": None, "model": self.model,
            "previous_response_id": None, "instructions": e["instructions"], "output": output,
            "error": None, "tools": e["tools"], "tool_choice": "auto",
            "truncation": e["truncation"], "parallel_tool_calls": True,
            "text": {"format": self._format}, "top_p": e["top_p"], "presence_penalty": 0,
            "frequency_penalty": 0, "top_logprobs": 0, "temperature": e["temperature"],
            "reasoning": reasoning, "usage": usage, "max_output_tokens": self._max_output_tokens,
            "max_tool_calls": None, "store": False, "background": e["background"],
            "service_tier": "default", "metadata": {}, "safety_identifier": None,
            "prompt_cache_key": None,
        }  # fmt: skip

    def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        """The response object for the combined native event: a reasoning item when the model
        thought, then one function_call item per call, or else the message (Ollama drops the
        text of an answer that calls tools)."""
        msg = event["message"]
        output: list[dict[str, Any]] = []
        if msg.get("thinking"):
            output.append(_reasoning_item(f"rs_{self.id}", msg["thinking"]))
        calls = msg.get("tool_calls", [])
        for i, c in enumerate(calls):
            output.append({"id": f"fc_{self.id}_{i}", "type": "function_call",
                           "status": "completed", "call_id": c.get("id", ""),
                           "name": c["function"]["name"],
                           "arguments": _arguments_json(c)})  # fmt: skip
        if not calls:
            output.append(_message_item(self._item_id, msg["content"]))
        out = self._response("completed", output, _usage(event))
        if event.get("trace"):
            out["trace"] = event["trace"]
        return out

    # ----------------------------------------------------------------------------------------
    # Streaming

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return event

    def frames(self, event: dict[str, Any]) -> bytes:
        """The events for one native event. A native event's sampler trace rides on the last
        event it produced (or the next one, when its text was held back)."""
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(
                self._event("response.created", response=self._response("in_progress", [], None))
            )
            out.append(self._event("response.in_progress",
                                   response=self._response("in_progress", [], None)))  # fmt: skip
        if "error" in event:
            failed = {**self._response("failed", [], None),
                      "error": {"code": "server_error", "message": event["error"]}}  # fmt: skip
            out.append(self._event("response.failed", response=failed))
            return b"".join(sse(e, event=e["type"]) for e in out)
        msg = event["message"]
        if msg.get("thinking"):
            out += self._thinking_events(msg["thinking"])
        calls = msg.get("tool_calls", [])
        if calls:
            out += self._close_reasoning() + self._close_text() + self._call_events(calls)
            self._calls_sent = True
        elif msg["content"] and not self._calls_sent:
            out += self._text_events(msg["content"])
        if event["done"]:
            out += self._close_reasoning() + self._close_text()
            out.append(self._event("response.completed", response=self._response(
                "completed", self._done_items, _usage(event))))  # fmt: skip
        self._trace += event.get("trace") or []
        if out and self._trace:
            out[-1]["trace"], self._trace = self._trace, []
        return b"".join(sse(e, event=e["type"]) for e in out)

    def _thinking_events(self, thinking: str) -> list[dict[str, Any]]:
        out = []
        if self._reasoning_id is None:
            self._reasoning_id = f"rs_{random.randrange(999999)}"
            out.append(self._event("response.output_item.added", output_index=self._index,
                                   item={"id": self._reasoning_id, "type": "reasoning",
                                         "summary": []}))  # fmt: skip
        self._thinking += thinking
        out.append(self._event("response.reasoning_summary_text.delta",
                               item_id=self._reasoning_id, output_index=self._index,
                               summary_index=0, delta=thinking))  # fmt: skip
        return out

    def _close_reasoning(self) -> list[dict[str, Any]]:
        if self._reasoning_id is None:
            return []
        item = _reasoning_item(self._reasoning_id, self._thinking)
        out = [
            self._event("response.reasoning_summary_text.done", item_id=self._reasoning_id,
                        output_index=self._index, summary_index=0, text=self._thinking),
            self._event("response.output_item.done", output_index=self._index, item=item),
        ]  # fmt: skip
        self._done_items.append(item)
        self._reasoning_id, self._thinking = None, ""
        self._index += 1
        return out

    def _text_events(self, text: str) -> list[dict[str, Any]]:
        out = self._close_reasoning()
        if not self._text_open:
            self._text_open = True
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=self._index,
                    item=_message_item(self._item_id, "", "in_progress"),
                )
            )
            out.append(self._event("response.content_part.added", item_id=self._item_id,
                                   output_index=self._index, content_index=0,
                                   part=_text_part("")))  # fmt: skip
        self._text += text
        out.append(self._event("response.output_text.delta", item_id=self._item_id,
                               output_index=self._index, content_index=0, delta=text,
                               logprobs=[]))  # fmt: skip
        return out

    def _close_text(self) -> list[dict[str, Any]]:
        if not self._text_open:
            return []
        item = _message_item(self._item_id, self._text)
        where = {"item_id": self._item_id, "output_index": self._index, "content_index": 0}
        out = [
            self._event("response.output_text.done", **where, text=self._text, logprobs=[]),
            self._event("response.content_part.done", **where, part=_text_part(self._text)),
            self._event("response.output_item.done", output_index=self._index, item=item),
        ]
        self._done_items.append(item)
        self._text_open, self._text = False, ""
        self._index += 1
        return out

    def _call_events(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(calls):
            item_id = f"fc_{random.randrange(999999)}_{i}"
            arguments = _arguments_json(c)
            item = {"id": item_id, "type": "function_call", "status": "completed",
                    "call_id": c.get("id", ""), "name": c["function"]["name"],
                    "arguments": arguments}  # fmt: skip
            where = {"item_id": item_id, "output_index": self._index}
            out += [
                self._event("response.output_item.added", output_index=self._index,
                            item={**item, "status": "in_progress", "arguments": ""}),
                self._event("response.function_call_arguments.delta", **where, delta=arguments),
                self._event("response.function_call_arguments.done", **where,
                            arguments=arguments),
                self._event("response.output_item.done", output_index=self._index, item=item),
            ]  # fmt: skip
            self._done_items.append(item)
            self._index += 1
        return out
