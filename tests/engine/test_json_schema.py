"""JSON schema -> GBNF (engine/grammar/json_schema.py).

Hypothesis builds schemas; a small random walker draws sentences from each compiled grammar;
every sentence must be accepted by the matcher, parse as JSON and validate with `jsonschema`.
"""

from __future__ import annotations

import json
import random
import string

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import GrammarError, InvalidFormat
from engine.grammar import compile_grammar, parse_gbnf
from engine.grammar.gbnf import Elem, Grammar
from engine.grammar.json_schema import (
    JSON_OBJECT_GBNF,
    grammar_for_format,
    integer_range,
    schema_to_grammar,
)

# -- a random walker over a parsed grammar ---------------------------------------------------

_NEGATED_POOL = [*string.printable, "é", "ß", "日", "本", "😀", "\u2028", "\x7f", "\x01"]


def rule_alternatives(grammar: Grammar) -> list[list[list[tuple[Elem, int]]]]:
    """Each rule of a parsed grammar as its list of alternatives (sequences without ALT/END)."""
    out = []
    for rule in grammar.rules:
        alts: list[list[tuple[Elem, int]]] = [[]]
        for elem in rule:
            if elem[0] == Elem.ALT:
                alts.append([])
            elif elem[0] != Elem.END:
                alts[-1].append(elem)
        out.append(alts)
    return out


def _terms(seq: list[tuple[Elem, int]]) -> list[tuple[str, object]]:
    """Split a sequence into ("ref", rule) and ("chars", (ranges, positive)) terms."""
    terms: list[tuple[str, object]] = []
    i = 0
    while i < len(seq):
        kind, value = seq[i]
        if kind == Elem.RULE_REF:
            terms.append(("ref", value))
            i += 1
            continue
        ranges, positive, i = char_class(seq, i, (0x20, 0x7E))  # `.` as printable ASCII
        terms.append(("chars", (ranges, positive)))
    return terms


def char_class(
    seq: list[tuple[Elem, int]], i: int, any_range: tuple[int, int]
) -> tuple[list[tuple[int, int]], bool, int]:
    """The character class starting at seq[i] as (ranges, positive, index after it); `.`
    (CHAR_ANY) stands for any_range."""
    positive = seq[i][0] != Elem.CHAR_NOT
    ranges = []
    while True:
        kind, value = seq[i]
        if kind == Elem.CHAR_ANY:
            ranges.append(any_range)
            i += 1
        elif i + 1 < len(seq) and seq[i + 1][0] == Elem.CHAR_RNG_UPPER:
            ranges.append((value, seq[i + 1][1]))
            i += 2
        else:
            ranges.append((value, value))
            i += 1
        if i >= len(seq) or seq[i][0] != Elem.CHAR_ALT:
            return ranges, positive, i


def random_sentence(grammar: Grammar, rng: random.Random, max_depth: int = 40) -> str:
    """A random string of the grammar's language; past max_depth, shortest alternatives."""
    alts = [[_terms(seq) for seq in rule] for rule in rule_alternatives(grammar)]
    inf = float("inf")
    min_len = [inf] * len(alts)
    changed = True
    while changed:  # shortest expansion length of each rule (fixed point)
        changed = False
        for r, rule in enumerate(alts):
            best = min(
                sum(1 if kind == "chars" else min_len[v] for kind, v in seq)  # type: ignore[index]
                for seq in rule
            )
            if best < min_len[r]:
                min_len[r], changed = best, True

    def seq_len(seq: list[tuple[str, object]]) -> float:
        return sum(1 if kind == "chars" else min_len[v] for kind, v in seq)  # type: ignore[index]

    out: list[str] = []

    def char(ranges: list[tuple[int, int]], positive: bool) -> str:
        if positive:
            while True:
                lo, hi = rng.choice(ranges)
                cp = rng.randint(lo, min(hi, lo + 0x300))
                if not 0xD800 <= cp <= 0xDFFF:
                    return chr(cp)
        while True:
            c = rng.choice(_NEGATED_POOL)
            if not any(lo <= ord(c) <= hi for lo, hi in ranges):
                return c

    def walk(rule: int, depth: int) -> None:
        options = alts[rule]
        if depth > max_depth:  # shortest, then fewest references (ε ends a nullable loop)
            seq = min(options, key=lambda s: (seq_len(s), sum(k == "ref" for k, _ in s)))
        else:
            seq = rng.choice([s for s in options if seq_len(s) < inf])
        for kind, value in seq:
            if kind == "ref":
                walk(value, depth + 1)  # type: ignore[arg-type]
            else:
                out.append(char(*value))  # type: ignore[misc]

    walk(grammar.root, 0)
    return "".join(out)


