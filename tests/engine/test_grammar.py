"""GBNF parser, stack matcher and trie masks (engine/grammar).

The example grammars are llama.cpp's `grammars/*.gbnf`, written out here. Masks are checked
against a brute-force reference that decodes each token with llama.cpp's `decode_utf8` and runs
the stacks code point by code point, and, when llama_cpp is importable, against llama.cpp's own
grammar sampler on SmolLM2's vocabulary.
"""

from __future__ import annotations

import ctypes
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.errors import GrammarError
from engine.gguf.reader import GGUFFile
from engine.grammar import GrammarConstraint, TokenTrie, compile_grammar, parse_gbnf, trie_for
from engine.grammar.gbnf import Elem, Grammar
from engine.grammar.json_schema import JSON_OBJECT_GBNF, schema_to_grammar
from engine.tokenizer import Tokenizer
from tests.conftest import needs_oracle
from tests.engine.test_json_schema import char_class, random_sentence, rule_alternatives

ARITHMETIC = r"""
root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
"""

LIST = r"""
root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
"""

CHESS = r"""
# Specifies chess moves as a list in algebraic notation, using PGN conventions

# Force first move to "1. ", then any 1-2 digit number after, relying on model to follow the pattern
root    ::= "1. " move " " move "\n" ([1-9] [0-9]? ". " move " " move "\n")+
move    ::= (pawn | nonpawn | castle) [+#]?

# piece type, optional file/rank, optional capture, dest file & rank
nonpawn ::= [NBKQR] [a-h]? [1-8]? "x"? [a-h] [1-8]

# optional file & capture, dest file & rank, optional promotion
pawn    ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBKQR])?

castle  ::= "O-O" "-O"?
"""

JAPANESE = r"""
# A probably incorrect grammar for Japanese
root        ::= jp-char+ ([ \t\n] jp-char+)*
jp-char     ::= hiragana | katakana | punctuation | cjk
hiragana    ::= [ぁ-ゟ]
katakana    ::= [ァ-ヿ]
punctuation ::= [、-〾]
cjk         ::= [一-鿿]
"""

C_LIKE = r"""
root ::= (declaration)*
declaration ::= dataType identifier "(" parameter? ")" "{" statement* "}"
dataType  ::= "int" ws | "float" ws | "char" ws
identifier ::= [a-zA-Z_] [a-zA-Z_0-9]*
parameter ::= dataType identifier
statement ::=
    ( dataType identifier ws "=" ws expression ";" ) |
    ( identifier ws "=" ws expression ";" ) |
    ( "return" ws expression ";" ) |
    ( "while" "(" condition ")" "{" statement* "}" ) |
    ( singleLineComment )
condition ::= expression relationOperator expression
relationOperator ::= ("<=" | "<" | "==" | "!=" | ">=" | ">")
expression ::= term (("+" | "-") term)*
term ::= factor(("*" | "/") factor)*
factor ::= identifier | number | "-" factor | "(" ws expression ws ")"
number ::= [0-9]+
singleLineComment ::= "//" [^\n]* "\n"
ws ::= ([ \t\n]+)
"""

# (grammar, accepted complete texts, rejected texts: not even a prefix of a sentence)
EXAMPLES = {
    "json": (
        JSON_OBJECT_GBNF,
        ['{"a": [1, -2.5e3, true, null, {}], "b\\n": "\\u00e9x"}', "{}", '{ "k" : "v" } \n'],
        ['{"a": 01}', "[1]", '{"a" 1}', '{"a": tru}', ' {"a": 1}', '{"a": "\x01"}'],
    ),
    "arithmetic": (
        ARITHMETIC,
        ["a=1\n", "(x +2)*y3 =42\n", "b_1=c\nd=(e)\n"],
        ["=1\n", "A=1\n", "a==1\n"],
    ),
    "list": (LIST, ["- one\n- two three\n"], ["-one\n", "- \n", "- a\u2028b\n"]),
    "chess": (
        CHESS,
        ["1. e4 e5\n2. Nf3 Nc6\n", "1. d4 d5\n12. O-O-O Qxd8+\n"],
        ["1. e9 e5\n", "2. e4 e5\n", "1. Ke4  e5\n"],
    ),
    "japanese": (JAPANESE, ["こんにちは 世界", "カタカナ、ひらがな"], ["abc", "こんにちは  世界"]),
    "c": (
        C_LIKE,
        ["int main(){x = 1;return x;}", "float f(int a){while(a<10){a = a+1;}}", ""],
        ["int (){}", "main(){}", "int f(){return;}"],
    ),
}


