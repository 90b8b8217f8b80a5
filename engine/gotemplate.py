"""Go text/template, the subset Ollama's stored templates use (spec ollama-api.md §6.7).

Parsing follows Go's text/template/parse lexer and parser: `{{- ` / ` -}}` trim markers, comments,
`if`/`else if`/`range`/`with`/`else`/`end`, `break`/`continue`, variables, pipelines, parentheses
and literals. Execution follows text/template/exec.go with Ollama's option `missingkey=zero`.
Values are Python objects: str, bool, int, float, None (Go nil), list, dict (Go map, iterated in
sorted key order) and `Struct` subclasses (Go structs). `define`, `template` and `block` are not
supported; Ollama's stored templates never use them.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import html
import json
import math
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.errors import TemplateError

_SPACE = " \t\r\n"
_KEYWORDS = {
    "if", "else", "end", "range", "with", "break", "continue",
    "template", "define", "block", "nil", "true", "false",
}  # fmt: skip
_MAX_DEPTH = 200  # nesting limit for blocks and parentheses; Go's parser stops at 10000


# ---------------------------------------------------------------- values


class Struct:
    """Base for Go struct values. Fields are dataclass fields named as in Go (`Role`, `Content`).

    `go_type` is the type name used in error messages. Subclasses may define `go_string()` (Go's
    fmt.Stringer) and `go_json_fields()` (fields in struct order as (json key, value, omitempty)).
    """

    go_type: ClassVar[str] = "struct"

    def go_string(self) -> str | None:
        return None

    def go_json_fields(self) -> list[tuple[str, Any, bool]]:
        return [(f.name, getattr(self, f.name), False) for f in dataclasses.fields(self)]  # type: ignore[arg-type]


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


def _go_float(x: float) -> str:
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
        return _go_float(v)
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


def _type_name(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, Struct):
        return v.go_type
    return {
        bool: "bool", int: "int", float: "float64", str: "string", bytes: "[]uint8",
        list: "[]interface {}", dict: "map[string]interface {}",
    }.get(type(v), type(v).__name__)  # fmt: skip


# ---------------------------------------------------------------- lexer


@dataclass(frozen=True)
class _Tok:
    kind: str  # text, ldelim, rdelim, space, field, var, ident, string, number, char, ...
    val: str
    pos: int  # byte offset in the source (for error positions)


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[_Tok] = []

    def err(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: :{_line(self.src, pos)}: {msg}")

    def run(self) -> list[_Tok]:
        src, pos = self.src, 0
        while True:
            i = src.find("{{", pos)
            if i < 0:
                if pos < len(src):
                    self.toks.append(_Tok("text", src[pos:], pos))
                break
            after = i + 2
            ltrim = src.startswith("-", after) and after + 1 < len(src) and src[after + 1] in _SPACE
            text = src[pos:i].rstrip(_SPACE) if ltrim else src[pos:i]
            if text:
                self.toks.append(_Tok("text", text, pos))
            pos = after + 2 if ltrim else after
            if src.startswith("/*", pos):
                end = src.find("*/", pos + 2)
                if end < 0:
                    raise self.err(i, "unclosed comment")
                pos, rtrim = self._right_delim(end + 2)
                if pos < 0:
                    raise self.err(i, "comment ends before closing delimiter")
            else:
                self.toks.append(_Tok("ldelim", "{{", i))
                pos, rtrim = self._action(pos)
            if rtrim:
                while pos < len(src) and src[pos] in _SPACE:
                    pos += 1
        self.toks.append(_Tok("eof", "", len(src)))
        return self.toks

    def _right_delim(self, pos: int) -> tuple[int, bool]:
        """(position after `}}`, trim) if a right delimiter starts at pos, else (-1, False)."""
        src = self.src
        if pos + 1 < len(src) and src[pos] in _SPACE and src.startswith("-}}", pos + 1):
            return pos + 4, True
        if src.startswith("}}", pos):
            return pos + 2, False
        return -1, False

    def _action(self, pos: int) -> tuple[int, bool]:
        src, toks, depth = self.src, self.toks, 0
        while True:
            end, rtrim = self._right_delim(pos)
            if end >= 0:
                if depth:
                    raise self.err(pos, "unclosed left paren")
                toks.append(_Tok("rdelim", "}}", pos))
                return end, rtrim
            if pos >= len(src):
                raise self.err(pos, "unclosed action")
            c = src[pos]
            if c in _SPACE:
                j = pos
                while j < len(src) and src[j] in _SPACE and self._right_delim(j)[0] < 0:
                    j += 1
                toks.append(_Tok("space", src[pos:j], pos))
                pos = j
            elif src.startswith(":=", pos):
                toks.append(_Tok("declare", ":=", pos))
                pos += 2
            elif c in "=|,":
                toks.append(_Tok({"=": "assign", "|": "pipe", ",": "char"}[c], c, pos))
                pos += 1
            elif c == "(":
                depth += 1
                if depth > _MAX_DEPTH:
                    raise self.err(pos, "max expression depth exceeded")
                toks.append(_Tok("lparen", c, pos))
                pos += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise self.err(pos, f"unexpected right paren {c!r}")
                toks.append(_Tok("rparen", c, pos))
                pos += 1
            elif c == '"':
                pos = self._quoted(pos, '"', "string", "unterminated quoted string")
            elif c == "'":
                pos = self._quoted(pos, "'", "char", "unterminated character constant")
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise self.err(pos, "unterminated raw quoted string")
                toks.append(_Tok("rawstring", src[pos : end + 1], pos))
                pos = end + 1
            elif c == "$":
                j = self._word(pos + 1)
                toks.append(_Tok("var", src[pos:j], pos))
                pos = j
            elif c == "." and pos + 1 < len(src) and src[pos + 1].isdigit():
                pos = self._number(pos)
            elif c == ".":
                j = self._word(pos + 1)
                toks.append(_Tok("field" if j > pos + 1 else "dot", src[pos:j], pos))
                pos = j
            elif c in "+-" or c.isdigit():
                pos = self._number(pos)
            elif c.isalpha() or c == "_":
                j = self._word(pos)
                w = src[pos:j]
                toks.append(_Tok(w if w in _KEYWORDS else "ident", w, pos))
                pos = j
            else:
                raise self.err(pos, f"unexpected {c!r} in command")

    def _word(self, pos: int) -> int:
        while pos < len(self.src) and (self.src[pos].isalnum() or self.src[pos] == "_"):
            pos += 1
        return pos

    def _quoted(self, pos: int, quote: str, kind: str, msg: str) -> int:
        j = pos + 1
        while True:
            if j >= len(self.src) or self.src[j] == "\n":
                raise self.err(pos, msg)
            if self.src[j] == "\\":
                j += 2
                continue
            if self.src[j] == quote:
                break
            j += 1
        self.toks.append(_Tok(kind, self.src[pos : j + 1], pos))
        return j + 1

    def _number(self, pos: int) -> int:
        j = self._word(pos + 1)
        # a float like 1.5e-3: keep consuming '.', exponent signs and digits
        while j < len(self.src) and (
            self.src[j] == "." or (self.src[j] in "+-" and self.src[j - 1] in "eEpP")
        ):
            j = self._word(j + 1)
        text = self.src[pos:j]
        if _parse_number(text) is None:
            raise self.err(pos, f"bad number syntax: {text!r}")
        self.toks.append(_Tok("number", text, pos))
        return j


def _parse_number(text: str) -> int | float | None:
    t = text.replace("_", "")
    try:
        if t.lstrip("+-").lower().startswith(("0x", "0o", "0b")):
            return int(t, 0)
        if any(c in t for c in ".eE") or t.lower().lstrip("+-") in ("inf", "nan"):
            if t.lower().lstrip("+-") in ("inf", "nan", "infinity"):
                return None
            return float(t)
        if len(t.lstrip("+-")) > 1 and t.lstrip("+-").startswith("0"):
            return int(t.lstrip("+-"), 8) * (-1 if t.startswith("-") else 1)
        return int(t)
    except ValueError:
        return None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unquote(text: str) -> str:
    """Go's strconv.Unquote for "..." and '...' literals."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("trailing backslash")
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "\\'\"":
            out.append(e)
            i += 2
        elif e in "xuU01234567":
            n = {"x": 2, "u": 4, "U": 8}.get(e, 3)
            start = i + 2 if e in "xuU" else i + 1
            digits = body[start : start + n]
            base = 8 if e not in "xuU" else 16
            if len(digits) != n:
                raise ValueError("short escape")
            out.append(chr(int(digits, base)))
            i = start + n
        else:
            raise ValueError(f"unknown escape \\{e}")
    return "".join(out)


