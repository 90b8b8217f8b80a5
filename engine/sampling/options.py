"""Ollama's request options: the one place that holds their defaults, types and valid ranges.

Defaults are Ollama's `api.DefaultOptions()` (spec/ollama-api.md §2.1). Values are merged key by
key: built-in defaults < the model's parameters < the request's `options` (§2.4). Type rules
follow Ollama's `Options.FromMap` (§2.3): any JSON number is accepted for an integer field and
truncated toward zero, float fields are float32 (as Ollama's Go struct holds them), JSON null
keeps the lower layer's value, and unknown keys are skipped with a log message (§2.2), as Ollama
does for both request options and stored model parameters.

Ollama range-checks nothing and llama-server clamps some values afterwards. Where clamping would
change the meaning of a value, this module raises `InvalidOption` instead (listed in `_RANGES`).
Values that llama-server clamps to something with identical behaviour (top_k < 0 == 0 == off,
top_p outside [0, 1], temperature < 0 == 0 == greedy) are accepted as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidOption

log = logging.getLogger(__name__)

# Ollama picks num_ctx from GPU memory; a CPU-only server gets 4096 (ollama-api.md §2.4).
DEFAULT_NUM_CTX = 4096


def _f32(x: float) -> float:
    """A float32 value held as a Python float: Ollama's option fields are Go float32."""
    return float(np.float32(x))


@dataclass(frozen=True)
class Options:
    """Every option Ollama accepts, with Ollama's defaults. Float fields hold float32 values."""

    num_keep: int = 4  # prompt tokens kept by context shift/truncation (+ BOS); -1 = all
    seed: int = -1  # -1 = fresh random seed per request; other values are taken mod 2**32
    num_predict: int = -1  # < 0: until a stop condition, capped at 10 * num_ctx
    top_k: int = 40  # <= 0: off
    top_p: float = _f32(0.9)  # >= 1: off
    min_p: float = 0.0  # <= 0: off
    typical_p: float = 1.0  # >= 1 or == 0 (Ollama omits 0): off
    repeat_last_n: int = 64  # penalty window; 0 = off
    temperature: float = _f32(0.8)  # <= 0: greedy (still draws a random number)
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    num_ctx: int = DEFAULT_NUM_CTX
    num_batch: int = 512
    num_gpu: int = -1  # accepted for compatibility; a CPU engine ignores it
    main_gpu: int = 0  # accepted, ignored
    use_mmap: bool | None = None  # None = automatic
    num_thread: int = 0  # 0 = automatic
    draft_num_predict: int = 0  # speculative decoding: accepted, ignored (no draft models)


_INT_FIELDS = frozenset(f.name for f in dataclasses.fields(Options) if f.type in ("int", int))
_FLOAT_FIELDS = frozenset(f.name for f in dataclasses.fields(Options) if f.type in ("float", float))
_KNOWN = frozenset(f.name for f in dataclasses.fields(Options))


# Checks applied after merging: each says what llama-server (or Ollama) would otherwise reject,
# abort on, or clamp to a value that behaves differently.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_keep": (lambda v: v >= -1, "an integer >= -1 (-1 keeps the whole prompt)"),
    "repeat_last_n": (lambda v: v >= 0, "an integer >= 0 (llama-server rejects negative windows)"),
    "repeat_penalty": (lambda v: v > 0, "a number > 0"),
    "min_p": (lambda v: v <= 1, "a number <= 1 (llama-server clamps larger values to 1)"),
    "num_ctx": (lambda v: v >= 4, "an integer >= 4"),
    "num_batch": (lambda v: v >= 1, "an integer >= 1"),
    "num_thread": (lambda v: v >= 0, "an integer >= 0"),
}


def _coerce(name: str, value: object) -> object:
    """One value from JSON, typed as Ollama's FromMap types it."""
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOption(name, value, "an integer")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidOption(name, value, "a finite number")
        return int(value)  # truncates toward zero, like Go's int(float64)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidOption(name, value, "a float32 number")
        with np.errstate(over="ignore"):  # Go's float32() also overflows to inf; rejected below
            v = float(np.float32(value))
        if not math.isfinite(v):
            raise InvalidOption(name, value, "a finite number")
        return v
    if name == "use_mmap":
        if not isinstance(value, bool):
            raise InvalidOption(name, value, "a boolean")
        return value
    if name == "stop":
        if not isinstance(value, list | tuple):
            raise InvalidOption(name, value, "an array of strings")
        if not all(isinstance(s, str) for s in value):
            raise InvalidOption(name, value, "an array of strings")
        return tuple(s for s in value if s)  # llama-server drops empty stop strings
    raise AssertionError(f"unhandled option field {name}")


def _layer(values: Mapping[str, object] | None, source: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in (values or {}).items():
        if key not in _KNOWN:
            log.warning("invalid option provided (%s): %s", source, key)
            continue
        if value is None:
            continue
        out[key] = _coerce(key, value)
    return out


def resolve(
    model_params: Mapping[str, object] | None, request_options: Mapping[str, object] | None
) -> Options:
    """Merge built-in defaults < model parameters < request options into a checked `Options`.

    A later layer replaces a key wholesale (a request `stop` list replaces the model's).
    Raises `InvalidOption` for a value of the wrong type or outside `_RANGES`.
    """
    merged = {**_layer(model_params, "model"), **_layer(request_options, "request")}
    opts = Options(**merged)  # type: ignore[arg-type]
    for name, (ok, allowed) in _RANGES.items():
        value = getattr(opts, name)
        if not ok(value):
            raise InvalidOption(name, value, allowed)
    return opts


def predict_limit(opts: Options) -> int | None:
    """Tokens to generate at most, as Ollama + llama-server apply num_predict; None = no limit.

    Ollama's boundedNumPredict turns any negative value, or one above 10 * num_ctx, into
    10 * num_ctx. It then omits 0 from the completion request, so llama-server applies its
    default of no limit at all (spec/sampling.md §6.3).
    """
    cap = 10 * opts.num_ctx
    if opts.num_predict < 0 or opts.num_predict > cap:
        return cap
    if opts.num_predict == 0:
        return None
    return opts.num_predict