def _text_allowed(grammar: str, text: str) -> tuple[bool, bool]:
    """(every byte accepted, grammar can end) for `text` fed as one token per byte."""
    g = compile_grammar(grammar)
    state = g.start
    for byte in text.encode():
        state = g.step(state, byte)
        if state == 0:
            return False, False
    return True, bool(g.can_end[state])


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_grammars_accept_and_reject(name: str) -> None:
    text, good, bad = EXAMPLES[name]
    parse_gbnf(text)
    for sentence in good:
        assert _text_allowed(text, sentence) == (True, True), sentence
    for sentence in bad:
        assert _text_allowed(text, sentence)[0] is False, sentence


def test_prefix_is_not_complete() -> None:
    ok, complete = _text_allowed(CHESS, "1. e4 e5\n2. Nf3")
    assert ok and not complete


def test_parse_structure_follows_llama_cpp_rewrites() -> None:
    g = parse_gbnf('root ::= "ab" [^x-z.] a{2,3}\na ::= .\n')
    root = g.rules[g.root]
    assert root[:5] == (
        (Elem.CHAR, ord("a")),
        (Elem.CHAR, ord("b")),
        (Elem.CHAR_NOT, ord("x")),
        (Elem.CHAR_RNG_UPPER, ord("z")),
        (Elem.CHAR_ALT, ord(".")),
    )
    a = g.names.index("a")
    # a{2,3} -> a a root_N where root_N ::= a |
    assert root[5:7] == ((Elem.RULE_REF, a), (Elem.RULE_REF, a))
    helper = root[7][1]
    assert g.rules[helper] == ((Elem.RULE_REF, a), (Elem.ALT, 0), (Elem.END, 0))
    assert g.rules[a] == ((Elem.CHAR_ANY, 0), (Elem.END, 0))


