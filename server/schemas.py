"""Request parsing for the native Ollama API.

Bodies are decoded the way Ollama's Go `encoding/json` decodes them (spec/ollama-api.md §1.4):
empty body is an error, `null` is an all-defaults request, top-level keys match
case-insensitively, unknown keys are ignored, a `null` field means "unset". `keep_alive` follows
Go's `time.ParseDuration` (§3.1) and `think` the level rules of §8.2. Response events are built
in server/events.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from server.errors import InvalidRequest, go_quote

FOREVER = math.inf  # keep_alive for "never unload"
THINK_LEVELS = ("high", "medium", "low", "max")

# --------------------------------------------------------------------------------------------
# Decoding (spec §1.4)


# Go's decoder allows 10,000 levels; Python's recurses (its limit is about 1,000 frames, and the
# handlers walk decoded values recursively), so bodies nest at most this deep (README notes).
MAX_DEPTH = 512


class _NonFinite(ValueError):
    """A bare NaN/Infinity literal: valid for Python's json module, not for Go's decoder."""

    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _reject_constant(literal: str) -> Any:
    raise _NonFinite(literal)


class _FloatRange(ValueError):
    """A number literal too large for float64, which Python would read as infinity."""


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _FloatRange(literal)
    return value


def decode_body(raw: bytes, struct: str) -> dict[str, Any]:
    """One JSON object with lowercased top-level keys (last duplicate wins); `null` gives {}.

    Errors are Go's: bare `NaN`/`Infinity` are invalid characters, nesting deeper than Go's
    limit (MAX_DEPTH here) "exceeded max depth".
    """
    if not raw:
        raise InvalidRequest("missing request body")
    text = raw.decode("utf-8", errors="replace").lstrip()
    decoder = json.JSONDecoder(
        object_pairs_hook=_lower_keys, parse_constant=_reject_constant, parse_float=_finite_float
    )
    try:
        # raw_decode stops after the first value: trailing bytes are ignored, as Go's decoder does.
        value, _ = decoder.raw_decode(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(_go_syntax_error(e, text)) from None
    except _NonFinite as e:
        negative = e.literal.startswith("-")
        where = "in numeric literal" if negative else "looking for beginning of value"
        raise InvalidRequest(f"invalid character {e.literal.lstrip('-')[0]!r} {where}") from None
    except _FloatRange as e:
        raise InvalidRequest(
            f"json: cannot unmarshal number {e} into Go value of type float64"
        ) from None
    except RecursionError:
        raise InvalidRequest(_too_deep(text)) from None
    if _depth(value) > MAX_DEPTH:
        raise InvalidRequest(_too_deep(text))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type api.{struct}"
        )
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a decoded value, without recursion (so any depth is measured)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, dict | list))
    return deepest


def _too_deep(text: str) -> str:
    opener = "[" if text.count("[") >= text.count("{") else "{"
    return f"invalid character {opener!r} exceeded max depth"


def _lower_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Applied to every object; nested objects whose keys are case-sensitive (options, format,
    # tool arguments) are re-read from the original pairs by `_CaseKeeper`.
    return _CaseKeeper(pairs)


class _CaseKeeper(dict):  # type: ignore[type-arg]
    """A dict with lowercased keys that remembers the original pairs for `original()`."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__((k.lower(), v) for k, v in pairs)
        self._pairs = pairs

    def original(self) -> dict[str, Any]:
        return {k: _restore(v) for k, v in self._pairs}


def _restore(value: Any) -> Any:
    """Undo the key lowercasing inside values whose keys are data, not field names."""
    if isinstance(value, _CaseKeeper):
        return value.original()
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def _go_syntax_error(e: json.JSONDecodeError, text: str) -> str:
    if e.pos >= len(text.rstrip()):
        return "unexpected EOF"
    return f"invalid character {text[e.pos]!r} {e.msg.lower()}"


