"""JSON schema `pattern` (a regular expression subset) -> GBNF for the JSON string holding it.

The grammar matches the string's JSON text, so every character is written the way the JSON must
spell it: `"`, `\\` and control characters only as escapes. The language is kept a subset of
what Python's `re.search` accepts (which `jsonschema` uses), so every output validates:
`.`, `\\d`, `\\w` and classes generate no character that would need escaping (a class's `"`,
`\\` and control characters are dropped), `\\d`/`\\w` are ASCII only, `\\s` is space or the
\\t \\n \\r \\f escapes. A side without its `^`/`$` anchor allows any characters there.

Supported: literals and escaped metacharacters, `.`, classes `[...]`/`[^...]` with ranges and
\\d \\w \\s, groups `(...)`/`(?:...)`, `|`, and `* + ? {m} {m,} {m,n}` (lazy `?` accepted).
Anything else (lookarounds, backreferences, \\b, anchors inside) raises GrammarError.
"""

from __future__ import annotations

import json

from engine.errors import GrammarError

# Characters a JSON string may hold unescaped: everything except ", \ and C0 controls (DEL too,
# as llama.cpp's `char` rule excludes it).
_FORBIDDEN = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_RAW_CHAR = r'[^"\\\x7F\x00-\x1F]'
# One JSON string character: raw, or an escape; `\u` escapes of UTF-16 surrogates are left out
# so that the number of characters written is the number decoded (minLength/maxLength hold).
JSON_CHAR = (
    _RAW_CHAR
    + r' | [\\] (["\\bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))'
)
_DIGIT = [(ord("0"), ord("9"))]
_WORD = [(ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("_"), ord("_")), (ord("a"), ord("z"))]
_SPACE = r'([ ] | "\\t" | "\\n" | "\\r" | "\\f")'
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_MAX_CP = 0x10FFFF


def _class_char(cp: int) -> str:
    c = chr(cp)
    if c.isascii() and c.isalnum():
        return c
    return f"\\x{cp:02X}" if cp <= 0xFF else f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


def _json_literal(c: str) -> str:
    """GBNF literal for the JSON spelling of one character."""
    text = json.dumps(c, ensure_ascii=False)[1:-1]
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        pieces = [(lo, hi)]
        for h_lo, h_hi in holes:
            pieces = [
                part
                for a, b in pieces
                for part in ((a, min(b, h_lo - 1)), (max(a, h_hi + 1), b))
                if part[0] <= part[1]
            ]
        out += pieces
    return out


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return _subtract([(0, _MAX_CP)], ranges)


def _render_class(ranges: list[tuple[int, int]], where: str) -> str:
    allowed = _subtract(ranges, _FORBIDDEN)
    if not allowed:
        raise GrammarError(f"{where}: character class matches no JSON-safe character")
    body = "".join(
        _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"
        for lo, hi in sorted(allowed)
    )
    return f"[{body}]"


class _Parser:
    def __init__(self, pattern: str, where: str) -> None:
        self.src = pattern
        self.pos = 0
        self.where = where

    def error(self, message: str) -> GrammarError:
        return GrammarError(
            f"{self.where}: unsupported pattern {self.src!r} at offset {self.pos}: {message}"
        )

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def alternation(self) -> str:
        seqs = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            seqs.append(self.sequence())
        return " | ".join(seqs)

    def sequence(self) -> str:
        items = []
        while self.peek() and self.peek() not in "|)":
            if self.peek() == "$" and self.pos == len(self.src) - 1:
                break
            items.append(self.quantified(self.atom()))
        return " ".join(items)

    def atom(self) -> str:
        c = self.peek()
        self.pos += 1
        if c == "(":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.error("lookarounds and named groups are not supported")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
            return f"({inner})"
        if c == "[":
            return self.char_class()
        if c == ".":
            return _RAW_CHAR
        if c == "\\":
            return self.escape()
        if c in "^$":
            raise self.error("anchors are only supported at the start and end")
        if c in "*+?" or (c == "{" and self.peek().isdigit()):
            raise self.error("quantifier without an item")
        return _json_literal(c)

    def escape(self) -> str:
        c = self.peek()
        self.pos += 1
        if not c:
            raise self.error("pattern ends with a backslash")
        if c in "dwDW":
            ranges = _DIGIT if c.lower() == "d" else _WORD
            return _render_class(_complement(ranges) if c.isupper() else ranges, self.where)
        if c == "s":
            return _SPACE
        if c in _SIMPLE_ESCAPES:
            return _json_literal(_SIMPLE_ESCAPES[c])
        if not c.isalnum():
            return _json_literal(c)
        raise self.error(f"escape \\{c} is not supported")

    def class_item(self) -> list[tuple[int, int]]:
        """One class member: a character, an escape, or a range."""
        c = self.peek()
        self.pos += 1
        if c == "\\":
            e = self.peek()
            self.pos += 1
            if e in "dw":
                return list(_DIGIT if e == "d" else _WORD)
            if e == "s":
                return [(0x20, 0x20), (0x09, 0x0A), (0x0C, 0x0D)]
            if e in _SIMPLE_ESCAPES:
                first = ord(_SIMPLE_ESCAPES[e])
            elif e and not e.isalnum():
                first = ord(e)
            else:
                raise self.error(f"escape \\{e} in a class is not supported")
        else:
            first = ord(c)
        if self.peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]":
            self.pos += 1
            end = self.peek()
            self.pos += 1
            if end == "\\":
                end = self.peek()
                self.pos += 1
                end = _SIMPLE_ESCAPES.get(end, end)
            if ord(end) < first:
                raise self.error("class range out of order")
            return [(first, ord(end))]
        return [(first, first)]

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            if not self.peek():
                raise self.error("missing ']'")
            ranges += self.class_item()
            first = False
        self.pos += 1
        return _render_class(_complement(ranges) if negated else ranges, self.where)

    def quantified(self, atom: str) -> str:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.pos += 1
            out = f"({atom}){c}"
        elif c == "{" and self.src[self.pos + 1 : self.pos + 2].isdigit():
            end = self.src.find("}", self.pos)
            body = self.src[self.pos + 1 : end] if end > 0 else ""
            lo, comma, hi = body.partition(",")
            if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
                raise self.error(f"bad repetition {{{body}")
            self.pos = end + 1
            out = f"({atom}){{{body}}}"  # GBNF spells {m}, {m,} and {m,n} the same way
        else:
            return atom
        if self.peek() == "?":  # lazy: the same set of full matches
            self.pos += 1
        nxt = self.peek()
        if nxt in ("*", "+", "?") or (
            nxt == "{" and self.src[self.pos + 1 : self.pos + 2].isdigit()
        ):
            raise self.error("multiple repeat")
        return out


def pattern_rule(pattern: str, where: str) -> str:
    """GBNF for a JSON string (quotes included) whose decoded value matches `pattern`."""
    parser = _Parser(pattern, where)
    anchored_start = pattern.startswith("^")
    if anchored_start:
        parser.pos = 1
    body = parser.alternation()
    rest = pattern[parser.pos :]
    if rest not in ("", "$"):
        raise parser.error("unbalanced ')'")
    any_chars = f"({JSON_CHAR})*"
    head = "" if anchored_start else any_chars + " "
    tail = "" if rest == "$" else " " + any_chars
    return rf'"\"" {head}({body}){tail} "\""'
