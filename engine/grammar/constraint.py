"""The per-request grammar constraint the sampler talks to.

    c = GrammarConstraint(compile_grammar(gbnf_text), trie_for(tokenizer))
    c.accepts(t)   # is token t allowed now? (the sampler's check-first test, spec §7.1)
    c.mask()       # (V,) bool of allowed tokens (the resample path)
    c.accept(t)    # advance; raises GrammarError if t is not allowed
    c.is_complete()  # could the grammar end here (EOG allowed)?

Compiled grammars (with their DFA) are cached by text and token tries by tokenizer, so both are
reused across requests; masks are cached per (vocabulary, DFA state). A tokenizer's trie and
masks live as long as the tokenizer, so unloading a model frees them.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.errors import GrammarError
from engine.grammar.gbnf import parse_gbnf
from engine.grammar.matcher import DEAD, CompiledGrammar
from engine.grammar.trie import TokenTrie, compute_mask

_MASK_CACHE_SIZE = 256  # masks kept per compiled grammar: ~V bytes each


class TokenSource(Protocol):
    """What the constraint needs from a tokenizer (engine/tokenizer)."""

    n_vocab: int
    eog_ids: frozenset[int]

    def token_bytes(self, token: int) -> bytes: ...


_GRAMMAR_CACHE_SIZE = 32
_MAX_SHARED_STATES = 32768  # a DFA grown past this (~1 KiB of table per state) starts afresh
_grammars: OrderedDict[str, CompiledGrammar] = OrderedDict()
_grammars_lock = threading.Lock()
_tries: weakref.WeakKeyDictionary[TokenSource, TokenTrie] = weakref.WeakKeyDictionary()
_tries_lock = threading.Lock()


def compile_grammar(text: str) -> CompiledGrammar:
    """Parse and compile GBNF text (cached: the DFA built by one request serves the next)."""
    with _grammars_lock:
        grammar = _grammars.get(text)
        if grammar is not None and grammar.n_states <= _MAX_SHARED_STATES:
            _grammars.move_to_end(text)
            return grammar
    grammar = CompiledGrammar(parse_gbnf(text))
    with _grammars_lock:
        _grammars[text] = grammar
        if len(_grammars) > _GRAMMAR_CACHE_SIZE:
            _grammars.popitem(last=False)
    return grammar


def trie_for(tokenizer: TokenSource) -> TokenTrie:
    """The token trie of a tokenizer, built once and kept while the tokenizer lives. Pieces are
    the texts llama.cpp matches: token_to_piece with special tokens rendered."""
    with _tries_lock:
        trie = _tries.get(tokenizer)
    if trie is None:
        pieces = [tokenizer.token_bytes(t) for t in range(tokenizer.n_vocab)]
        built = TokenTrie(pieces, tokenizer.eog_ids)
        with _tries_lock:
            trie = _tries.setdefault(tokenizer, built)
    return trie


class GrammarConstraint:
    """Grammar state for one generation: which tokens may come next, and advancing by one."""

    def __init__(self, grammar: CompiledGrammar | str, trie: TokenTrie) -> None:
        self.grammar = compile_grammar(grammar) if isinstance(grammar, str) else grammar
        self.trie = trie
        self.state = self.grammar.start
        # llama.cpp drops empty stacks whenever it accepts a token (llama_grammar_accept_token);
        # they come back only through a completed code point. After a token that completed
        # none (only bytes of an unfinished UTF-8 sequence) the grammar therefore cannot end.
        self._ended_mid_char = False
        with self.grammar.lock:
            self._masks = self.grammar.mask_cache.setdefault(trie, OrderedDict())

    def is_complete(self) -> bool:
        """True when some parse stack is empty: the grammar may end, so EOG is allowed."""
        return bool(self.grammar.can_end[self.state]) and not self._ended_mid_char

    def _walk(self, token: int) -> tuple[int, bool]:
        """(state after the token's bytes, whether any code point was completed)."""
        state = self.grammar.at_token_start(self.state)
        completed = False
        for byte in self.trie.pieces[token]:
            state = self.grammar.step(state, byte)
            if state == DEAD:
                break
            completed = completed or not self.grammar.is_partial(state)
        return state, completed

    def accepts(self, token: int) -> bool:
        """Is `token` allowed in the current state? Walks only this token's bytes."""
        if self.trie.eog[token]:
            return self.is_complete()
        if not self.trie.valid[token]:
            return False
        state, _ = self._walk(token)
        return state != DEAD and bool(self.grammar.end_ok[state])

    def mask(self) -> npt.NDArray[np.bool_]:
        """(V,) bool, True for the tokens allowed now. Read-only; cached per state."""
        start = self.grammar.at_token_start(self.state)
        key = 2 * start + self._ended_mid_char
        with self.grammar.lock:  # the cache is shared by concurrent requests
            mask = self._masks.get(key)
            if mask is not None:
                self._masks.move_to_end(key)
                return mask
        mask = compute_mask(self.grammar, self.trie, start)
        mask[self.trie.eog] &= not self._ended_mid_char
        mask.setflags(write=False)
        with self.grammar.lock:
            self._masks[key] = mask
            if len(self._masks) > _MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return mask

    def accept(self, token: int) -> None:
        """Advance by `token`. Raises GrammarError when the grammar does not allow it."""
        if not self.accepts(token):
            piece = self.trie.pieces[token]
            raise GrammarError(f"token {token} ({piece!r}) is not allowed by the grammar here")
        if not self.trie.eog[token]:
            self.state, completed = self._walk(token)
            self._ended_mid_char = not completed
