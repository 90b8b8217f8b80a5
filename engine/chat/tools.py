"""Tool calls: the tag a template uses, and parsing model output into calls.

Follows Ollama `tools/template.go` (tag derivation, spec ollama-api.md §7.4), `tools/tools.go`
(the streaming parser, §7.5) and the per-piece event logic of `server/routes.go` (§7.6).
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.chat.gotemplate import Action, Branch, Field, Node, Text
from engine.chat.thinking import GO_SPACE, ThinkingParser


@dataclass(frozen=True)
class ToolCall:
    """One call: `{"id":…,"function":{"index":…,"name":…,"arguments":{…}}}` on the wire."""

    name: str
    arguments: dict[str, Any]
    index: int = 0
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        """The API object; `id` is omitted when empty (Ollama's omitempty)."""
        fn = {"index": self.index, "name": self.name, "arguments": self.arguments}
        return {"id": self.id, "function": fn} if self.id else {"function": fn}


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_call_id(rng: random.Random | None = None) -> str:
    """`call_` plus 8 random characters from [a-z0-9], as Ollama's toolCallId."""
    r = rng or random.SystemRandom()
    return "call_" + "".join(r.choice(_ID_ALPHABET) for _ in range(8))


# ---------------------------------------------------------------- the tag


def _mentions_tool_calls(n: Branch) -> bool:
    return any(
        isinstance(a, Field) and "ToolCalls" in a.idents for c in n.pipe.cmds for a in c.args
    )


def _find_tool_call_if(nodes: Sequence[Node]) -> Branch | None:
    for n in nodes:
        if isinstance(n, Branch):
            if n.kind == "if" and _mentions_tool_calls(n):
                return n
            found = _find_tool_call_if(n.body) or _find_tool_call_if(n.else_body or [])
            if found is not None:
                return found
    return None


def _find_text(nodes: Sequence[Node]) -> Text | None:
    """First non-blank text, depth first; an action or a text-less block ends the search."""
    for n in nodes:
        if isinstance(n, Text):
            if n.text.strip(GO_SPACE):
                return n
        elif isinstance(n, Branch):
            return _find_text(n.body) or _find_text(n.else_body or [])
        elif isinstance(n, Action):
            return None
    return None


def tool_call_tag(nodes: Sequence[Node]) -> str:
    """The text that starts a tool call in model output, from the `{{ if .ToolCalls }}` block.

    The first non-blank text inside that block, cut before any `{` and trimmed; `{` when there is
    no such block or text (spec §7.4).
    """
    block = _find_tool_call_if(nodes)
    text = _find_text(block.body) if block is not None else None
    if text is None:
        return "{"
    tag = text.text.replace("\r\n", "\n").partition("{")[0].strip(GO_SPACE)
    return tag or "{"


# ---------------------------------------------------------------- the parser


def _go_number(text: str) -> int | float:
    """A JSON number as Go decodes it into `any` (float64), kept as int when integral."""
    f = float(text)
    if math.isinf(f):
        raise ValueError(f"number {text} out of range")
    return int(f) if f.is_integer() and abs(f) < 1e21 else f


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")


def _loads_object(text: str) -> dict[str, Any] | None:
    try:
        v = json.loads(
            text, parse_int=_go_number, parse_float=_go_number, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, dict) else None


def _unquoted(text: str) -> Iterator[tuple[int, str]]:
    """(index, char) of text's characters outside JSON strings, skipping quotes, backslashes
    and the character each backslash escapes (inside or outside a string)."""
    in_string, escaped = False, False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            in_string = not in_string
        elif not in_string:
            yield i, c


def _json_objects(buf: str) -> Iterator[tuple[str, int]]:
    """Balanced top-level `{…}` spans of buf (string-aware), as (text, index of the `}`)."""
    start, depth = -1, 0
    for i, c in _unquoted(buf):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and start != -1:
                yield buf[start : i + 1], i
                start = -1
            depth = max(depth, 0)


def _arguments_in(obj: Mapping[str, Any], tool: str) -> tuple[dict[str, Any] | None, bool]:
    """(arguments, found) by Ollama's findObject rules; found with None means "no call"."""

    def as_map(v: Any) -> dict[str, Any] | None:
        if isinstance(v, dict):
            return v
        if isinstance(v, str):
            return _loads_object(v)
        return None

    if "name" in obj:
        for key in ("arguments", "parameters"):
            args = as_map(obj.get(key))
            if args is not None:
                return args, True
        return None, True
    args = as_map(obj.get(tool))
    if args is not None:
        return args, True
    # Ollama ranges over a Go map here (random order); we search in the object's key order.
    for v in obj.values():
        children = [v] if isinstance(v, dict) else v if isinstance(v, list) else []
        for child in (c for c in children if isinstance(c, dict)):
            args, found = _arguments_in(child, tool)
            if found:
                return args, True
    return None, False


class ToolCallParser:
    """Streams model text and pulls out tool calls (spec §7.5).

    `add(text)` returns (calls, content) for each piece; `content()` gives the leftover content at
    the end of generation. Call indexes count from 0 per parser; ids are left empty (the server
    assigns them when it emits an event).
    """

    def __init__(self, tag: str, tool_names: Sequence[str], *, bare_json: bool = False) -> None:
        """`bare_json`: with a tag other than `{`/`[`, output whose first non-blank character is
        `{` is also parsed as calls, as if the tag were `{` (small models often drop the tags
        their template asks for). Off for Ollama's Go templates, which never do this."""
        self.tag = tag
        self.names = list(tool_names)
        self.state = "looking"  # "looking" for the tag, "calling", or "done" (pass through)
        self.buffer = ""
        self.n = 0
        self.bare_json = bare_json and not self.json_tag

    @property
    def json_tag(self) -> bool:
        return self.tag in ("{", "[")

    def add(self, text: str) -> tuple[list[ToolCall], str]:
        if self.state == "done":
            return [], text
        self.buffer += text
        content = ""
        if self.bare_json:
            start = self.buffer.lstrip(GO_SPACE)
            if not start:
                return [], ""  # only blanks so far: the first character decides
            self.bare_json = False
            if start.startswith("{"):
                self.tag = "{"
        if self.state == "looking":
            i, found = self._find_tag()
            if i == -1:
                content, self.buffer = self.buffer, ""
            else:
                content, self.buffer = self.buffer[:i], self.buffer[i:]
            if self.json_tag and content.strip(GO_SPACE):
                # JSON-style calls are only recognised as the first non-blank output
                self.state = "done"
                rest, self.buffer = self.buffer, ""
                return [], content + rest
            if not found:
                return [], content
            self.state = "calling"
        calls = []
        while (call := self._next_call()) is not None:
            calls.append(call)
        if self._closed():
            self.state = "done"
            content, self.buffer = self.buffer, ""
        return calls, content

    def content(self) -> str:
        """Text still held at the end of generation that is returned as content."""
        if self.n > 0 or not (self.json_tag or self.bare_json):
            return ""
        return self.buffer

    def _find_tag(self) -> tuple[int, bool]:
        i = self.buffer.find(self.tag)
        if i >= 0:
            return i, True
        for k in range(min(len(self.buffer), len(self.tag)), 0, -1):
            if self.buffer.endswith(self.tag[:k]):
                return len(self.buffer) - k, False
        return -1, False

    def _find_tool(self) -> tuple[str | None, int]:
        """(earliest declared tool name in the buffer, end of that name); longer wins ties."""
        buf = self.buffer
        if not buf:
            return None, 0
        longest = max((len(n) for n in self.names), default=0)
        for k in range(1, min(len(buf), longest) + 1):
            tail = buf[-k:]
            if any(len(tail) < len(n) and n.startswith(tail) for n in self.names):
                return None, 0  # the buffer may end inside a longer tool name: wait
        best, start = None, -1
        for name in self.names:
            pos = buf.find(name)
            if pos == -1:
                continue
            if best is not None and (pos > start or (pos == start and len(name) <= len(best))):
                continue
            best, start = name, pos
        return (best, start + len(best)) if best is not None else (None, 0)

    def _next_call(self) -> ToolCall | None:
        name, end = self._find_tool()
        if name is None:
            return None
        for text, close in _json_objects(self.buffer):
            obj = _loads_object(text)
            if obj is None:
                continue
            args, found = _arguments_in(obj, name)
            if not found:
                args = obj
            if args is None:
                return None
            call = ToolCall(name=name, arguments=args, index=self.n)
            self.n += 1
            self.buffer = self.buffer[max(end, close) :]
            return call
        return None

    def _closed(self) -> bool:
        """For `{` and `[` tags: the outermost brackets have balanced back to zero."""
        if not self.json_tag:
            return False
        open_, close = self.tag, "}" if self.tag == "{" else "]"
        depth = 0
        for _, c in _unquoted(self.buffer):
            if c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return True
        return False


# ---------------------------------------------------------------- chat events


@dataclass
class Delta:
    """What one model piece contributes to a chat event.

    `held` is true when the tool parser kept the piece back (nothing to show yet): the server
    then sends at most a logprobs-only event.
    """

    thinking: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    held: bool = False


class ChatOutputParser:
    """Thinking split, then tool-call parsing, per model piece (spec §7.6).

    Either stage may be absent. Tool calls get fresh ids from `rng` (or the system RNG).
    """

    def __init__(
        self,
        *,
        thinking: ThinkingParser | None = None,
        tools: ToolCallParser | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.thinking, self.tools, self.rng = thinking, tools, rng

    def add(self, piece: str, *, done: bool = False) -> Delta:
        """Feed one piece of generated text; `done` marks the final piece."""
        thinking, content = self.thinking.add(piece) if self.thinking else ("", piece)
        if self.tools is None:
            return Delta(thinking, content, held=not (thinking or content))
        calls, content = self.tools.add(content)
        if content:
            # Ollama drops calls that complete in the same piece as returned content.
            return Delta(thinking, content)
        if calls:
            calls = [ToolCall(c.name, c.arguments, c.index, new_call_id(self.rng)) for c in calls]
            return Delta(thinking, "", calls)
        if thinking:
            return Delta(thinking)
        if done:
            return Delta(content=self.tools.content())
        return Delta(held=True)