# ---------------------------------------------------------------- parse tree


@dataclass
class Node:
    pos: int


@dataclass
class Text(Node):
    text: str


@dataclass
class Field(Node):
    idents: tuple[str, ...]  # `.A.B` -> ("A", "B")


@dataclass
class Variable(Node):
    idents: tuple[str, ...]  # `$x.A` -> ("$x", "A"); `$` alone -> ("$",)


@dataclass
class Dot(Node):
    pass


@dataclass
class Nil(Node):
    pass


@dataclass
class Literal(Node):
    value: Any  # bool, int, float or str


@dataclass
class Identifier(Node):
    name: str  # a function name


@dataclass
class Chain(Node):
    node: Node  # a parenthesized pipeline or other operand
    fields: tuple[str, ...]


@dataclass
class Command(Node):
    args: list[Node]


@dataclass
class Pipe(Node):
    decl: list[str]
    is_assign: bool
    cmds: list[Command]
    source: str  # the pipeline's source text, for error messages


@dataclass
class Action(Node):
    pipe: Pipe


@dataclass
class Branch(Node):
    kind: str  # "if", "range" or "with"
    pipe: Pipe
    body: list[Node]
    else_body: list[Node] | None


@dataclass
class Break(Node):
    pass


@dataclass
class Continue(Node):
    pass


