"""Checks Ollama runs on a generate/chat/embed request before any token is computed.

What the model can do (capabilities from the store record, the template and its thinking tags),
which template it renders with, `think` and `format` validation, the effective options (with
Ollama's error texts for mistyped ones) and getting a loaded runner (spec/ollama-api.md §2,
§4.2, §5.2, §6.1, §8, §9).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat.templates import (
    ChatTemplate,
    load_template,
)
from engine.errors import InvalidOption
from engine.gguf.reader import GGUFFile
from engine.sampling.options import Options, resolve
from server.errors import InvalidRequest, ServerError, go_quote
from server.routes_models import capabilities
from server.scheduler import Runner, Scheduler
from server.store import ModelRecord

log = logging.getLogger(__name__)


class InvalidFormat(ServerError):
    """`format` is neither "json" nor a schema object: Ollama answers 500 (spec §9)."""

    def __init__(self, value: Any) -> None:
        raw = json.dumps(value, separators=(",", ":"))
        super().__init__(
            f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object'
        )


@dataclass(frozen=True)
class GGUFFacts:
    """What prompt building and pooling read from a model's GGUF before it is loaded."""

    chat_template: str | None  # tokenizer.chat_template (Jinja)
    bos_token: str
    eos_token: str
    pooling_type: int  # {arch}.pooling_type: 0 none, 1 mean, 2 cls, 3 last
    context_length: int  # {arch}.context_length, the training context (0 if absent)


@functools.lru_cache(maxsize=32)
def gguf_facts(path: Path) -> GGUFFacts:
    meta = GGUFFile(path).metadata
    tokens = meta.get("tokenizer.ggml.tokens") or []
    arch = meta.get("general.architecture", "")

    def token(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    source = meta.get("tokenizer.chat_template")
    return GGUFFacts(
        chat_template=source if isinstance(source, str) else None,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        pooling_type=int(meta.get(f"{arch}.pooling_type", 0)),
        context_length=int(meta.get(f"{arch}.context_length", 0)),
    )


def model_template(record: ModelRecord) -> ChatTemplate:
    """The template a stored model renders with: its TEMPLATE layer, else the GGUF's Jinja
    template, else Ollama's `{{ .Prompt }}` (spec §6.1)."""
    if record.template:
        return _parsed(record.template, None, "", "")
    facts = gguf_facts(record.gguf_path)
    return _parsed(None, facts.chat_template, facts.bos_token, facts.eos_token)


@functools.lru_cache(maxsize=64)
def _parsed(go: str | None, jinja: str | None, bos: str, eos: str) -> ChatTemplate:
    """Templates are parsed once per source text; rendering never changes them."""
    return load_template(go, jinja, bos_token=bos, eos_token=eos)


def model_capabilities(record: ModelRecord, template: ChatTemplate) -> set[str]:
    """Ollama's capabilities (spec §11.2.3) plus the template's, thinking included (§8.1)."""
    return set(capabilities(record)) | set(template.capabilities)


def check_think(model: str, think: bool | str | None, caps: set[str]) -> bool | str | None:
    """Spec §4.2 step 7: default on for thinking models; an error if asked of other models."""
    if "thinking" in caps:
        return True if think is None else think
    if think:
        raise InvalidRequest(f"{go_quote(model)} does not support thinking")
    return think


def check_format(value: Any) -> str | dict[str, Any] | None:
    if value is None or value == "" or value == "json" or isinstance(value, dict):
        return value or None
    raise InvalidFormat(value)


def request_options(record: ModelRecord, options: dict[str, Any]) -> Options:
    """Defaults < OLLAMA_CONTEXT_LENGTH < model parameters < request options (spec §2.4).

    A value of the wrong JSON type fails as Ollama fails it: 500 `option "k" must be of type
    ...` (§2.3). A well-typed value outside the range this engine accepts is a 400 carrying
    engine/sampling/options.py's explanation (Ollama checks no ranges; llama-server would reject or
    silently clamp them).
    """
    env_ctx = int(os.environ.get("OLLAMA_CONTEXT_LENGTH") or 0)
    base = {"num_ctx": env_ctx} if env_ctx else {}
    try:
        opts = resolve({**base, **record.parameters}, options)
    except InvalidOption as e:
        go_type = _OPTION_TYPES.get(e.allowed)
        if go_type is None:
            raise InvalidRequest(str(e)) from e
        if go_type == "array" and isinstance(e.value, list | tuple):
            raise OptionTypeError(f'option "{e.field}" must be of an array of strings') from e
        raise OptionTypeError(f'option "{e.field}" must be of type {go_type}') from e
    trained = gguf_facts(record.gguf_path).context_length
    if 0 < trained < opts.num_ctx:  # lowered to the training context when scheduled (§2.4)
        opts = dataclasses.replace(opts, num_ctx=trained)
    return opts


class OptionTypeError(ServerError):
    """An option of the wrong JSON type: Ollama answers 500 (spec §2.3)."""


# engine/sampling/options.py's `allowed` texts for type errors -> the Go type Ollama names.
_OPTION_TYPES = {
    "an integer": "integer",
    "a float32 number": "float32",
    "a boolean": "boolean",
    "an array of strings": "array",
}


async def acquire_runner(
    scheduler: Scheduler,
    record: ModelRecord,
    opts: Options,
    keep_alive: float | None,
    arrived: int | None = None,
) -> tuple[Runner, int]:
    """The runner, and the load duration: request arrival (monotonic ns) to model ready."""
    start = time.monotonic_ns() if arrived is None else arrived
    runner = await scheduler.acquire(record, opts.num_ctx, keep_alive)
    return runner, time.monotonic_ns() - start