def json_kind(value: Any) -> str:
    """The JSON kind Go's unmarshal errors name: bool, number, string, array, object."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def field_type_error(struct: str, key: str, value: Any, go_type: str) -> InvalidRequest:
    """Go's error for a struct field whose JSON value has the wrong kind."""
    return InvalidRequest(
        f"json: cannot unmarshal {json_kind(value)} into Go struct field "
        f"{struct}.{key} of type {go_type}"
    )


class _Fields:
    """Typed access to one decoded object; wrong types fail with Go's unmarshal message."""

    def __init__(self, body: dict[str, Any], struct: str) -> None:
        self.body, self.struct = body, struct

    def _fail(self, key: str, value: Any, go_type: str) -> InvalidRequest:
        return field_type_error(self.struct, key, value, go_type)

    def raw(self, key: str) -> Any:
        return _restore(self.body.get(key))

    def str(self, key: str) -> str:
        value = self.body.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._fail(key, value, "string")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, value, "bool")
        return value

    def int(self, key: str) -> int:
        value = self.body.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, "int")
        return value

    def ints(self, key: str) -> list[int] | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._fail(key, value, "[]int")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                raise self._fail(key, v, "int")
        return value

    def object(self, key: str) -> dict[str, Any]:
        value = self.body.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, value, "map[string]interface {}")
        return _restore(value)  # type: ignore[no-any-return]

    def list(self, key: str, go_type: str) -> list[Any]:
        value = self.body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, value, go_type)
        return value


# --------------------------------------------------------------------------------------------
# keep_alive (spec §3.1): seconds as a float; FOREVER for negative values; None when unset.

_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}  # fmt: skip
_GO_TYPES = {bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}


