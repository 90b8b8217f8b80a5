"""Grammar-constrained sampling: GBNF parsing, the stack matcher, and per-step token masks.

Public API: `parse_gbnf`, `compile_grammar`, `TokenTrie`, `trie_for`, `GrammarConstraint`
(see engine/grammar/constraint.py for the protocol the sampler uses).
"""

from engine.grammar.constraint import GrammarConstraint, TokenSource, compile_grammar, trie_for
from engine.grammar.gbnf import Grammar, parse_gbnf
from engine.grammar.matcher import CompiledGrammar
from engine.grammar.trie import TokenTrie, compute_mask

__all__ = [
    "CompiledGrammar",
    "Grammar",
    "GrammarConstraint",
    "TokenSource",
    "TokenTrie",
    "compile_grammar",
    "compute_mask",
    "parse_gbnf",
    "trie_for",
]
