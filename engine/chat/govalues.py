"""Go values as templates see them, and how Go prints and marshals them.

Values are Python objects: str, bool, int, float, None (Go nil), list, dict (a Go map: printed and
iterated in sorted key order) and `Struct` subclasses (Go structs). Printing follows
text/template's printValue and fmt's %v; `go_json` follows encoding/json's Marshal.
"""

from __future__ import annotations

import base64
import dataclasses
import decimal
import json
import math
from typing import Any, ClassVar

from engine.errors import TemplateError


def json_tag(tag: str) -> Any:
    """A Struct field's Go `json:"…"` tag, spelled as in Go: `json_tag("items,omitempty")`."""
    return dataclasses.field(metadata={"json": tag})


class Struct:
    """Base for Go struct values. Fields are dataclass fields named as in Go (`Role`, `Content`).

    `go_type` is the type name used in error messages. Subclasses may define `go_string()` (Go's
    fmt.Stringer). A field marshals under its Go name unless it carries a `json_tag`.
    """

    go_type: ClassVar[str] = "struct"

    def go_string(self) -> str | None:
        return None

    def go_json_fields(self) -> list[tuple[str, Any, bool]]:
        """Fields in struct order as (json key, value, omitempty)."""
        out = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key, _, option = f.metadata.get("json", f.name).partition(",")
            out.append((key, getattr(self, f.name), option == "omitempty"))
        return out


class JSONMap(dict[str, Any]):
    """A map that prints as compact JSON (Ollama's templateArgs/templateProperties).

    `nil` marks Go's nil map: it prints `{}` but marshals to `null`. `ordered` keeps insertion
    order when marshalled (Ollama's ordered ToolPropertiesMap) instead of sorting keys.
    """

    def __init__(self, *args: Any, nil: bool = False, ordered: bool = False) -> None:
        super().__init__(*args)
        self.nil, self.ordered = nil, ordered


class JSONList(list[Any]):
    """A slice that prints as compact JSON (Ollama's templateTools). `nil` prints `null`."""

    def __init__(self, *args: Any, nil: bool = False) -> None:
        super().__init__(*args)
        self.nil = nil


class PropertyType(list[str]):
    """Ollama's PropertyType: one JSON-schema type name, or several."""


def go_json(v: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, `<`, `>`, `&`, U+2028/9 escaped."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            s = s.replace(c, esc)
        return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if isinstance(v, PropertyType):
        return go_json(v[0]) if len(v) == 1 else go_json(list(v))
    if isinstance(v, list | tuple):
        if isinstance(v, JSONList) and v.nil:
            return "null"
        return "[" + ",".join(go_json(x) for x in v) + "]"
    if isinstance(v, bytes):
        return go_json(base64.b64encode(v).decode())
    if isinstance(v, dict):
        if isinstance(v, JSONMap) and v.nil:
            return "null"
        keys = list(v) if isinstance(v, JSONMap) and v.ordered else sorted(v)
        return "{" + ",".join(go_json(str(k)) + ":" + go_json(v[k]) for k in keys) + "}"
    if isinstance(v, Struct):
        parts = [
            go_json(k) + ":" + go_json(x)
            for k, x, omitempty in v.go_json_fields()
            if not (omitempty and _is_empty(x))
        ]
        return "{" + ",".join(parts) + "}"
    raise TemplateError(f"json: unsupported type: {type(v).__name__}")


def _is_empty(v: Any) -> bool:
    """Go's omitempty test: false, 0, "", nil, and empty slices and maps."""
    if v is None or v is False:
        return True
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v == 0
    if isinstance(v, str | list | tuple | dict | bytes):
        return len(v) == 0
    return False


def _digits(x: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |x| and the decimal exponent of the first digit."""
    t = decimal.Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    return digits, len(digits) - 1 + int(t.exponent)


def _fmt_exp(neg: bool, digits: str, e10: int, min_exp_digits: int) -> str:
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if e10 < 0 else "+"
    return ("-" if neg else "") + f"{mant}e{sign}{abs(e10):0{min_exp_digits}d}"


def _fmt_fixed(neg: bool, digits: str, e10: int) -> str:
    if e10 < 0:
        s = "0." + "0" * (-e10 - 1) + digits
    elif e10 + 1 >= len(digits):
        s = digits + "0" * (e10 + 1 - len(digits))
    else:
        s = digits[: e10 + 1] + "." + digits[e10 + 1 :]
    return ("-" if neg else "") + s


def _json_float(x: float) -> str:
    """Go encoding/json float64 format: like JavaScript, exponent below 1e-6 and from 1e21."""
    if math.isnan(x) or math.isinf(x):
        raise TemplateError(f"json: unsupported value: {format_value(x)}")
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    digits, e10 = _digits(x)
    if abs(x) < 1e-6 or abs(x) >= 1e21:
        return _fmt_exp(x < 0, digits, e10, 1)
    return _fmt_fixed(x < 0, digits, e10)


def go_float(x: float) -> str:
    """fmt's %v for float64 (strconv 'g', shortest): exponent when < 1e-4 or >= 1e6."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    digits, e10 = _digits(x)
    if e10 < -4 or e10 >= 6:
        return _fmt_exp(x < 0, digits, e10, 2)
    return _fmt_fixed(x < 0, digits, e10)


def format_value(v: Any, top: bool = True) -> str:
    """How Go prints a value: text/template's printValue at the top, fmt's %v inside."""
    if v is None:
        return "<no value>" if top else "<nil>"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, PropertyType):
        return "" if not v else v[0] if len(v) == 1 else "[" + " ".join(v) + "]"
    if isinstance(v, JSONList):
        return go_json(v)
    if isinstance(v, JSONMap):
        return "{}" if v.nil else go_json(v)
    if isinstance(v, bytes):
        return "[" + " ".join(str(b) for b in v) + "]"
    if isinstance(v, list | tuple):
        return "[" + " ".join(format_value(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{format_value(v[k], False)}" for k in sorted(v)) + "]"
    if isinstance(v, Struct):
        s = v.go_string()
        if s is not None:
            return s
        fields = dataclasses.fields(v)  # type: ignore[arg-type]
        return "{" + " ".join(format_value(getattr(v, f.name), False) for f in fields) + "}"
    return str(v)


def truth(v: Any) -> bool:
    """Go template truth: false, 0, nil, and empty strings, slices and maps are false."""
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, str | list | tuple | dict | bytes):
        return len(v) > 0
    return True


def type_name(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, Struct):
        return v.go_type
    return {
        bool: "bool", int: "int", float: "float64", str: "string", bytes: "[]uint8",
        list: "[]interface {}", dict: "map[string]interface {}",
    }.get(type(v), type(v).__name__)  # fmt: skip