@pytest.mark.parametrize(
    ("text", "accepted", "rejected"),
    [
        (r'root ::= "\x41\u00e9\U0001F600\t\\\"\[\]"', 'A\u00e9\U0001f600\t\\"[]', "A"),
        ('root ::= [a-c]{2} | "x"{3,}', "ab", "xx"),
        ('root ::= ("a" | "b")? "c" # comment\n', "bc", "abc"),
        ("root ::= [^abc]+", "xyz", "xa"),
        ('root ::= ( "a"\n  "b" )*', "abab", "aba"),
        ('root ::= "a"{0,2} "b"', "aab", "aaab"),
        ('root ::= ("a"* "b"?)* "."', "aab.", "c"),  # tail recursion through nullable rules
    ],
)
def test_parser_features(text: str, accepted: str, rejected: str) -> None:
    assert _text_allowed(text, accepted) == (True, True)
    ok, complete = _text_allowed(text, rejected)
    assert not (ok and complete)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root ::= foo\n", "undefined rule identifier 'foo'"),
        ('item ::= "a"\n', "does not contain a 'root'"),
        ('root ::= root "a" | "b"\n', "left recursion"),
        ('root ::= a "x"\na ::= b root\nb ::= "c"?\n', "left recursion"),
        ('root ::= a "x"\na ::= b root "y"\nb ::= c\nc ::= "c"?\n', "left recursion"),
        ("root ::= x\nx ::= x\n", "left recursion in rule 'x'"),
        ('root ::= "\\q"\n', "line 1, column 11: unknown escape"),
        ('root ::= "abc\n', "unexpected end of input"),
        ("root ::= [a-\n", "end of input in character class"),
        ('root ::= "a"{2001}\n', "exceeds 2000"),
        ('root ::= "a"{3,2}\n', "max < min"),
        ("root ::= *\n", "expecting an item"),
        ('root ::= "a"\n\nx := "b"\n', "line 3, column 3: expecting ::="),
        ('root ::= ( "a" \n', "expecting ')'"),
        ("root ::= <[12]>\n", "token terminals"),
        ('root ::= "a" "b" )\n', "expecting newline or end"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(GrammarError, match=None) as err:
        parse_gbnf(text)
    assert message in str(err.value)


# -- brute-force reference: llama.cpp's decode_utf8 and stacks, one token at a time ---------


def _decode_utf8(data: bytes, partial: tuple[int, int]) -> tuple[list[int], tuple[int, int]]:
    """llama.cpp decode_utf8: code points and the trailing partial (value, n_remain)."""
    lookup = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)
    data = data.split(b"\0", 1)[0]
    value, n_remain = partial
    pos, cps = 0, []
    while pos < len(data) and n_remain > 0:
        if data[pos] >> 6 != 2:
            return [], (0, -1)
        value = (value << 6) + (data[pos] & 0x3F)
        pos += 1
        n_remain -= 1
    if partial[1] > 0 and n_remain == 0:
        cps.append(value)
    while pos < len(data):
        n_remain = lookup[data[pos] >> 4] - 1
        if n_remain < 0:
            return [], (0, -1)
        value = data[pos] & ((1 << (7 - n_remain)) - 1)
        pos += 1
        while pos < len(data) and n_remain > 0:
            value = (value << 6) + (data[pos] & 0x3F)
            pos += 1
            n_remain -= 1
        if n_remain == 0:
            cps.append(value)
    return cps, (value, n_remain)


class _Reference:
    """Stacks of (rule, alternative, index) over the parsed grammar, no DFA, no trie."""

    def __init__(self, grammar: Grammar) -> None:
        self.alts = rule_alternatives(grammar)
        self.stacks = self.expand(
            {((grammar.root, a, 0),) for a in range(len(self.alts[grammar.root]))}
        )
        self.partial = (0, 0)

    def expand(self, stacks: set[tuple[tuple[int, int, int], ...]]) -> set:
        out, todo = set(), list(stacks)
        while todo:
            stack = todo.pop()
            if not stack:
                out.add(stack)
                continue
            rule, alt, i = stack[-1]
            seq = self.alts[rule][alt]
            if i == len(seq):
                todo.append(stack[:-1])
            elif seq[i][0] == Elem.RULE_REF:
                base = (*stack[:-1], (rule, alt, i + 1))
                todo.extend((*base, (seq[i][1], a, 0)) for a in range(len(self.alts[seq[i][1]])))
            else:
                out.add(stack)
        return out

    def char_class(self, stack: tuple) -> tuple[list[tuple[int, int]], bool, int]:
        rule, alt, i = stack[-1]
        return char_class(self.alts[rule][alt], i, (0, 2**32))

    def advance(self, stacks: set, cp: int) -> set:
        new = set()
        for stack in stacks:
            if stack:
                ranges, positive, nxt = self.char_class(stack)
                if any(lo <= cp <= hi for lo, hi in ranges) == positive:
                    rule, alt, _ = stack[-1]
                    new |= self.expand({(*stack[:-1], (rule, alt, nxt))})
        return new

    def partial_ok(self, stack: tuple, value: int, n: int) -> bool:
        if n < 0 or (n == 1 and value < 2):
            return False
        low = value << (6 * n)
        high = low | ((1 << (6 * n)) - 1)
        if low == 0:
            low = {2: 1 << 11, 3: 1 << 16}.get(n, 0)
        ranges, positive, _ = self.char_class(stack)
        if any(lo <= high and low <= hi for lo, hi in ranges):
            return positive
        return not positive

    def allows(self, piece: bytes) -> bool:
        if not piece.split(b"\0", 1)[0]:
            return False
        cps, (value, n) = _decode_utf8(piece, self.partial)
        if n < 0:
            return False
        stacks = self.stacks
        for cp in cps:
            stacks = self.advance(stacks, cp)
        if n == 0:
            return bool(stacks)
        return any(s and self.partial_ok(s, value, n) for s in stacks)

    def accept(self, piece: bytes) -> None:
        """llama_grammar_accept_token: empty stacks are dropped, the rest advanced."""
        cps, self.partial = _decode_utf8(piece, self.partial)
        self.stacks = {s for s in self.stacks if s}
        for cp in cps:
            self.stacks = self.advance(self.stacks, cp)


