"""Go text/template parsing, the subset Ollama's stored templates use (spec ollama-api.md §6.7).

Follows Go's text/template/parse lexer and parser: `{{- ` / ` -}}` trim markers, comments,
`if`/`else if`/`range`/`with`/`else`/`end`, `break`/`continue`, variables, pipelines, parentheses
and literals. Errors carry Go's message shape (`template: :LINE: …`). `define`, `template` and
`block` are not supported: Ollama's stored templates never use them. Execution lives in
engine/chat/goexec.py, the value model in engine/chat/govalues.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import TemplateError

_SPACE = " \t\r\n"
_KEYWORDS = {
    "if", "else", "end", "range", "with", "break", "continue",
    "template", "define", "block", "nil", "true", "false",
}  # fmt: skip
_MAX_DEPTH = 200  # nesting limit for blocks and parentheses; Go's parser stops at 10000


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