def _matches(grammar_text: str, text: str) -> bool:
    g = compile_grammar(grammar_text)
    state = g.start
    for byte in text.encode():
        state = g.step(state, byte)
        if state == 0:
            return False
    return bool(g.can_end[state])


# -- schema strategies -----------------------------------------------------------------------

_names = st.text(alphabet='abcxyz_- é"\\/', min_size=1, max_size=6)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(alphabet='ab é"\\\n日', max_size=5)
)


@st.composite
def _string_schema(draw: st.DrawFn) -> dict:
    schema: dict = {"type": "string"}
    kind = draw(st.sampled_from(["plain", "length", "format"]))
    if kind == "length":
        lo = draw(st.integers(0, 4))
        schema["minLength"] = lo
        if draw(st.booleans()):
            schema["maxLength"] = lo + draw(st.integers(0, 4))
    elif kind == "format":
        schema["format"] = draw(st.sampled_from(["date", "time", "date-time", "uuid", "email"]))
    return schema


@st.composite
def _numeric_schema(draw: st.DrawFn) -> dict:
    schema: dict = {"type": draw(st.sampled_from(["integer", "number"]))}
    lo = draw(st.none() | st.integers(-(10**6), 10**6))
    width = draw(st.integers(0, 10**4))
    if lo is not None:
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = lo
    if draw(st.booleans()):
        hi = (lo if lo is not None else draw(st.integers(-(10**6), 10**6))) + width + 2
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = hi
    return schema


_leaves = (
    _string_schema()
    | _numeric_schema()
    | st.sampled_from([{"type": "boolean"}, {"type": "null"}, {"type": ["string", "null"]}])
    | st.lists(_scalars, min_size=1, max_size=4).map(lambda v: {"enum": v})
    | _scalars.map(lambda v: {"const": v})
    | st.just({"description": "anything"})
)


