"""Parse llama.cpp's GBNF grammar text into flat rules of grammar elements.

Follows `src/llama-grammar.cpp` (`llama_grammar_parser`): the same element encoding (END, ALT,
RULE_REF, CHAR, CHAR_NOT, CHAR_RNG_UPPER, CHAR_ALT, CHAR_ANY), the same rewriting of groups and
repetitions into generated helper rules, and the same checks (undefined rules, missing `root`,
left recursion, repetition counts above 2000). See spec/sampling.md §7.4 for the syntax.

Differences: token terminals (`<[id]>`, `<text>`, `!<...>`) and `{m,n}` with n < m are rejected;
left recursion is judged by whether it would make the stacks grow (see _check_left_recursion),
which also catches recursion through transitively nullable rules that llama.cpp misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from engine.errors import GrammarError

MAX_REPETITION = 2000  # llama.cpp MAX_REPETITION_THRESHOLD


class Elem(IntEnum):
    END = 0  # end of a rule definition
    ALT = 1  # start of an alternative
    RULE_REF = 2  # value: rule id
    CHAR = 3  # value: code point; starts a positive character class
    CHAR_NOT = 4  # value: code point; starts a negated class [^...]
    CHAR_RNG_UPPER = 5  # value: upper bound of the range started by the previous element
    CHAR_ALT = 6  # value: another code point (or range start) in the current class
    CHAR_ANY = 7  # `.`


Element = tuple[Elem, int]


@dataclass(frozen=True)
class Grammar:
    """Parsed rules. `rules[i]` is a flat element list: alternatives split by ALT, ended by END."""

    rules: tuple[tuple[Element, ...], ...]
    names: tuple[str, ...]  # names[i]: rule i's name (generated rules are `name_<n>`)
    root: int


def _is_word_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c == "-" or ("0" <= c <= "9")


_SIMPLE_ESCAPES = {
    "t": "\t",
    "r": "\r",
    "n": "\n",
    "\\": "\\",
    '"': '"',
    "[": "[",
    "]": "]",
    "-": "-",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class _Parser:
    def __init__(self, text: str) -> None:
        self.src = text
        self.symbol_ids: dict[str, int] = {}
        self.rules: dict[int, list[Element]] = {}

    # -- diagnostics ---------------------------------------------------------------------------
    def error(self, message: str, pos: int) -> GrammarError:
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        snippet = self.src[pos : pos + 20]
        return GrammarError(
            f"grammar parse error at line {line}, column {col}: {message} (near {snippet!r})"
        )

    def peek(self, pos: int, n: int = 0) -> str:
        i = pos + n
        return self.src[i] if i < len(self.src) else ""

    # -- symbols -------------------------------------------------------------------------------
    def symbol_id(self, name: str) -> int:
        return self.symbol_ids.setdefault(name, len(self.symbol_ids))

    def generate_symbol_id(self, base: str) -> int:
        next_id = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{next_id}"] = next_id
        return next_id

    # -- lexing --------------------------------------------------------------------------------
    def space(self, pos: int, newline_ok: bool) -> int:
        src = self.src
        while pos < len(src):
            c = src[pos]
            if c == "#":
                while pos < len(src) and src[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while end < len(self.src) and _is_word_char(self.src[end]):
            end += 1
        if end == pos:
            raise self.error("expecting name", pos)
        return end

    def char(self, pos: int) -> tuple[int, int]:
        """One (possibly escaped) character -> (code point, next position)."""
        c = self.peek(pos)
        if c == "\\":
            esc = self.peek(pos, 1)
            if esc in _HEX_ESCAPES:
                n = _HEX_ESCAPES[esc]
                digits = self.src[pos + 2 : pos + 2 + n]
                if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise self.error(f"expecting {n} hex digits after \\{esc}", pos)
                return int(digits, 16), pos + 2 + n
            if esc in _SIMPLE_ESCAPES:
                return ord(_SIMPLE_ESCAPES[esc]), pos + 2
            raise self.error(f"unknown escape \\{esc}", pos)
        if c:
            return ord(c), pos + 1
        raise self.error("unexpected end of input", pos)

    # -- grammar -------------------------------------------------------------------------------
    def parse(self) -> Grammar:
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)
        names = {i: n for n, i in self.symbol_ids.items()}
        for rule_id, name in names.items():
            if rule_id not in self.rules:
                raise GrammarError(f"undefined rule identifier {name!r}")
        if "root" not in self.symbol_ids:
            raise GrammarError("grammar does not contain a 'root' rule")
        grammar = Grammar(
            rules=tuple(tuple(self.rules[i]) for i in range(len(self.symbol_ids))),
            names=tuple(names[i] for i in range(len(self.symbol_ids))),
            root=self.symbol_ids["root"],
        )
        _check_left_recursion(grammar)
        return grammar

    def rule(self, pos: int) -> int:
        name_end = self.name(pos)
        name = self.src[pos:name_end]
        rule_id = self.symbol_id(name)
        pos = self.space(name_end, False)
        if self.src[pos : pos + 3] != "::=":
            raise self.error("expecting ::=", pos)
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, nested=False)
        c = self.peek(pos)
        if c == "\r":
            pos += 2 if self.peek(pos, 1) == "\n" else 1
        elif c == "\n":
            pos += 1
        elif c:
            raise self.error("expecting newline or end", pos)
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        rule: list[Element] = []
        pos = self.sequence(pos, name, rule, nested)
        while self.peek(pos) == "|":
            rule.append((Elem.ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), name, rule, nested)
        rule.append((Elem.END, 0))
        self.rules[rule_id] = rule
        return pos

    def sequence(self, pos: int, name: str, rule: list[Element], nested: bool) -> int:
        last_sym_start = len(rule)
        while pos < len(self.src):
            c = self.src[pos]
            if c == '"':
                pos += 1
                last_sym_start = len(rule)
                while self.peek(pos) != '"':
                    if not self.peek(pos):
                        raise self.error("unexpected end of input in literal", pos)
                    cp, pos = self.char(pos)
                    rule.append((Elem.CHAR, cp))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos += 1
                start_type = Elem.CHAR
                if self.peek(pos) == "^":
                    pos += 1
                    start_type = Elem.CHAR_NOT
                last_sym_start = len(rule)
                while self.peek(pos) != "]":
                    if not self.peek(pos):
                        raise self.error("unexpected end of input in character class", pos)
                    cp, pos = self.char(pos)
                    rule.append((Elem.CHAR_ALT if len(rule) > last_sym_start else start_type, cp))
                    if self.peek(pos) == "-" and self.peek(pos, 1) != "]":
                        if not self.peek(pos, 1):
                            raise self.error("unexpected end of input in range", pos)
                        upper, pos = self.char(pos + 1)
                        rule.append((Elem.CHAR_RNG_UPPER, upper))
                pos = self.space(pos + 1, nested)
            elif _is_word_char(c):
                name_end = self.name(pos)
                ref = self.symbol_id(self.src[pos:name_end])
                pos = self.space(name_end, nested)
                last_sym_start = len(rule)
                rule.append((Elem.RULE_REF, ref))
            elif c == "(":
                sub_id = self.generate_symbol_id(name)
                pos = self.alternates(self.space(pos + 1, True), name, sub_id, nested=True)
                last_sym_start = len(rule)
                rule.append((Elem.RULE_REF, sub_id))
                if self.peek(pos) != ")":
                    raise self.error("expecting ')'", pos)
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last_sym_start = len(rule)
                rule.append((Elem.CHAR_ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                self.repeat(rule, last_sym_start, name, pos, *_OPERATOR_COUNTS[c])
                pos = self.space(pos + 1, nested)
            elif c == "{":
                pos, min_times, max_times = self.counts(pos, nested)
                self.repeat(rule, last_sym_start, name, pos, min_times, max_times)
            elif c == "<" or (c == "!" and self.peek(pos, 1) == "<"):
                raise self.error("token terminals (<[id]>, <text>) are not supported", pos)
            else:
                break
        return pos

    def counts(self, pos: int, nested: bool) -> tuple[int, int, int | None]:
        """Parse `{m}`, `{m,}` or `{m,n}` starting at `{` -> (next pos, m, n or None)."""
        start = pos
        pos = self.space(pos + 1, nested)
        min_times, pos = self.integer(pos)
        pos = self.space(pos, nested)
        max_times: int | None
        if self.peek(pos) == "}":
            max_times = min_times
        elif self.peek(pos) == ",":
            pos = self.space(pos + 1, nested)
            max_times = None
            if self.peek(pos).isdigit():
                max_times, pos = self.integer(pos)
                pos = self.space(pos, nested)
            if self.peek(pos) != "}":
                raise self.error("expecting '}'", pos)
        else:
            raise self.error("expecting ',' or '}'", pos)
        if min_times > MAX_REPETITION or (max_times is not None and max_times > MAX_REPETITION):
            raise self.error(f"repetition count exceeds {MAX_REPETITION}", start)
        if max_times is not None and max_times < min_times:
            raise self.error(f"repetition {{{min_times},{max_times}}} has max < min", start)
        return self.space(pos + 1, nested), min_times, max_times

    def integer(self, pos: int) -> tuple[int, int]:
        end = pos
        while self.peek(end).isdigit() and self.peek(end).isascii():
            end += 1
        if end == pos:
            raise self.error("expecting an integer", pos)
        return int(self.src[pos:end]), end

    def repeat(
        self,
        rule: list[Element],
        last_sym_start: int,
        name: str,
        pos: int,
        min_times: int,
        max_times: int | None,
    ) -> None:
        """Rewrite the last symbol S into S{min,max} in place (llama.cpp handle_repetitions).

        S{m,n} -> S (m times) S'(n-m) with S'(k) ::= S S'(k-1) |  and S'(1) ::= S |
        S{m,}  -> S (m times) S'      with S'    ::= S S' |
        """
        if last_sym_start == len(rule):
            raise self.error("expecting an item before a repetition operator", pos)
        prev = rule[last_sym_start:]
        if min_times == 0:
            del rule[last_sym_start:]
        else:
            rule.extend(prev * (min_times - 1))
        n_opt = 1 if max_times is None else max_times - min_times
        last_rec_id = 0
        for i in range(n_opt):
            rec_id = self.generate_symbol_id(name)
            rec_rule = list(prev)
            if i > 0 or max_times is None:
                rec_rule.append((Elem.RULE_REF, rec_id if max_times is None else last_rec_id))
            rec_rule += [(Elem.ALT, 0), (Elem.END, 0)]
            self.rules[rec_id] = rec_rule
            last_rec_id = rec_id
        if n_opt > 0:
            rule.append((Elem.RULE_REF, last_rec_id))


_OPERATOR_COUNTS: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}


def _alternatives(rule: tuple[Element, ...]) -> list[list[Element]]:
    alts: list[list[Element]] = [[]]
    for elem in rule:
        if elem[0] == Elem.ALT:
            alts.append([])
        elif elem[0] != Elem.END:
            alts[-1].append(elem)
    return alts


def _nullable_rules(grammar: Grammar) -> set[int]:
    """Rules that can derive the empty string (fixed point over alternatives)."""
    nullable: set[int] = set()
    changed = True
    while changed:
        changed = False
        for rule_id, rule in enumerate(grammar.rules):
            if rule_id in nullable:
                continue
            for alt in _alternatives(rule):
                if all(t == Elem.RULE_REF and v in nullable for t, v in alt):
                    nullable.add(rule_id)
                    changed = True
                    break
    return nullable


def _left_calls(grammar: Grammar, nullable: set[int]) -> list[list[tuple[int, bool]]]:
    """calls[r]: (t, grows) for each reference to t preceded only by `nullable` rules in one of
    r's alternatives; `grows` when something follows the reference (it pushes a stack entry)."""
    calls: list[list[tuple[int, bool]]] = []
    for rule in grammar.rules:
        out: list[tuple[int, bool]] = []
        for alt in _alternatives(rule):
            for i, (t, v) in enumerate(alt):
                if t != Elem.RULE_REF:
                    break
                out.append((v, i + 1 < len(alt)))
                if v not in nullable:
                    break
        calls.append(out)
    return calls


