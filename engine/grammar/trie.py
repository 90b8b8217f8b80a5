"""A byte trie over the vocabulary, and the per-step token mask computed by walking it.

The trie's nodes are stored level by level (all prefixes of length 1, then 2, ...), each with its
parent node and last byte. Computing a mask runs the grammar's byte DFA over the whole trie one
level at a time: `state[node] = table[state[parent[node]], byte[node]]` as one NumPy gather per
level, so a prefix shared by many tokens is matched once, and a dead prefix kills its subtree.
Transitions not seen before are computed by the matcher on the spot (few after warm-up).

Token acceptance follows llama.cpp `llama_grammar_apply_impl`: end-of-generation tokens are
allowed only when some stack is empty; a token whose text is empty or starts with a NUL byte is
banned; text after a NUL byte is ignored (the C string ends there).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from engine.grammar.matcher import DEAD, CompiledGrammar


class TokenTrie:
    """Byte strings of a vocabulary arranged as a level-ordered trie. Build once per vocabulary."""

    def __init__(self, pieces: Sequence[bytes], eog_ids: Iterable[int]) -> None:
        self.n_vocab = len(pieces)
        self.pieces = [p.split(b"\0", 1)[0] for p in pieces]  # llama.cpp sees C strings
        self.eog = np.zeros(self.n_vocab, dtype=bool)  # (V,)
        self.eog[list(eog_ids)] = True
        self.valid = np.array([bool(p) for p in self.pieces]) & ~self.eog  # (V,) matched by text

        prefixes = {
            p[:i]
            for p, ok in zip(self.pieces, self.valid, strict=True)
            if ok
            for i in range(1, len(p) + 1)
        }
        order = sorted(prefixes, key=lambda b: (len(b), b))
        index = {b"": 0}
        index.update((p, i) for i, p in enumerate(order, start=1))
        n_nodes = len(order) + 1
        self.parent = np.zeros(n_nodes, dtype=np.int64)  # (N,) node -> parent node
        self.byte = np.zeros(n_nodes, dtype=np.int64)  # (N,) last byte of the node's prefix
        self.parent[1:] = [index[p[:-1]] for p in order]
        self.byte[1:] = [p[-1] for p in order]
        # levels[d] = (first node, end) of prefixes of length d + 1
        lengths = np.array([len(p) for p in order], dtype=np.int64)
        bounds = np.searchsorted(lengths, np.arange(1, int(lengths.max(initial=0)) + 2)) + 1
        self.levels = list(itertools.pairwise(bounds.tolist()))
        self.token_node = np.array(  # (V,) the node of each token's full text (0 if not matched)
            [index[p] if ok else 0 for p, ok in zip(self.pieces, self.valid, strict=True)],
            dtype=np.int64,
        )

    @property
    def n_nodes(self) -> int:
        return len(self.parent)


def compute_mask(grammar: CompiledGrammar, trie: TokenTrie, state: int) -> npt.NDArray[np.bool_]:
    """Tokens allowed in `state` (a DFA state at a token boundary) -> (V,) bool."""
    node_state = np.zeros(trie.n_nodes, dtype=np.int64)  # (N,) DFA state after each prefix
    node_state[0] = state
    for start, end in trie.levels:
        parent_state = node_state[trie.parent[start:end]]
        byte = trie.byte[start:end]
        nxt = grammar.table[parent_state, byte]
        unknown = nxt < 0
        if unknown.any():
            grammar.fill(parent_state[unknown], byte[unknown])
            nxt = grammar.table[parent_state, byte]
        node_state[start:end] = nxt
        if not nxt.any():  # every prefix of this length is dead, so are all longer ones
            break
    final = node_state[trie.token_node]  # (V,)
    allowed = trie.valid & (final != DEAD) & grammar.end_ok[final]
    allowed[trie.eog] = bool(grammar.can_end[state])
    return allowed