def parse_keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        go_type = next(t for py, t in _GO_TYPES.items() if isinstance(value, py))
        raise InvalidRequest(f"Unsupported type: '{go_type}'")
    if isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        seconds = float(value)
    return FOREVER if seconds < 0 else seconds


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds: `"1h30m"`, `"0.5s"`, `"-5m"`, `"0"`."""
    s, negative = text, False
    if s and s[0] in "+-":
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidRequest(f"time: invalid duration {go_quote(text)}")
    total_ns = 0.0
    while s:
        m = re.match(r"(\d*)(?:\.(\d*))?", s)
        assert m is not None  # the pattern also matches the empty string
        whole, frac = m.group(1), m.group(2)
        if not whole and not frac:
            raise InvalidRequest(f"time: invalid duration {go_quote(text)}")
        s = s[m.end() :]
        unit_match = re.match(r"[^\d.]*", s)
        assert unit_match is not None
        unit = unit_match.group(0)
        if not unit:
            raise InvalidRequest(f"time: missing unit in duration {go_quote(text)}")
        if unit not in _UNITS_NS:
            raise InvalidRequest(
                f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}"
            )
        s = s[len(unit) :]
        scale = _UNITS_NS[unit]
        total_ns += int(whole or "0") * scale + (int(frac) / 10 ** len(frac) * scale if frac else 0)
    return (-total_ns if negative else total_ns) / 1e9


# --------------------------------------------------------------------------------------------
# think (spec §8.2)


def parse_think(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise InvalidRequest(
                f"invalid think value: {go_quote(value)} "
                '(must be "high", "medium", "low", "max", true, or false)'
            )
        return value
    raise InvalidRequest(
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


# --------------------------------------------------------------------------------------------
# images (spec §1.4 rule 8): standard base64 with padding; line breaks tolerated.

_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def decode_image(text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(text)} into Go value of type []uint8"
        )
    data = text.replace("\r", "").replace("\n", "")
    for i, ch in enumerate(data):
        if ch == "=":
            break
        if ch not in _B64_ALPHABET:
            raise InvalidRequest(f"illegal base64 data at input byte {i}")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise InvalidRequest(f"illegal base64 data at input byte {len(data.rstrip('='))}") from None


# --------------------------------------------------------------------------------------------
# tools and tool_calls: the shapes of Ollama's api.Tool and api.ToolCall, checked field by field
# so a malformed entry is a 400 naming the field, as Go's decoder answers, never a crash later.

_ToolSpec = str | tuple[str, Any] | dict[str, Any]
_GO_SCALARS = {"string": str, "int": int, "bool": bool}
_PROPERTY: dict[str, Any] = {
    "_go": "api.ToolProperty",
    "type": "property type",
    "description": "string",
    "enum": ("[]interface {}", "any"),
    "required": ("[]string", "string"),
}
_PROPERTY["anyof"] = ("[]api.ToolProperty", _PROPERTY)
_PROPERTY["properties"] = ("map", _PROPERTY)
_TOOL: dict[str, Any] = {
    "_go": "api.Tool",
    "type": "string",
    "function": {
        "_go": "api.ToolFunction",
        "name": "string",
        "description": "string",
        "parameters": {
            "_go": "api.ToolFunctionParameters",
            "type": "string",
            "required": ("[]string", "string"),
            "properties": ("map", _PROPERTY),
        },
    },
}
_TOOL_CALL: dict[str, Any] = {
    "_go": "api.ToolCall",
    "id": "string",
    "function": {
        "_go": "api.ToolCallFunction",
        "index": "int",
        "name": "string",
        "arguments": ("map", "any"),
    },
}


def _check_shape(value: Any, spec: _ToolSpec, path: str) -> None:
    """Raise Go's unmarshal error when `value` (a decoded field at `path`) misfits `spec`."""
    if value is None or spec == "any":
        return

    def fail(go_type: str) -> InvalidRequest:
        return InvalidRequest(
            f"json: cannot unmarshal {json_kind(value)} into Go struct field {path} "
            f"of type {go_type}"
        )

    if isinstance(spec, str) and spec in _GO_SCALARS:
        py = _GO_SCALARS[spec]
        if isinstance(value, bool) != (py is bool) or not isinstance(value, py):
            raise fail(spec)
    elif spec == "property type":  # api.PropertyType: a string or a list of strings
        if not isinstance(value, str) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise fail("api.PropertyType")
    elif isinstance(spec, tuple):
        go_type, inner = spec
        if go_type == "map":
            if not isinstance(value, dict):
                raise fail("map[string]interface {}")
            for v in value.values():
                _check_shape(v, inner, path)
        else:
            if not isinstance(value, list):
                raise fail(go_type)
            for v in value:
                _check_shape(v, inner, path)
    else:
        assert isinstance(spec, dict)
        if not isinstance(value, dict):
            raise fail(spec["_go"])
        for key, inner in spec.items():
            if key != "_go":
                _check_shape(value.get(key), inner, f"{path}.{key}")


# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    thinking: str = ""
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""

    @classmethod
    def from_json(cls, value: Any) -> Message:
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"json: cannot unmarshal {json_kind(value)} into Go value of type api.Message"
            )
        f = _Fields(value, "Message")
        return cls(
            role=f.str("role").lower(),
            content=f.str("content"),
            thinking=f.str("thinking"),
            images=tuple(decode_image(v) for v in f.list("images", "[]api.ImageData")),
            tool_calls=tuple(_restore(c) for c in _tool_calls(f)),
            tool_name=f.str("tool_name"),
            tool_call_id=f.str("tool_call_id"),
        )


def _tool_calls(f: _Fields) -> list[Any]:
    calls = f.list("tool_calls", "[]api.ToolCall")
    for call in calls:
        _check_shape(call, _TOOL_CALL, "ChatRequest.messages.tool_calls")
    return calls


def _tools(f: _Fields) -> list[Any]:
    tools = f.list("tools", "api.Tools")
    for tool in tools:
        _check_shape(tool, _TOOL, "ChatRequest.tools")
    return tools


