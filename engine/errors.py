"""The engine's exception hierarchy.

Every error the engine raises on bad input derives from `EngineError`, so the server can map
them to HTTP statuses in one table (server/app.py). Messages say what was expected and what was
found, with the offending value.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class GGUFError(EngineError):
    """A GGUF file is malformed, or a required metadata key is missing or mistyped."""


class BadMagic(GGUFError):
    def __init__(self, found: bytes) -> None:
        super().__init__(f"not a GGUF file: magic is {found!r}, expected b'GGUF'")
        self.found = found


class UnsupportedVersion(GGUFError):
    def __init__(self, version: int, hint: str = "") -> None:
        super().__init__(f"unsupported GGUF version {version}, expected 2 or 3{hint}")
        self.version = version


class TruncatedFile(GGUFError):
    def __init__(self, what: str, offset: int, needed: int, size: int) -> None:
        super().__init__(
            f"truncated GGUF file: {what} needs {needed} bytes at offset {offset}, "
            f"but the file has {size} bytes"
        )
        self.offset, self.needed, self.size = offset, needed, size


class TensorDataOutOfRange(GGUFError):
    def __init__(self, name: str, start: int, end: int, size: int) -> None:
        super().__init__(
            f"tensor {name!r} data [{start}, {end}) lies outside the file ({size} bytes)"
        )
        self.name, self.start, self.end, self.size = name, start, end, size


class UnknownTensorType(GGUFError):
    def __init__(self, name: str, type_id: int) -> None:
        super().__init__(f"tensor {name!r} has unknown ggml type id {type_id}")
        self.name, self.type_id = name, type_id


class UnsupportedQuantType(EngineError):
    """A known ggml type that this engine cannot dequantize (or quantize)."""

    def __init__(self, type_name: str, operation: str = "dequantize") -> None:
        super().__init__(f"cannot {operation} ggml type {type_name}: not supported")
        self.type_name = type_name


class UnsupportedArchitecture(EngineError):
    def __init__(self, arch: str) -> None:
        super().__init__(f"unsupported model architecture {arch!r}")
        self.arch = arch


class ModelTooLarge(EngineError):
    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(
            f"model needs {needed / 2**30:.2f} GiB to load, more than the budget of "
            f"{budget / 2**30:.2f} GiB"
        )
        self.needed, self.budget = needed, budget


class TokenizerError(EngineError):
    """The tokenizer metadata is missing, inconsistent or names an unsupported variant."""


class TemplateError(EngineError):
    """A prompt template failed to parse or render."""


class GrammarError(EngineError):
    """A GBNF grammar or JSON schema could not be compiled."""


class InvalidFormat(EngineError):
    """A `format` value that is neither "json" nor a schema object (Ollama answers 500)."""


class InvalidOption(EngineError):
    """An option value is outside its allowed range or of the wrong type."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"invalid option {field}={value!r}: expected {allowed}")
        self.field, self.value, self.allowed = field, value, allowed


class ContextOverflow(EngineError):
    """A prompt or sequence does not fit in the context window."""


class Cancelled(EngineError):
    """The caller's `cancelled()` turned true while the engine was evaluating."""
