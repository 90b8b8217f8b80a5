"""Errors raised by the server side (store, names, routes), each carrying its HTTP status.

They extend the engine's hierarchy (engine/errors.py) so server/app.py can map every error to
HTTP in one table: a handler for `ServerError` answers `status_code` with `{"error": message}`.
Messages follow Ollama's wording (spec/ollama-api.md §19) because clients match on them.
"""

from __future__ import annotations

from engine.errors import EngineError


class ServerError(EngineError):
    """An error with an HTTP status; the message is the `error` text of the response body."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServerError):
    """A request field is missing, malformed or conflicts with another (400)."""

    status_code = 400


class InvalidName(InvalidRequest):
    """A model name fails Ollama's grammar (§12.2); `raw` is the string as sent."""

    def __init__(self, raw: str, message: str = "invalid model name") -> None:
        super().__init__(message)
        self.raw = raw


class InvalidDigest(InvalidRequest):
    def __init__(self, raw: str) -> None:
        super().__init__("invalid digest format")
        self.raw = raw


class DigestMismatch(InvalidRequest):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch, expected {go_quote(expected)}, got {go_quote(actual)}")
        self.expected, self.actual = expected, actual


class ModelNotFound(ServerError):
    """No manifest for this name (404). The default text is generate/chat's wording."""

    status_code = 404

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message if message is not None else f"model '{name}' not found")
        self.name = name


class BlobNotFound(ServerError):
    status_code = 404

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {go_quote(digest)} not found")
        self.digest = digest


class RegistryError(ServerError):
    """A pull or push failed talking to the registry, or its data failed verification (500)."""


class Unsupported(ServerError):
    """A request asks for a feature this server does not implement (400)."""

    status_code = 400


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(s: str) -> str:
    """`s` as Go's `%q` / strconv.Quote writes it: double quotes, Go escapes, printable kept."""
    out = []
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


class BodyTooLarge(ServerError):
    """A request body over the server's limit (413)."""

    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit >> 20} MiB")
        self.limit = limit