@dataclass(frozen=True)
class _Common:
    """Fields generate and chat share."""

    model: str
    format: Any
    options: dict[str, Any]
    stream: bool
    keep_alive: float | None
    think: bool | str | None
    truncate: bool
    shift: bool
    logprobs: bool
    top_logprobs: int
    debug_render_only: bool
    trace: bool  # refllama extension: per-token sampler trace in each event

    @staticmethod
    def _common(f: _Fields) -> dict[str, Any]:
        top = f.int("top_logprobs")
        if not 0 <= top <= 20:
            raise InvalidRequest("top_logprobs must be between 0 and 20")
        return dict(
            model=f.str("model"),
            format=f.raw("format"),
            options=f.object("options"),
            stream=f.bool("stream", True),
            keep_alive=parse_keep_alive(f.raw("keep_alive")),
            think=parse_think(f.raw("think")),
            truncate=f.bool("truncate", True),
            shift=f.bool("shift", True),
            logprobs=f.bool("logprobs", False),
            top_logprobs=top,
            debug_render_only=f.bool("_debug_render_only", False),
            trace=f.bool("trace", False),
        )


@dataclass(frozen=True)
class GenerateRequest(_Common):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] | None = None
    raw: bool = False
    images: tuple[bytes, ...] = ()

    @classmethod
    def from_body(cls, raw: bytes) -> GenerateRequest:
        f = _Fields(decode_body(raw, "GenerateRequest"), "GenerateRequest")
        return cls(
            **cls._common(f),
            prompt=f.str("prompt"),
            suffix=f.str("suffix"),
            system=f.str("system"),
            template=f.str("template"),
            context=f.ints("context"),
            raw=f.bool("raw", False),
            images=tuple(decode_image(v) for v in f.list("images", "[]api.ImageData")),
        )


@dataclass(frozen=True)
class ChatRequest(_Common):
    messages: tuple[Message, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_body(cls, raw: bytes) -> ChatRequest:
        f = _Fields(decode_body(raw, "ChatRequest"), "ChatRequest")
        return cls(
            **cls._common(f),
            messages=tuple(Message.from_json(m) for m in f.list("messages", "[]api.Message")),
            tools=tuple(_restore(t) for t in _tools(f)),
        )


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    input: list[str]
    truncate: bool
    dimensions: int
    keep_alive: float | None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, raw: bytes) -> EmbedRequest:
        f = _Fields(decode_body(raw, "EmbedRequest"), "EmbedRequest")
        return cls(
            model=f.str("model"),
            input=_embed_inputs(f.raw("input")),
            truncate=f.bool("truncate", True),
            dimensions=f.int("dimensions"),
            keep_alive=parse_keep_alive(f.raw("keep_alive")),
            options=f.object("options"),
        )


def _embed_inputs(value: Any) -> list[str]:
    """spec §10.1 step 3: a string, a list of strings, or nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise InvalidRequest("invalid input type")


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    prompt: str
    keep_alive: float | None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, raw: bytes) -> EmbeddingsRequest:
        f = _Fields(decode_body(raw, "EmbeddingRequest"), "EmbeddingRequest")
        return cls(
            model=f.str("model"),
            prompt=f.str("prompt"),
            keep_alive=parse_keep_alive(f.raw("keep_alive")),
            options=f.object("options"),
        )


@dataclass(frozen=True)
class TokenizeRequest:
    """refllama extension, shaped like llama-server's POST /tokenize plus a `model`."""

    model: str
    content: str
    add_special: bool
    parse_special: bool
    with_pieces: bool

    @classmethod
    def from_body(cls, raw: bytes) -> TokenizeRequest:
        f = _Fields(decode_body(raw, "TokenizeRequest"), "TokenizeRequest")
        return cls(
            model=f.str("model"),
            content=f.str("content"),
            add_special=f.bool("add_special", False),
            parse_special=f.bool("parse_special", True),
            with_pieces=f.bool("with_pieces", False),
        )


@dataclass(frozen=True)
class DetokenizeRequest:
    model: str
    tokens: list[int]

    @classmethod
    def from_body(cls, raw: bytes) -> DetokenizeRequest:
        f = _Fields(decode_body(raw, "DetokenizeRequest"), "DetokenizeRequest")
        return cls(model=f.str("model"), tokens=f.ints("tokens") or [])
