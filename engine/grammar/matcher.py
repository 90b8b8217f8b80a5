"""The grammar's parse state as a set of stacks, advanced byte by byte (a lazily built DFA).

llama.cpp (`src/llama-grammar.cpp`) keeps a list of stacks of element positions; every stack top
is a terminal (a character class), an empty stack means the grammar may end. A code point
advances every stack whose top matches it (`llama_grammar_accept`), and rule references on the
new tops are expanded (`llama_grammar_advance_stack`). Tokens are decoded with its `decode_utf8`:
a UTF-8 sequence cut at the end of a token is carried as a partial code point into the next one.

Here the same semantics are run over *bytes*: a DFA state is (set of stacks, partial code point),
interned to an int, and transitions `state x byte -> state` are computed on first use and kept in
a dense (states, 256) table. Stack sets are frozensets of tuples of flat element positions.
State 0 is the dead state (no stack survives); it loops to itself. A compiled grammar is shared
by concurrent requests: new states and transitions are only created under `lock`, and readers
only ever see a transition once everything it points to exists.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.grammar.gbnf import Elem, Grammar

Stack = tuple[int, ...]  # flat element positions, top of stack last
StackSet = frozenset[Stack]

DEAD = 0
_UNKNOWN = -1
# llama.cpp decode_utf8: sequence length by the high nibble of the first byte (0 = invalid lead)
_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)
_ANY_MAX = 0xFFFFFFFF  # `.` matches whatever the lenient decoder produced


@dataclass(frozen=True)
class _Terminal:
    """A character class at one element position: ranges, sign, and the position after it."""

    ranges: tuple[tuple[int, int], ...]
    positive: bool
    next_pos: int

    def matches(self, cp: int) -> bool:
        found = any(lo <= cp <= hi for lo, hi in self.ranges)
        return found == self.positive

    def matches_partial(self, value: int, n_remain: int) -> bool:
        """llama_grammar_match_partial_char: could a sequence starting with these bits match?"""
        if n_remain < 0 or (n_remain == 1 and value < 2):  # invalid, or overlong 7-bit char
            return False
        low = value << (n_remain * 6)
        high = low | ((1 << (n_remain * 6)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n_remain, low)
        for lo, hi in self.ranges:
            if lo <= high and low <= hi:
                return self.positive
        return not self.positive


class CompiledGrammar:
    """A parsed grammar flattened into positions, with its lazily built byte-level DFA."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        flat: list[tuple[Elem, int]] = []
        self.rule_start: list[int] = []
        for rule in grammar.rules:
            self.rule_start.append(len(flat))
            flat.extend(rule)
        self._flat = flat
        self._terminals: dict[int, _Terminal] = {}
        self._alt_starts: dict[int, list[int]] = {}  # rule id -> position of each alternative
        for rule_id, start in enumerate(self.rule_start):
            starts, pos = [start], start
            while flat[pos][0] != Elem.END:
                if flat[pos][0] == Elem.ALT:
                    starts.append(pos + 1)
                pos += 1
            self._alt_starts[rule_id] = starts
        for pos, (kind, _) in enumerate(flat):
            if kind in (Elem.CHAR, Elem.CHAR_NOT, Elem.CHAR_ANY):
                self._terminals[pos] = self._terminal_at(pos)

        self.lock = threading.RLock()
        self._advance_memo: dict[Stack, StackSet] = {}
        self._stacksets: list[StackSet] = [frozenset()]
        self._stackset_ids: dict[StackSet, int] = {frozenset(): 0}
        self._cp_memo: dict[tuple[int, int], int] = {}
        # DFA state key: (stack set id, partial value, bytes still needed, strict continuation)
        self._keys: list[tuple[int, int, int, bool]] = [(0, 0, 0, False)]
        self._key_ids: dict[tuple[int, int, int, bool], int] = {self._keys[0]: DEAD}
        self.table = np.full((64, 256), _UNKNOWN, dtype=np.int32)  # (states, 256) next state
        self.table[DEAD] = DEAD
        self.end_ok = np.zeros(64, dtype=bool)  # (states,) may a token end in this state
        self.can_end = np.zeros(64, dtype=bool)  # (states,) is some stack empty (EOG allowed)
        # token masks by token trie, then by state (filled by engine.grammar.constraint); a
        # vocabulary's masks go when its trie does (its model unloaded)
        self.mask_cache: weakref.WeakKeyDictionary[Any, OrderedDict[int, npt.NDArray[np.bool_]]]
        self.mask_cache = weakref.WeakKeyDictionary()

        root_stacks: set[Stack] = set()
        for alt in self._alt_starts[grammar.root]:
            root_stacks |= self._advance(() if self._is_end(alt) else (alt,))
        self.start = self._state(self._stackset_id(frozenset(root_stacks)), 0, 0, False)

    # -- grammar elements ----------------------------------------------------------------------
    def _is_end(self, pos: int) -> bool:
        return self._flat[pos][0] in (Elem.END, Elem.ALT)

    def _terminal_at(self, pos: int) -> _Terminal:
        flat = self._flat
        kind = flat[pos][0]
        ranges: list[tuple[int, int]] = []
        while True:
            k, v = flat[pos]
            if k == Elem.CHAR_ANY:
                ranges.append((0, _ANY_MAX))
                pos += 1
            elif flat[pos + 1][0] == Elem.CHAR_RNG_UPPER:
                ranges.append((v, flat[pos + 1][1]))
                pos += 2
            else:
                ranges.append((v, v))
                pos += 1
            if flat[pos][0] != Elem.CHAR_ALT:
                break
        return _Terminal(tuple(ranges), kind != Elem.CHAR_NOT, pos)

    # -- stacks --------------------------------------------------------------------------------
    def _advance(self, stack: Stack) -> StackSet:
        """Expand rule references on top of `stack` until every top is a terminal (or empty)."""
        memo = self._advance_memo.get(stack)
        if memo is not None:
            return memo
        out: set[Stack] = set()
        seen: set[Stack] = set()
        todo = [stack]
        while todo:
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            if not cur or cur[-1] in self._terminals:
                out.add(cur)
                continue
            pos = cur[-1]
            kind, rule_id = self._flat[pos]
            assert kind == Elem.RULE_REF, "stack top must be a terminal or a rule reference"
            base = cur[:-1] if self._is_end(pos + 1) else (*cur[:-1], pos + 1)
            for alt in self._alt_starts[rule_id]:
                todo.append(base if self._is_end(alt) else (*base, alt))
        result = frozenset(out)
        self._advance_memo[stack] = result
        return result

    def _stackset_id(self, stacks: StackSet) -> int:
        sid = self._stackset_ids.get(stacks)
        if sid is None:
            sid = len(self._stacksets)
            self._stacksets.append(stacks)
            self._stackset_ids[stacks] = sid
        return sid

    def _accept_cp(self, sid: int, cp: int) -> int:
        """Stack set after one code point (llama_grammar_accept); 0 when nothing matches."""
        key = (sid, cp)
        out = self._cp_memo.get(key)
        if out is None:
            new: set[Stack] = set()
            for stack in self._stacksets[sid]:
                if not stack:
                    continue
                term = self._terminals[stack[-1]]
                if term.matches(cp):
                    rest = (
                        stack[:-1] if self._is_end(term.next_pos) else (*stack[:-1], term.next_pos)
                    )
                    new |= self._advance(rest)
            out = self._stackset_id(frozenset(new))
            self._cp_memo[key] = out
        return out

    # -- DFA states ----------------------------------------------------------------------------
    def _state(self, sid: int, value: int, n_remain: int, strict: bool) -> int:
        if sid == 0:
            return DEAD
        key = (sid, value, n_remain, strict)
        state = self._key_ids.get(key)
        if state is not None:
            return state
        state = len(self._keys)
        self._keys.append(key)
        self._key_ids[key] = state
        if state >= len(self.table):
            grow = len(self.table)
            self.table = np.vstack([self.table, np.full((grow, 256), _UNKNOWN, np.int32)])
            self.end_ok = np.concatenate([self.end_ok, np.zeros(grow, bool)])
            self.can_end = np.concatenate([self.can_end, np.zeros(grow, bool)])
        stacks = self._stacksets[sid]
        self.can_end[state] = () in stacks
        if n_remain == 0:
            self.end_ok[state] = True
        else:
            self.end_ok[state] = any(
                stack and self._terminals[stack[-1]].matches_partial(value, n_remain)
                for stack in stacks
            )
        return state

    def step(self, state: int, byte: int) -> int:
        """Next DFA state after one byte (llama.cpp decode_utf8 semantics, incl. its leniency)."""
        nxt = int(self.table[state, byte])
        if nxt != _UNKNOWN:
            return nxt
        with self.lock:
            return self._new_transition(state, byte)

    def _new_transition(self, state: int, byte: int) -> int:
        nxt = int(self.table[state, byte])
        if nxt != _UNKNOWN:  # another thread got here first
            return nxt
        sid, value, n_remain, strict = self._keys[state]
        if n_remain > 0:
            # Only a sequence continued from the previous token has its continuation bytes
            # checked; inside a token llama.cpp takes the low 6 bits of whatever follows.
            if strict and (byte >> 6) != 2:
                nxt = DEAD
            else:
                value = (value << 6) + (byte & 0x3F)
                n_remain -= 1
                nxt = (
                    self._state(sid, value, n_remain, strict)
                    if n_remain
                    else self._state(self._accept_cp(sid, value), 0, 0, False)
                )
        else:
            n_remain = _UTF8_LENGTH[byte >> 4] - 1
            if n_remain < 0:
                nxt = DEAD
            elif n_remain > 0:
                nxt = self._state(sid, byte & ((1 << (7 - n_remain)) - 1), n_remain, False)
            else:
                nxt = self._state(self._accept_cp(sid, byte), 0, 0, False)
        self.table[state, byte] = nxt
        return nxt

    def fill(self, states: npt.NDArray[np.int64], bytes_: npt.NDArray[np.int64]) -> None:
        """Compute every unknown transition among the given (state, byte) pairs."""
        pairs = np.unique(states * 256 + bytes_)
        with self.lock:
            for pair in pairs.tolist():
                self._new_transition(pair >> 8, pair & 0xFF)

    def at_token_start(self, state: int) -> int:
        """The state a new token starts from: a carried partial sequence becomes strict."""
        sid, value, n_remain, strict = self._keys[state]
        if n_remain == 0 or strict:
            return state
        with self.lock:
            return self._state(sid, value, n_remain, True)

    def is_partial(self, state: int) -> bool:
        """Does the state hold an unfinished UTF-8 sequence?"""
        return self._keys[state][2] != 0

    @property
    def n_states(self) -> int:
        return len(self._keys)