FUNCTION_NAMES = frozenset(
    {
        "and", "or", "not", "len", "index", "slice", "eq", "ne", "lt", "le", "gt", "ge",
        "print", "printf", "println", "html", "js", "urlquery",
        "json", "currentDate", "yesterdayDate", "toTypeScriptType",
    }
)  # fmt: skip


class _Parser:
    def __init__(self, src: str, toks: list[_Tok]) -> None:
        self.src, self.toks, self.i = src, toks, 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0

    def err(self, tok: _Tok, msg: str) -> TemplateError:
        return TemplateError(f"template: :{_line(self.src, tok.pos)}: {msg}")

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next_nonspace(self) -> _Tok:
        t = self.next()
        while t.kind == "space":
            t = self.next()
        return t

    def peek_nonspace(self) -> _Tok:
        j = self.i
        while self.toks[j].kind == "space":
            j += 1
        return self.toks[j]

    def parse(self) -> list[Node]:
        nodes, stop = self.item_list()
        if stop is not None:
            raise self.err(stop, f"unexpected {{{{{stop.val}}}}}")
        return nodes

    def item_list(self) -> tuple[list[Node], _Tok | None]:
        """Nodes up to EOF (stop None) or up to an `end`/`else` action (stop is its keyword)."""
        nodes: list[Node] = []
        while True:
            t = self.next()
            if t.kind == "eof":
                return nodes, None
            if t.kind == "text":
                nodes.append(Text(t.pos, t.val))
                continue
            kw = self.next_nonspace()
            if kw.kind in ("end", "else"):
                return nodes, kw
            nodes.append(self.action(kw))

    def action(self, kw: _Tok) -> Node:
        if kw.kind in ("if", "range", "with"):
            return self.branch(kw)
        if kw.kind in ("break", "continue"):
            if self.range_depth == 0:
                raise self.err(kw, f"{{{{{kw.kind}}}}} outside {{{{range}}}}")
            self.expect_rdelim(kw.kind)
            return Break(kw.pos) if kw.kind == "break" else Continue(kw.pos)
        if kw.kind in ("template", "define", "block"):
            raise self.err(kw, f"{{{{{kw.kind}}}}} is not supported")
        self.i -= 1
        return Action(kw.pos, self.pipeline("command", kw))

    def expect_rdelim(self, context: str) -> None:
        t = self.next_nonspace()
        if t.kind != "rdelim":
            raise self.err(t, f"unexpected {t.val!r} in {context}")

    def branch(self, kw: _Tok) -> Branch:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.err(kw, "max expression depth exceeded")
        n_vars = len(self.vars)
        pipe = self.pipeline(kw.kind, kw)
        if kw.kind == "range":
            self.range_depth += 1
        body, stop = self.item_list()
        if kw.kind == "range":
            self.range_depth -= 1
        if stop is None:
            raise self.err(self.toks[-1], "unexpected EOF")
        else_body: list[Node] | None = None
        if stop.kind == "else":
            nxt = self.peek_nonspace()
            if kw.kind != "range" and nxt.kind == kw.kind:
                # `{{else if x}}` is an `if` nested in the else list; its `{{end}}` ends both.
                self.next_nonspace()
                else_body = [self.branch(nxt)]
            else:
                self.expect_rdelim("else")
                else_body, stop2 = self.item_list()
                if stop2 is None:
                    raise self.err(self.toks[-1], "unexpected EOF")
                if stop2.kind != "end":
                    raise self.err(stop2, "expected end; found {{else}}")
                self.expect_rdelim("end")
        else:
            self.expect_rdelim("end")
        del self.vars[n_vars:]
        self.depth -= 1
        return Branch(kw.pos, kw.kind, pipe, body, else_body)

    def pipeline(self, context: str, start: _Tok) -> Pipe:
        decl: list[str] = []
        is_assign = False
        first = self.peek_nonspace()
        if first.kind == "var":
            # look ahead for `$x :=`, `$x =` or `$i, $x :=`
            save = self.i
            self.next_nonspace()
            t = self.next_nonspace()
            if t.kind in ("declare", "assign"):
                decl, is_assign = [first.val], t.kind == "assign"
            elif t.kind == "char" and t.val == "," and context == "range":
                second = self.next_nonspace()
                t2 = self.next_nonspace()
                if second.kind != "var" or t2.kind not in ("declare", "assign"):
                    raise self.err(t, "range can only initialize variables")
                decl, is_assign = [first.val, second.val], t2.kind == "assign"
            else:
                self.i = save
            for name in decl:
                if is_assign and name not in self.vars:
                    raise self.err(first, f"undefined variable {name!r}".replace("'", '"'))
                if not is_assign:
                    self.vars.append(name)
        src_start = self.peek_nonspace().pos
        cmds: list[Command] = []
        end_tok = None
        while True:
            t = self.peek_nonspace()
            if t.kind in ("rdelim", "rparen"):
                end_tok = self.next_nonspace()
                if (t.kind == "rparen") != (context == "paren"):
                    raise self.err(t, f"unexpected {t.val!r} in {context}")
                break
            cmds.append(self.command(context))
            t = self.peek_nonspace()
            if t.kind == "pipe":
                self.next_nonspace()
                if self.peek_nonspace().kind in ("rdelim", "rparen"):
                    raise self.err(t, "missing command")
        if not cmds:
            raise self.err(start, f"missing value for {context}")
        for stage, c in enumerate(cmds[1:], start=2):
            if isinstance(c.args[0], Literal | Nil | Dot):
                raise self.err(start, f"non executable command in pipeline stage {stage}")
        source = " ".join(self.src[src_start : end_tok.pos].split())
        return Pipe(start.pos, decl, is_assign, cmds, source)

    def command(self, context: str) -> Command:
        args: list[Node] = []
        start = self.peek_nonspace()
        while True:
            t = self.peek_nonspace()
            if t.kind in ("rdelim", "rparen", "pipe"):
                break
            if args and self.peek().kind != "space":
                raise self.err(t, f"missing space? unexpected {t.val!r} in operand")
            args.append(self.operand())
        if not args:
            raise self.err(start, "empty command")
        return Command(start.pos, args)

    def operand(self) -> Node:
        node = self.term()
        fields: list[str] = []
        while self.peek().kind == "field":
            fields.append(self.next().val[1:])
        if not fields:
            return node
        if isinstance(node, Field):
            return Field(node.pos, node.idents + tuple(fields))
        if isinstance(node, Variable):
            return Variable(node.pos, node.idents + tuple(fields))
        if isinstance(node, Literal | Nil | Dot):
            raise self.err(self.toks[self.i - 1], f"unexpected . after term {node!r}")
        return Chain(node.pos, node, tuple(fields))

    def term(self) -> Node:
        t = self.next_nonspace()
        k = t.kind
        if k == "field":
            return Field(t.pos, (t.val[1:],))
        if k == "var":
            if t.val not in self.vars:
                raise self.err(t, f'undefined variable "{t.val}"')
            return Variable(t.pos, (t.val,))
        if k == "dot":
            return Dot(t.pos)
        if k == "nil":
            return Nil(t.pos)
        if k in ("true", "false"):
            return Literal(t.pos, k == "true")
        if k == "number":
            return Literal(t.pos, _parse_number(t.val))
        if k in ("string", "char"):
            try:
                s = _unquote(t.val)
            except ValueError as e:
                raise self.err(t, f"{e}: {t.val}") from None
            if k == "char":
                if len(s) != 1:
                    raise self.err(t, f"malformed character constant: {t.val}")
                return Literal(t.pos, ord(s))
            return Literal(t.pos, s)
        if k == "rawstring":
            return Literal(t.pos, t.val[1:-1])
        if k == "ident":
            if t.val not in FUNCTION_NAMES:
                raise self.err(t, f'function "{t.val}" not defined')
            return Identifier(t.pos, t.val)
        if k == "lparen":
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise self.err(t, "max expression depth exceeded")
            pipe = self.pipeline("paren", t)
            self.depth -= 1
            return pipe
        raise self.err(t, f"unexpected {t.val or k!r} in operand")


