"""Reading a vendor request body with Go's type rules, and writing server-sent events.

Ollama binds /v1 bodies to Go structs, so a field of the wrong JSON type fails the request with
encoding/json's message (`json: cannot unmarshal string into Go struct field
ChatCompletionRequest.temperature of type float64`) and status 400. Field names are matched
exactly here (Go also accepts other letter cases; clients never send them).
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import InvalidRequest
from server.events import dumps
from server.schemas import field_type_error, json_kind


def decode_object(raw: bytes, struct: str) -> dict[str, Any]:
    """The body as one JSON object; anything else is Go's bind error."""
    if not raw.strip():
        raise InvalidRequest("EOF")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"invalid JSON body: {e}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type {struct}"
        )
    return value


class Fields:
    """Typed access to one decoded object: None (absent or null) or a value of the Go type."""

    def __init__(self, body: dict[str, Any], struct: str) -> None:
        self.body, self.struct = body, struct

    def _fail(self, key: str, value: Any, go_type: str) -> InvalidRequest:
        return field_type_error(self.struct, key, value, go_type)

    def get(self, key: str) -> Any:
        return self.body.get(key)

    def str(self, key: str) -> str | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, value, "string")
        return value

    def bool(self, key: str) -> bool | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._fail(key, value, "bool")
        return value

    def int(self, key: str) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, value, "int")
        return value

    def float(self, key: str) -> float | None:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, value, "float64")
        return float(value)

    def list(self, key: str, go_type: str) -> list[Any]:
        value = self.body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, value, go_type)
        return value

    def object(self, key: str, go_type: str) -> Fields | None:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._fail(key, value, go_type)
        return Fields(value, go_type.lstrip("*").split(".")[-1])


def sse(data: dict[str, Any] | str, event: str = "") -> bytes:
    """One server-sent event: an optional `event:` line, then `data:` and a blank line."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()
