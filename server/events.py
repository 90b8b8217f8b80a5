"""Response events of the native API, and how they are written (spec/ollama-api.md §1.5, §4.4,
§5.3): keys in Ollama's wire order, zero metrics omitted, RFC 3339 timestamps, float32 values
printed shortest, and non-finite floats turned into finite ones on purpose (`json_safe`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FLT_MAX = float(np.finfo(np.float32).max)


def utc_timestamp(ns: int) -> str:
    """RFC 3339 in UTC, fraction up to 9 digits without trailing zeros: `...T20:47:51.1475Z`."""
    secs, frac = divmod(ns, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + (
        f".{digits}Z" if digits else "Z"
    )


def local_timestamp(seconds: float) -> str:
    """RFC 3339 in the server's time zone with a numeric offset (`expires_at`, spec §1.5)."""
    whole = math.floor(seconds)
    local = time.localtime(whole)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    hh, mm = divmod(abs(offset) // 60, 60)
    digits = f"{round((seconds - whole) * 1e9):09d}"[:9].rstrip("0")
    frac = f".{digits}" if digits else ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f"{frac}{sign}{hh:02d}:{mm:02d}"


@dataclass
class Metrics:
    """Final-event counts and durations (ns). Each is omitted from JSON when zero."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0

    def fields(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v}


def generate_event(
    model: str,
    response: str,
    *,
    thinking: str = "",
    done: bool = False,
    done_reason: str = "",
    context: list[int] | None = None,
    metrics: Metrics | None = None,
    debug_info: dict[str, Any] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "model": model,
        "created_at": utc_timestamp(time.time_ns()),
        "response": response,
    }
    if thinking:
        event["thinking"] = thinking
    event["done"] = done
    if done_reason:
        event["done_reason"] = done_reason
    if context:
        event["context"] = context
    if metrics is not None:
        event.update(metrics.fields())
    if debug_info is not None:
        event["_debug_info"] = debug_info
    if logprobs:
        event["logprobs"] = logprobs
    if trace:
        event["trace"] = trace
    return event


def chat_event(
    model: str,
    content: str,
    *,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
    done_reason: str = "",
    metrics: Metrics | None = None,
    debug_info: dict[str, Any] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    trace: list[dict[str, Any]] | None = None,
    role: str = "assistant",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    event: dict[str, Any] = {
        "model": model,
        "created_at": utc_timestamp(time.time_ns()),
        "message": message,
        "done": done,
    }
    if done_reason:
        event["done_reason"] = done_reason
    if debug_info is not None:
        event["_debug_info"] = debug_info
    if logprobs:
        event["logprobs"] = logprobs
    if metrics is not None:
        event.update(metrics.fields())
    if trace:
        event["trace"] = trace
    return event


def logprob_entry(piece: bytes, logprob: float, top: list[tuple[bytes, float]]) -> dict[str, Any]:
    """One `logprobs` item (spec §4.6): the token's text, its logprob, its raw bytes (omitted
    when empty) and `top_logprobs` alternatives (omitted when none were asked for)."""
    entry: dict[str, Any] = {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob}
    if piece:
        entry["bytes"] = list(piece)
    if top:
        entry["top_logprobs"] = [
            {"token": p.decode("utf-8", errors="replace"), "logprob": lp}
            | ({"bytes": list(p)} if p else {})
            for p, lp in top
        ]
    return entry


def float32_list(vector: npt.NDArray[np.float32]) -> list[float]:
    """float32 values as the shortest decimals that round-trip a float32 (`0.010071029`)."""
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in vector]


def json_safe(value: Any) -> Any:
    """Make a value JSON-encodable with allow_nan=False, deliberately.

    ±inf becomes ±FLT_MAX: llama.cpp reports a zero probability's logprob as -FLT_MAX, and a
    logit masked to -inf by a sampler stage reads the same way. NaN becomes null.
    """
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return FLT_MAX if value > 0 else -FLT_MAX
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(json_safe(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def ndjson_line(event: dict[str, Any]) -> bytes:
    return (dumps(event) + "\n").encode("utf-8")