def parse(src: str) -> list[Node]:
    """Parse template source into a node list. Raises TemplateError with Go's message shape."""
    return _Parser(src, _Lexer(src).run()).parse()


def walk(nodes: Sequence[Node]) -> Iterator[Node]:
    """Every node in source order, depth first: pipes, commands and arguments included."""
    for n in nodes:
        yield n
        if isinstance(n, Action):
            yield from walk([n.pipe])
        elif isinstance(n, Branch):
            yield from walk([n.pipe])
            yield from walk(n.body)
            yield from walk(n.else_body or [])
        elif isinstance(n, Pipe):
            yield from walk(n.cmds)
        elif isinstance(n, Command):
            yield from walk(n.args)
        elif isinstance(n, Chain):
            yield from walk([n.node])


# ---------------------------------------------------------------- execution


class _BreakSignal(Exception):
    pass


class _ContinueSignal(Exception):
    pass


_MISSING = object()  # "no final value" in a pipeline stage


@dataclass
class _State:
    src: str
    funcs: dict[str, Callable[..., Any]]
    out: list[str] = field(default_factory=list)
    vars: list[tuple[str, Any]] = field(default_factory=list)

    def err(self, node: Node, msg: str, context: str = "") -> TemplateError:
        line_start = self.src.rfind("\n", 0, node.pos) + 1
        line = self.src.count("\n", 0, node.pos) + 1
        return TemplateError(
            f'template: :{line}:{node.pos - line_start}: executing "" at <{context}>: {msg}'
        )

    def get_var(self, name: str) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise TemplateError(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise TemplateError(f"undefined variable: {name}")

    def walk(self, dot: Any, nodes: list[Node]) -> None:
        for n in nodes:
            if isinstance(n, Text):
                self.out.append(n.text)
            elif isinstance(n, Action):
                val = self.pipeline(dot, n.pipe)
                if not n.pipe.decl:
                    self.out.append(format_value(val))
            elif isinstance(n, Branch):
                mark = len(self.vars)
                if n.kind == "range":
                    self.walk_range(dot, n)
                else:
                    val = self.pipeline(dot, n.pipe)
                    if truth(val):
                        self.walk(val if n.kind == "with" else dot, n.body)
                    elif n.else_body is not None:
                        self.walk(dot, n.else_body)
                del self.vars[mark:]
            elif isinstance(n, Break):
                raise _BreakSignal
            elif isinstance(n, Continue):
                raise _ContinueSignal

    def walk_range(self, dot: Any, n: Branch) -> None:
        val = self.pipeline(dot, n.pipe)
        if isinstance(val, dict):
            items: list[tuple[Any, Any]] = [(k, val[k]) for k in sorted(val)]
        elif isinstance(val, list | tuple):
            items = list(enumerate(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            if val < 0:
                raise self.err(n, f"range can't iterate over {val}", n.pipe.source)
            items = [(i, i) for i in range(val)]
        elif val is None:
            items = []
        else:
            raise self.err(n, f"range can't iterate over {format_value(val)}", n.pipe.source)
        mark = len(self.vars)
        for index, elem in items:
            if n.pipe.decl:
                if n.pipe.is_assign:
                    self.set_var(n.pipe.decl[0], index if len(n.pipe.decl) > 1 else elem)
                    if len(n.pipe.decl) > 1:
                        self.set_var(n.pipe.decl[1], elem)
                else:
                    self.vars[-1] = (self.vars[-1][0], elem)
                    if len(n.pipe.decl) > 1:
                        self.vars[-2] = (self.vars[-2][0], index)
            try:
                self.walk(elem, n.body)
            except _ContinueSignal:
                pass
            except _BreakSignal:
                break
            finally:
                del self.vars[mark:]
        if not items and n.else_body is not None:
            self.walk(dot, n.else_body)

    def pipeline(self, dot: Any, pipe: Pipe) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value, pipe.source)
        if not pipe.is_assign:
            for name in pipe.decl:
                self.vars.append((name, value))
        else:
            for name in pipe.decl:
                self.set_var(name, value)
        return value

    def command(self, dot: Any, cmd: Command, final: Any, ctx: str) -> Any:
        first = cmd.args[0]
        if isinstance(first, Identifier):
            return self.call(dot, first, cmd.args[1:], final, ctx)
        if len(cmd.args) > 1 or final is not _MISSING:
            if isinstance(first, Field | Variable | Chain):
                raise self.err(first, f"{ctx} is not a method but has arguments", ctx)
            raise self.err(first, f"can't give argument to non-function {ctx}", ctx)
        if isinstance(first, Nil):
            raise self.err(first, "nil is not a command", ctx)
        return self.arg(dot, first, ctx)

    def arg(self, dot: Any, node: Node, ctx: str) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Nil):
            return None
        if isinstance(node, Field):
            return self.fields(node, dot, node.idents, ctx)
        if isinstance(node, Variable):
            return self.fields(node, self.get_var(node.idents[0]), node.idents[1:], ctx)
        if isinstance(node, Pipe):
            mark = len(self.vars)
            v = self.pipeline(dot, node)
            del self.vars[mark:]
            return v
        if isinstance(node, Chain):
            return self.fields(node, self.arg(dot, node.node, ctx), node.fields, ctx)
        if isinstance(node, Identifier):
            return self.call(dot, node, [], _MISSING, ctx)
        raise self.err(node, f"can't handle {node!r}", ctx)

    def fields(self, node: Node, receiver: Any, names: Sequence[str], ctx: str) -> Any:
        for name in names:
            receiver = self.field(node, receiver, name, ctx)
        return receiver

    def field(self, node: Node, receiver: Any, name: str, ctx: str) -> Any:
        if receiver is None:
            raise self.err(node, f"nil pointer evaluating interface {{}}.{name}", ctx)
        if isinstance(receiver, dict):
            return receiver.get(name)  # missingkey=zero: a missing key reads as nil
        if isinstance(receiver, Struct) and name in {f.name for f in dataclasses.fields(receiver)}:  # type: ignore[arg-type]
            return getattr(receiver, name)
        raise self.err(node, f"can't evaluate field {name} in type {_type_name(receiver)}", ctx)

    def call(self, dot: Any, fn: Identifier, args: list[Node], final: Any, ctx: str) -> Any:
        if fn.name in ("and", "or"):
            return self.and_or(dot, fn, args, final, ctx)
        values = [self.arg(dot, a, ctx) for a in args]
        if final is not _MISSING:
            values.append(final)
        try:
            return self.funcs[fn.name](*values)
        except _FuncError as e:
            raise self.err(fn, f"error calling {fn.name}: {e}", ctx) from None
        except (TypeError, ValueError, OverflowError) as e:
            raise self.err(fn, f"error calling {fn.name}: {e}", ctx) from None

    def and_or(self, dot: Any, fn: Identifier, args: list[Node], final: Any, ctx: str) -> Any:
        """`and` returns the first falsy argument, `or` the first truthy one, else the last.

        Arguments are evaluated lazily, left to right; a piped value is the last argument.
        """

        def lazy() -> Iterator[Any]:
            for a in args:
                yield self.arg(dot, a, ctx)
            if final is not _MISSING:
                yield final

        stop_on = fn.name == "or"  # `or` stops at a truthy value, `and` at a falsy one
        v: Any = _MISSING
        for v in lazy():
            if truth(v) == stop_on:
                return v
        if v is _MISSING:
            raise self.err(fn, f"wrong number of args for {fn.name}: want at least 1 got 0", ctx)
        return v


class _FuncError(Exception):
    """An error raised inside a template function; execution wraps it with the position."""


# ---------------------------------------------------------------- functions


def _basic_kind(v: Any) -> str:
    if v is None:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise _FuncError("missing argument for comparison")
    ka = _basic_kind(a)
    for b in bs:
        kb = _basic_kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise _FuncError("incompatible types for comparison")
            continue
        if ka == "other":
            if not isinstance(a, Struct) or not isinstance(b, Struct):
                raise _FuncError(f"non-comparable type {format_value(a)}: {_type_name(a)}")
        if a == b:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if ka in ("bool", "invalid", "other") or kb in ("bool", "invalid", "other"):
        raise _FuncError("invalid type for comparison")
    if ka != kb:
        raise _FuncError("incompatible types for comparison")
    return bool(a < b)


def _len(x: Any) -> int:
    if isinstance(x, str):
        return len(x.encode())
    if isinstance(x, list | tuple | dict | bytes):
        return len(x)
    raise _FuncError(f"len of type {_type_name(x)}")


def _int_index(i: Any, cap: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise _FuncError(f"cannot index slice/array with type {_type_name(i)}")
    if i < 0 or i > cap:
        raise _FuncError(f"index out of range: {i}")
    return i


def _index(x: Any, *idx: Any) -> Any:
    if x is None:
        raise _FuncError("index of untyped nil")
    for i in idx:
        if isinstance(x, dict):
            if not isinstance(i, str):
                raise _FuncError(f"value has type {_type_name(i)}; should be string")
            x = x.get(i)
        elif isinstance(x, str | bytes | list | tuple):
            seq = x.encode() if isinstance(x, str) else x
            x = seq[_int_index(i, len(seq) - 1)]
        else:
            raise _FuncError(f"can't index item of type {_type_name(x)}")
    return x


def _slice(x: Any, *idx: Any) -> Any:
    if x is None:
        raise _FuncError("slice of untyped nil")
    if len(idx) > 3:
        raise _FuncError(f"too many slice indexes: {len(idx)}")
    if isinstance(x, str):
        if len(idx) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq: Any = x.encode()
    elif isinstance(x, list | tuple):
        seq = x
    else:
        raise _FuncError(f"can't slice item of type {_type_name(x)}")
    bounds = [0, len(seq)]
    for k, i in enumerate(idx[:2]):
        bounds[k] = _int_index(i, len(seq))
    if bounds[0] > bounds[1]:
        raise _FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    out = seq[bounds[0] : bounds[1]]
    return out.decode(errors="replace") if isinstance(x, str) else list(out)


def _sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_value(a, False))
    return "".join(out)


def _sprintf(fmt: Any, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use: %s %v %d %q %t %f %e %g %x %c %%."""
    if not isinstance(fmt, str):
        raise _FuncError(f"wrong type for value; expected string; got {_type_name(fmt)}")
    out, i, n = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        j = i + 1
        while j < len(fmt) and fmt[j] in "+-# 0":
            j += 1
        while j < len(fmt) and (fmt[j].isdigit() or fmt[j] == "."):
            j += 1
        if j >= len(fmt):
            out.append("%!(NOVERB)")
            break
        spec, verb = fmt[i + 1 : j], fmt[j]
        i = j + 1
        if verb == "%":
            out.append("%")
            continue
        if n >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_verb(verb, spec, args[n]))
        n += 1
    if n < len(args):
        extra = ", ".join(f"{_type_name(a)}={format_value(a, False)}" for a in args[n:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(verb: str, spec: str, a: Any) -> str:
    kind = _basic_kind(a)
    if verb in "sv":
        text = format_value(a, False)
    elif verb == "q" and kind == "string":
        text = json.dumps(a, ensure_ascii=False)
    elif verb == "t" and kind == "bool":
        text = format_value(a)
    elif verb in "dxXoc" and kind == "int":
        text = chr(a) if verb == "c" else format(a, verb)
    elif verb in "xX" and kind == "string":
        text = a.encode().hex() if verb == "x" else a.encode().hex().upper()
    elif verb in "feEgG" and kind == "float":
        text = format(a, spec.lstrip("+-# 0") + verb) if "." in spec else format(a, verb)
        if verb == "g" and "." not in spec:
            text = _go_float(a)
        return _pad(text, spec)
    else:
        return f"%!{verb}({_type_name(a)}={format_value(a, False)})"
    if "." in spec and verb == "s":
        text = text[: int(spec.split(".")[1] or 0)]
    return _pad(text, spec)


def _pad(text: str, spec: str) -> str:
    width = spec.lstrip("+-# 0").split(".")[0]
    if not width:
        return text
    fill = "0" if spec.startswith("0") and "-" not in spec else " "
    return text.ljust(int(width)) if "-" in spec else text.rjust(int(width), fill)


def _js(*args: Any) -> str:
    s = _sprint(*args) if len(args) != 1 or not isinstance(args[0], str) else args[0]
    out = []
    for ch in s:
        if ch in "\\'\"":
            out.append("\\" + ch)
        elif ch in "<>&=" or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _arg_text(args: tuple[Any, ...]) -> str:
    return args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(*args)


def _html(*args: Any) -> str:
    """Go's HTMLEscapeString, which spells quotes as numeric entities."""
    return html.escape(_arg_text(args)).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def _to_typescript(v: Any) -> str:
    ts = getattr(v, "to_typescript", None)
    return ts() if callable(ts) else "any"


def _date(days_ago: int) -> Callable[..., str]:
    def f(*_args: Any) -> str:
        return (datetime.date.today() - datetime.timedelta(days=days_ago)).isoformat()

    return f


BUILTINS: dict[str, Callable[..., Any]] = {
    "not": lambda a: not truth(a),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_lt(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _lt(a, b),
    "print": _sprint,
    "printf": _sprintf,
    "println": lambda *a: " ".join(format_value(x, False) for x in a) + "\n",
    "html": lambda *a: (
        html.escape(_arg_text(a)).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")
    ),
    "js": _js,
    "urlquery": lambda *a: urllib.parse.quote_plus(_arg_text(a)),
    "json": go_json,
    "currentDate": _date(0),
    "yesterdayDate": _date(1),
    "toTypeScriptType": _to_typescript,
}


def execute(src: str, nodes: list[Node], data: Any) -> str:
    """Run a parsed template on `data` (the initial dot and `$`). Raises TemplateError."""
    state = _State(src, BUILTINS, vars=[("$", data)])
    try:
        state.walk(data, nodes)
    except RecursionError:
        raise TemplateError("template: : exceeded maximum template depth") from None
    return "".join(state.out)