def _check_left_recursion(grammar: Grammar) -> None:
    """Reject left recursion: llama.cpp's cases, and any that would grow the stacks forever.

    llama.cpp (llama_grammar_detect_left_recursion) looks through rules with a directly empty
    alternative only, and rejects every cycle it finds. That misses recursion through rules that
    are nullable only transitively (`a ::= b a "x"`, `b ::= c`, `c ::= `), on which its matcher
    never terminates; such a cycle is rejected here when one of its calls grows the stack. Tail
    cycles through nullable rules (`S' ::= S S' |` from `(a*)*`) revisit the same stack and are
    accepted, as llama.cpp accepts them.
    """
    direct_empty = {r for r, rule in enumerate(grammar.rules) if [] in _alternatives(rule)}
    direct = _left_calls(grammar, direct_empty)
    full = _left_calls(grammar, _nullable_rules(grammar))
    for rule_id in range(len(grammar.rules)):
        if any(_left_reachable(direct, t, rule_id) for t, _ in direct[rule_id]) or any(
            grows and _left_reachable(full, t, rule_id) for t, grows in full[rule_id]
        ):
            name = grammar.names[rule_id]
            raise GrammarError(f"unsupported grammar: left recursion in rule {name!r}")


def _left_reachable(calls: list[list[tuple[int, bool]]], start: int, goal: int) -> bool:
    seen: set[int] = set()
    todo = [start]
    while todo:
        r = todo.pop()
        if r == goal:
            return True
        if r not in seen:
            seen.add(r)
            todo.extend(t for t, _ in calls[r])
    return False


def parse_gbnf(text: str) -> Grammar:
    """Parse GBNF text into a `Grammar`; raises GrammarError with line and column on bad input."""
    return _Parser(text).parse()