TINY_GRAMMARS = [
    JSON_OBJECT_GBNF,
    ARITHMETIC,
    JAPANESE,
    r'root ::= ([^a\u00e9] | "\u00e9\u00e9" | [\U0001F600-\U0001F64F])* "!"',
    r'root ::= "x" . "y" [^\x00-\x7F]{1,2} "z"?',
]
_BYTES = st.sampled_from(
    [b"{", b"}", b'"', b":", b",", b" ", b"1", b"a", b"=", b"\n", b"(", b"!", b"x", b"y", b"z"]
    + [ch.encode() for ch in "éこ世ア、😀"]
)
_TOKEN = st.lists(_BYTES, min_size=1, max_size=3).map(b"".join) | st.binary(min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    grammar=st.sampled_from(TINY_GRAMMARS),
    vocab=st.lists(_TOKEN, min_size=3, max_size=40, unique=True),
    choices=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
)
def test_mask_matches_brute_force(grammar: str, vocab: list[bytes], choices: list[int]) -> None:
    pieces = [*vocab, b"", b"\0x", b"<eos>"]
    eog = len(pieces) - 1
    constraint = GrammarConstraint(compile_grammar(grammar), TokenTrie(pieces, [eog]))
    ref = _Reference(parse_gbnf(grammar))
    for choice in choices:
        expected = np.array([ref.allows(p) for p in pieces[:-1]] + [() in ref.stacks])
        mask = constraint.mask()
        np.testing.assert_array_equal(mask, expected)
        assert [constraint.accepts(t) for t in range(len(pieces))] == mask.tolist()
        assert constraint.is_complete() == (() in ref.stacks)
        allowed = np.flatnonzero(mask[:-1])
        if not len(allowed):
            break
        token = int(allowed[choice % len(allowed)])
        constraint.accept(token)
        ref.accept(pieces[token])


def test_partial_utf8_across_tokens() -> None:
    pieces = [b"{", b'"', b"\xe3", b"\x81", b"\x93", b"\x81\x93", b"a", b"}", b"</s>"]
    c = GrammarConstraint(compile_grammar(JSON_OBJECT_GBNF), TokenTrie(pieces, [8]))
    for t in [0, 1, 2]:  # {"  then the first byte of こ
        c.accept(t)
    # only continuation bytes may follow; a lone one leaves the sequence still partial
    assert c.mask().tolist() == [False, False, False, True, True, True, False, False, False]
    c.accept(3)
    assert c.accepts(4) and not c.accepts(6)  # the sequence must finish first
    c.accept(4)
    assert c.accepts(1) and c.accepts(6)


def test_accept_rejects_disallowed_token_and_eog() -> None:
    c = GrammarConstraint(
        compile_grammar(JSON_OBJECT_GBNF), TokenTrie([b"{", b"}", b"x", b"E"], [3])
    )
    with pytest.raises(GrammarError, match="not allowed"):
        c.accept(2)
    c.accept(0)
    assert not c.is_complete() and not c.accepts(3)
    with pytest.raises(GrammarError):
        c.accept(3)
    c.accept(1)
    assert c.is_complete() and c.accepts(3)
    c.accept(3)


def test_mask_cache_is_shared_and_read_only() -> None:
    g = compile_grammar(JSON_OBJECT_GBNF)
    trie = TokenTrie([b"{", b"}", b" "], [])
    m1 = GrammarConstraint(g, trie).mask()
    m2 = GrammarConstraint(g, trie).mask()
    assert m1 is m2 and not m1.flags.writeable