def _extend(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    @st.composite
    def obj(draw: st.DrawFn) -> dict:
        props = draw(st.dictionaries(_names, children, max_size=4))
        schema: dict = {"type": "object", "properties": props}
        schema["required"] = [p for p in props if draw(st.booleans())]
        extra = draw(st.sampled_from(["absent", "false", "true", "schema"]))
        if extra in ("false", "true"):
            schema["additionalProperties"] = extra == "true"
        elif extra == "schema":
            schema["additionalProperties"] = draw(children)
        return schema

    @st.composite
    def arr(draw: st.DrawFn) -> dict:
        if draw(st.booleans()):
            return {
                "type": "array",
                "prefixItems": draw(st.lists(children, min_size=1, max_size=3)),
            }
        lo = draw(st.integers(0, 3))
        schema = {"type": "array", "items": draw(children), "minItems": lo}
        if draw(st.booleans()):
            schema["maxItems"] = lo + draw(st.integers(0, 3))
        return schema

    # oneOf branches of distinct types, so that exactly one branch matches any output
    disjoint = st.lists(
        st.sampled_from(["string", "integer", "boolean", "null", "array"]), min_size=1, unique=True
    ).map(
        lambda ts: {
            "oneOf": [{"type": t} if t != "array" else {"type": t, "items": {}} for t in ts]
        }
    )
    return (
        obj()
        | arr()
        | st.lists(children, min_size=1, max_size=3).map(lambda alts: {"anyOf": alts})
        | disjoint
    )


_schemas = st.recursive(_leaves, _extend, max_leaves=8)


@st.composite
def _schema_with_defs(draw: st.DrawFn) -> dict:
    body = draw(_schemas)
    if not draw(st.booleans()):
        return body
    return {
        "$defs": {"item": body},
        "type": "object",
        "properties": {"first": {"$ref": "#/$defs/item"}, "more": {"$ref": "#/$defs/item"}},
        "required": ["first"],
    }


@settings(max_examples=60, deadline=None)
@given(schema=_schema_with_defs(), seed=st.integers(0, 2**32 - 1))
def test_sentences_of_schema_grammars_validate(schema: dict, seed: int) -> None:
    grammar_text = schema_to_grammar(schema)
    grammar = parse_gbnf(grammar_text)
    rng = random.Random(seed)
    validator = jsonschema.Draft202012Validator(schema)
    for _ in range(3):
        text = random_sentence(grammar, rng)
        assert _matches(grammar_text, text), text
        validator.validate(json.loads(text))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_json_format_grammar_sentences_are_objects(seed: int) -> None:
    text = random_sentence(parse_gbnf(JSON_OBJECT_GBNF), random.Random(seed), max_depth=12)
    assert isinstance(json.loads(text), dict)


@settings(max_examples=40, deadline=None)
@given(
    lo=st.none() | st.integers(-1200, 1200),
    width=st.integers(0, 1500),
    has_hi=st.booleans(),
)
def test_integer_range_is_exact(lo: int | None, width: int, has_hi: bool) -> None:
    hi = ((lo if lo is not None else -40) + width) if has_hi else None
    text = f"root ::= {integer_range(lo, hi)}"
    window_lo = (lo if lo is not None else (hi or 0)) - 30
    window_hi = (hi if hi is not None else (lo or 0)) + 30
    for n in range(window_lo, window_hi + 1):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert _matches(text, str(n)) == inside, n
    assert not _matches(text, "-0") and not _matches(text, "007")


def test_integer_range_unbounded_side_stops_at_16_digits() -> None:
    text = f"root ::= {integer_range(5, None)}"
    assert _matches(text, "9" * 16) and not _matches(text, "1" + "0" * 16)


def test_object_property_order_and_optional_subsets() -> None:
    schema = {
        "type": "object",
        "properties": {"b": {"type": "integer"}, "a": {"type": "string"}, "c": {"const": 1}},
        "required": ["c"],
    }
    text = schema_to_grammar(schema)
    assert _matches(text, '{"c": 1, "b": 2, "a": "x"}')
    assert _matches(text, '{"c":1,"a":"x"}')
    assert not _matches(text, '{"c": 1, "a": "x", "b": 2}')  # optional ones keep schema order
    assert not _matches(text, '{"b": 2, "c": 1}')  # required ones come first
    assert not _matches(text, '{"c": 1, "d": 2}')  # no additional properties


def test_additional_property_keys_exclude_named_ones() -> None:
    text = schema_to_grammar(
        {"properties": {"ab": {"type": "null"}}, "additionalProperties": {"type": "integer"}}
    )
    assert _matches(text, '{"ab": null, "a": 1, "abc": 2, "b\\n": 3}')
    assert not _matches(text, '{"ab": 1}')
    assert not _matches(text, '{"\\": 1}')
    # keys spelling a named property differently, or ending in a lone backslash, are refused
    text = schema_to_grammar(
        {
            "properties": {"é": {"type": "null"}, "\\": {"type": "null"}},
            "additionalProperties": True,
        }
    )
    assert _matches(text, '{"\\u00e9": null, "\\\\": null, "e": 1}')
    for key in ("é", "\\u00e9", "\\u00E9", "\\\\"):
        assert not _matches(text, '{"' + key + '": 1}'), key


def test_space_rule_bounds_whitespace() -> None:
    text = schema_to_grammar({"type": "array", "items": {"type": "integer"}})
    assert _matches(text, "[\n\n" + " " * 20 + "1]")
    assert not _matches(text, "[\n\n\n1]") and not _matches(text, "[" + "\n" + " " * 21 + "1]")
    assert not _matches(text, " [1]")  # nothing before the root value


def test_empty_schema_is_an_object_and_description_only_is_any_value() -> None:
    assert _matches(schema_to_grammar({}), "{}") and not _matches(schema_to_grammar({}), "1")
    assert _matches(schema_to_grammar({"description": "x"}), '[1, "a"]')


def test_recursive_ref() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["kids"],
            }
        },
        "$ref": "#/$defs/node",
    }
    text = schema_to_grammar(schema)
    assert _matches(text, '{"kids": [{"kids": []}, {"kids": [{"kids": []}]}]}')


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "pattern": "^(?=a)a$"}, "lookarounds"),
        ({"type": "string", "pattern": "^(a)\\1$"}, "escape \\1 is not supported"),
        ({"type": "string", "pattern": "^a**$"}, "multiple repeat"),
        ({"type": "string", "pattern": "^a{3,2}$"}, "bad repetition"),
        ({"type": "string", "pattern": "^a)$"}, "unbalanced"),
        ({"type": "string", "pattern": '^["]$'}, "no JSON-safe character"),
        ({"type": "string", "pattern": "^a$", "maxLength": 3}, "pattern together with"),
        ({"not": {"type": "string"}}, "unsupported JSON schema keyword 'not'"),
        ({"properties": {"x": {"type": "number", "multipleOf": 2}}}, "#/properties/x"),
        ({"allOf": [{"type": "object"}]}, "'allOf'"),
        ({"type": "array", "items": {}, "uniqueItems": True}, "'uniqueItems'"),
        ({"type": "thing"}, "unknown type 'thing'"),
        ({"properties": {}, "required": ["a"]}, "required property 'a'"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer satisfies"),
        ({"type": "number", "minimum": 0.2, "maximum": 0.8}, "integer-valued number"),
        ({"type": "array", "items": {}, "minItems": 3, "maxItems": 2}, "maxItems 2"),
        ({"type": "string", "minLength": -1}, "minLength must be a non-negative integer"),
        ({"$ref": "https://example.com/s.json"}, "only local $ref"),
        ({"$ref": "#/$defs/missing"}, "cannot resolve"),
        ({"$ref": "#"}, "left recursion"),
        ({"enum": []}, "non-empty"),
    ],
)
def test_unsupported_or_invalid_schemas(schema: dict, message: str) -> None:
    with pytest.raises(GrammarError) as err:
        schema_to_grammar(schema)
    assert message in str(err.value)


