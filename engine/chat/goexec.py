"""Go text/template execution (text/template/exec.go) with Ollama's `missingkey=zero` option,
plus the built-in functions and Ollama's additions (spec ollama-api.md §6.7.4).
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import inspect
import json
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.chat.gotemplate import (
    Action,
    Branch,
    Break,
    Chain,
    Command,
    Continue,
    Dot,
    Field,
    Identifier,
    Literal,
    Nil,
    Node,
    Pipe,
    Text,
    Variable,
)
from engine.chat.govalues import Struct, format_value, go_float, go_json, truth, type_name
from engine.errors import TemplateError

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
        raise self.err(node, f"can't evaluate field {name} in type {type_name(receiver)}", ctx)

    def call(self, dot: Any, fn: Identifier, args: list[Node], final: Any, ctx: str) -> Any:
        if fn.name in ("and", "or"):
            return self.and_or(dot, fn, args, final, ctx)
        values = [self.arg(dot, a, ctx) for a in args]
        if final is not _MISSING:
            values.append(final)
        want, variadic = ARITY[fn.name]
        if len(values) < want or (len(values) > want and not variadic):
            at_least = "at least " if variadic else ""
            msg = f"wrong number of args for {fn.name}: want {at_least}{want} got {len(values)}"
            raise self.err(fn, msg, ctx)
        try:
            return self.funcs[fn.name](*values)
        except _FuncError as e:
            raise self.err(fn, f"error calling {fn.name}: {e}", ctx) from None
        except (ValueError, OverflowError) as e:
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
                raise _FuncError(f"non-comparable type {format_value(a)}: {type_name(a)}")
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
    raise _FuncError(f"len of type {type_name(x)}")


def _int_index(i: Any, cap: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise _FuncError(f"cannot index slice/array with type {type_name(i)}")
    if i < 0 or i > cap:
        raise _FuncError(f"index out of range: {i}")
    return i


def _index(x: Any, *idx: Any) -> Any:
    if x is None:
        raise _FuncError("index of untyped nil")
    for i in idx:
        if isinstance(x, dict):
            if not isinstance(i, str):
                raise _FuncError(f"value has type {type_name(i)}; should be string")
            x = x.get(i)
        elif isinstance(x, str | bytes | list | tuple):
            seq = x.encode() if isinstance(x, str) else x
            x = seq[_int_index(i, len(seq) - 1)]
        else:
            raise _FuncError(f"can't index item of type {type_name(x)}")
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
        raise _FuncError(f"can't slice item of type {type_name(x)}")
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
        raise _FuncError(f"wrong type for value; expected string; got {type_name(fmt)}")
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
        extra = ", ".join(f"{type_name(a)}={format_value(a, False)}" for a in args[n:])
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
            text = go_float(a)
        return _pad(text, spec)
    else:
        return f"%!{verb}({type_name(a)}={format_value(a, False)})"
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
    out = []
    for ch in _arg_text(args):
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
    "html": _html,
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


def _arity(f: Callable[..., Any]) -> tuple[int, bool]:
    """(required positional arguments, accepts more) of a built-in, as Go checks before a call."""
    params = inspect.signature(f).parameters.values()
    required = sum(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
    return required, any(p.kind is p.VAR_POSITIONAL for p in params)


ARITY = {name: _arity(f) for name, f in BUILTINS.items()}