# -- llama.cpp's own grammar sampler on SmolLM2's vocabulary ---------------------------------

ORACLE_CASES = [
    (
        JSON_OBJECT_GBNF,
        json.dumps({"name": "Zoë", "n": [1, -2.5e3, None], "s": "日本語 😀"}, ensure_ascii=False),
    ),
    (ARITHMETIC, "(x +2)*y3 =42\nb=c\n"),
    (CHESS, "1. e4 e5\n2. Nf3 Nc6\n3. O-O Qxd8+\n"),
    (JAPANESE, "こんにちは 世界、カタカナ"),
    (  # a converted schema: llama.cpp must parse our GBNF and mask exactly as we do
        schema_to_grammar(
            {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(x|y)*$"},
                    "n": {"type": "integer", "minimum": -5, "maximum": 300},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}},
                    "when": {"type": "string", "format": "date-time"},
                },
                "required": ["code", "n"],
                "additionalProperties": {"type": "boolean"},
            }
        ),
        '{"code": "AB-123xy", "n": 42, "tags": ["x", "日本"], "when": "2024-01-31T12:00:00Z",'
        '\n  "extra": true}',
    ),
]


@dataclass
class _LlamaVocab:
    """SmolLM2's vocabulary loaded into llama.cpp (no weights), and our tokenizer beside it."""

    lib: Any
    vocab: Any
    n_vocab: int
    tokenizer: Tokenizer


@pytest.fixture(scope="module")
def llama_vocab(smollm2_path: Path) -> Iterator[_LlamaVocab]:
    import llama_cpp as L

    params = L.llama_model_default_params()
    params.vocab_only = True
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(smollm2_path).encode(), params)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    tokenizer = Tokenizer.from_gguf(GGUFFile(smollm2_path))
    assert sorted(tokenizer.eog_ids) == [
        t for t in range(n_vocab) if L.llama_vocab_is_eog(vocab, t)
    ]
    yield _LlamaVocab(L, vocab, n_vocab, tokenizer)
    L.llama_model_free(model)


def _compare_with_llama_cpp(
    llama: _LlamaVocab, grammar: str, ids: list[int], walk: random.Random | None = None
) -> bool:
    """Feed `ids` to our constraint and to llama.cpp's grammar sampler, comparing the full mask
    before every token and after the last; returns whether the grammar may end there.

    With `walk`, when `ids` is empty the tokens are drawn instead: up to 24, each uniformly from
    the non-end-of-generation tokens llama.cpp allows at that step, stopping early only when it
    allows none."""
    L = llama.lib
    sampler = L.llama_sampler_init_grammar(llama.vocab, grammar.encode(), b"root")
    try:
        ours = GrammarConstraint(compile_grammar(grammar), trie_for(llama.tokenizer))
    except GrammarError:
        assert not sampler, "llama.cpp accepted a grammar we rejected"
        return False
    assert sampler, "llama.cpp rejected a grammar we accepted"
    data = (L.llama_token_data * llama.n_vocab)()
    view = np.ctypeslib.as_array(data)
    try:
        eog = np.zeros(llama.n_vocab, dtype=bool)
        eog[list(llama.tokenizer.eog_ids)] = True
        queue = list(ids)
        draw = walk if not ids else None
        step = 0
        while True:
            view["id"] = np.arange(llama.n_vocab)
            view["logit"] = 0.0
            arr = L.llama_token_data_array(data=data, size=llama.n_vocab, selected=-1, sorted=False)
            L.llama_sampler_apply(sampler, ctypes.byref(arr))
            expected = np.isfinite(view["logit"])
            np.testing.assert_array_equal(ours.mask(), expected, err_msg=f"step {step}")
            if draw is not None and step < 24:
                allowed = np.flatnonzero(expected & ~eog)
                if not len(allowed):
                    break
                queue.append(int(allowed[draw.randrange(len(allowed))]))
            if step == len(queue):
                break
            ours.accept(queue[step])
            L.llama_sampler_accept(sampler, queue[step])
            step += 1
        return ours.is_complete()
    finally:
        L.llama_sampler_free(sampler)


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize(("grammar", "text"), ORACLE_CASES)
def test_masks_match_llama_cpp(llama_vocab: _LlamaVocab, grammar: str, text: str) -> None:
    ids = llama_vocab.tokenizer.encode(text, add_special=False, parse_special=False)
    assert _compare_with_llama_cpp(llama_vocab, grammar, ids)