# -- pattern ---------------------------------------------------------------------------------

_regex_atoms = st.sampled_from(
    ["a", "b", "é", "日", "\\.", "\\d", "\\w", "\\s", ".", "[a-c]", "[^ab]", "[0-9_-]", '"', "\\\\",
     "\\n", "[\\d\\-x]", "(?:ab|c)"]
)  # fmt: skip


def _regex(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quantifiers = st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{0,}", "*?"])
    return (
        st.lists(children, min_size=1, max_size=3).map("".join)
        | st.lists(children, min_size=2, max_size=3).map(lambda a: "(" + "|".join(a) + ")")
        | st.tuples(children.map(lambda r: f"(?:{r})"), quantifiers).map("".join)
    )


_patterns = st.tuples(
    st.sampled_from(["", "^"]), st.recursive(_regex_atoms, _regex, max_leaves=6),
    st.sampled_from(["", "$"]),
).map("".join)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(pattern=_patterns, seed=st.integers(0, 2**32 - 1))
def test_pattern_sentences_validate(pattern: str, seed: int) -> None:
    schema = {"type": "string", "pattern": pattern}
    grammar = parse_gbnf(schema_to_grammar(schema))
    rng = random.Random(seed)
    for _ in range(3):
        text = random_sentence(grammar, rng)
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    ("pattern", "accepted", "rejected"),
    [
        ("^[A-Z]{2}-\\d{3}$", ['"AB-123"'], ['"AB-12"', '"ab-123"', '"AB-1234"']),
        ("^(a|bc)+$", ['"abca"', '"bc"'], ['""', '"b"']),
        ("ab", ['"ab"', '"xxaby\\n"'], ['"ba"']),
        ('^say "hi"\\\\$', ['"say \\"hi\\"\\\\"'], ['"say "hi""']),
        ("^\\s$", ['" "', '"\\t"'], ['"\\u0020"']),
    ],
)
def test_pattern_examples(pattern: str, accepted: list[str], rejected: list[str]) -> None:
    text = schema_to_grammar({"type": "string", "pattern": pattern})
    for sentence in accepted:
        assert _matches(text, sentence), sentence
    for sentence in rejected:
        assert not _matches(text, sentence), sentence


def test_surrogate_escapes_are_not_generated() -> None:
    text = schema_to_grammar({"type": "string", "minLength": 2})
    assert _matches(text, '"\\u00e9\\uFFFF"')
    assert not _matches(text, '"\\ud83d\\ude00"')


def test_grammar_for_format() -> None:
    assert grammar_for_format(None) is None and grammar_for_format("") is None
    assert grammar_for_format("json") == JSON_OBJECT_GBNF
    assert grammar_for_format("json", chat=True) == schema_to_grammar({"type": "object"})
    assert _matches(grammar_for_format({"type": "integer"}) or "", "-12")
    with pytest.raises(InvalidFormat) as err:
        grammar_for_format("yaml")
    assert str(err.value) == (
        'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'
    )
    with pytest.raises(InvalidFormat, match=r'invalid format: "\[1\]"'):
        grammar_for_format([1])
    with pytest.raises(GrammarError, match="invalid JSON schema in format"):
        grammar_for_format({"type": "string", "multipleOf": 2})
