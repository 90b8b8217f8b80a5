"""JSON bytes as Go's encoding/json writes them, for blobs whose digests should equal Ollama's.

Compact separators; `<`, `>`, `&`, U+2028 and U+2029 escaped as `\\u003c`…; floats in Go's
shortest form (`0.7`, `4096`, `1e-7`, `1e+21`: exponent below 1e-6 and from 1e21). Dict key order
is kept, so callers pass struct fields in Go's order and sort map keys themselves (spec §13.5).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    for ch, esc in _ESCAPES:
        out = out.replace(ch, esc)
    return out


def go_float(x: float) -> str:
    """A float64 as encoding/json formats it."""
    if not math.isfinite(x):
        raise ValueError(f"JSON cannot encode the float {x!r}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    if 1e-6 <= abs(x) < 1e21:
        return np.format_float_positional(x, unique=True, trim="-")
    return np.format_float_scientific(x, unique=True, trim="-", exp_digits=1)


def encode(value: Any) -> str:
    """Compact Go-style JSON text for None/bool/int/float/str/list/tuple/dict values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def as_go_any(value: Any) -> Any:
    """What decoding into Go's `any` and back does: numbers become float64, map keys sorted."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [as_go_any(v) for v in value]
    if isinstance(value, dict):
        return {k: as_go_any(value[k]) for k in sorted(value)}
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_line(value: Any) -> bytes:
    """`encode(value)` plus the trailing newline Go's json.Encoder adds, as UTF-8."""
    return (encode(value) + "\n").encode("utf-8")