_GBNF_CHARS = 'abcxz -é日\n"\\[]^'


def _gbnf_char(c: str) -> str:
    return {"\n": "\\n", '"': '\\"', "\\": "\\\\", "[": "\\[", "]": "\\]"}.get(c, c)


@st.composite
def _gbnf_grammars(draw: st.DrawFn) -> str:
    """A random GBNF grammar: rules reference only later rules (no left recursion). Kept small:
    ambiguous grammars (nested `.*`) carry thousands of stacks, which this engine walks in
    Python at seconds per mask."""
    n_rules = draw(st.integers(1, 2))
    names = ["root"] + [f"r{i}" for i in range(1, n_rules)]

    def term(rule: int, depth: int) -> str:
        kinds = ["literal", "class", "any"] + (["ref"] if rule + 1 < n_rules else [])
        kinds += ["group"] if depth < 1 else []
        kind = draw(st.sampled_from(kinds))
        if kind == "literal":
            text = draw(st.text(alphabet=_GBNF_CHARS, min_size=1, max_size=3))
            out = '"' + "".join(_gbnf_char(c) for c in text) + '"'
        elif kind == "class":
            pairs = draw(st.lists(st.tuples(*[st.sampled_from(_GBNF_CHARS)] * 2), min_size=1,
                                  max_size=3))  # fmt: skip
            items = "".join(
                _gbnf_char(min(a, b)) + ("-" + _gbnf_char(max(a, b)) if a != b else "")
                for a, b in pairs
            )
            out = f"[{'^' if draw(st.booleans()) else ''}{items}]"
        elif kind == "any":
            out = "."
        elif kind == "ref":
            out = names[draw(st.integers(rule + 1, n_rules - 1))]
        else:
            out = f"({alternatives(rule, depth + 1)})"
        return out + draw(st.sampled_from(["", "", "*", "+", "?", "{2}", "{0,2}", "{1,}"]))

    def alternatives(rule: int, depth: int) -> str:
        seqs = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        return " | ".join(" ".join(term(rule, depth) for _ in range(n)) for n in seqs)

    return "\n".join(f"{names[i]} ::= {alternatives(i, 0)}" for i in range(n_rules)) + "\n"


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grammar=_gbnf_grammars(), seed=st.integers(0, 2**32 - 1))
@example(grammar='root ::= [\\n- ] "\\["\nr1 ::= "\\["\n', seed=687)  # "\x1d[" -> ids of "["
def test_random_grammars_mask_like_llama_cpp(
    llama_vocab: _LlamaVocab, grammar: str, seed: int
) -> None:
    try:
        sentence = random_sentence(parse_gbnf(grammar), random.Random(seed), max_depth=8)
    except GrammarError:
        sentence = ""
    ids = llama_vocab.tokenizer.encode(sentence, add_special=False, parse_special=False)
    if llama_vocab.tokenizer.decode(ids) != sentence:  # BPE drops some control characters
        ids = []
    # No sentence (or one the tokenizer cannot spell): walk llama.cpp's masks instead.
    _compare_with_llama_cpp(llama_vocab, grammar, ids[:24], walk=random.Random(seed))


def test_compiled_grammars_are_cached_until_their_dfa_grows_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.grammar.constraint as constraint

    text = 'root ::= [a-z]+ "!"'
    g = compile_grammar(text)
    assert compile_grammar(text) is g
    for byte in b"abc":
        g.step(g.start, byte)
    monkeypatch.setattr(constraint, "_MAX_SHARED_STATES", g.n_states - 1)
    fresh = compile_grammar(text)
    assert fresh is not g and compile_grammar(text) is fresh
