"""JSON schema -> GBNF: the converter (see engine/grammar/json_schema/__init__.py for what it
covers).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from engine.errors import GrammarError, InvalidFormat
from engine.grammar.gbnf import parse_gbnf
from engine.grammar.json_schema.pattern import JSON_CHAR, pattern_rule
from engine.grammar.json_schema.ranges import integer_range

# Ollama's fixed grammar for `format: "json"` on the completion path (spec/sampling.md §7.2):
# llama.cpp's grammars/json.gbnf with an object at the root and unbounded whitespace.
JSON_OBJECT_GBNF = r"""root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) # escapes
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]*)) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= ([ \t\n] ws)?
"""

# Whitespace between JSON tokens, bounded so a model cannot run away with it.
SPACE_RULE = r'| " " | "\n"{1,2} [ \t]{0,20}'

# name -> (rule body, rules it references)
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": (
        '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
        ("integral-part", "decimal-part"),
    ),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        '"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
        ("string", "value"),
    ),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "uuid": (
        r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
        r'[0-9a-fA-F]{12} "\""',
        (),
    ),
    "char": (JSON_CHAR, ()),
    "string": (r'"\"" char* "\""', ("char",)),
    "null": ('"null"', ()),
    "date": (
        '[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )',
        (),
    ),
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
        '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
        (),
    ),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": (r'"\"" date "\""', ("date",)),
    "time-string": (r'"\"" time "\""', ("time",)),
    "date-time-string": (r'"\"" date-time "\""', ("date-time",)),
}
STRING_FORMATS = ("date", "time", "date-time")
RESERVED_NAMES = {"root", "dot", "space", *PRIMITIVES}

# Keywords that only annotate, or that this converter enforces.
_KNOWN_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions",
    "minLength", "maxLength", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "title", "description", "default", "examples", "$schema", "$id",
    "$comment", "nullable", "readOnly", "writeOnly", "deprecated", "pattern",
}  # fmt: skip
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\r", "\\r") + '"'


def _class_char(c: str) -> str:
    """One character written safely inside a GBNF character class."""
    if c.isascii() and c.isalnum():
        return c
    cp = ord(c)
    return f"\\x{cp:02X}" if cp <= 0xFF else f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


def _repetition(item: str, lo: int, hi: int | None, sep: str | None = None) -> str:
    """GBNF for `lo..hi` repetitions of `item` (hi None: unbounded), optionally separated."""
    if hi == 0:
        return ""
    if lo == 0 and hi == 1:
        return f"{item}?"
    if sep is None:
        if hi is None:
            return {0: f"{item}*", 1: f"{item}+"}.get(lo, f"{item}{{{lo},}}")
        return f"{item}{{{lo},{hi}}}"
    rest = _repetition(f"({sep} {item})", max(lo - 1, 0), None if hi is None else hi - 1)
    body = f"{item} {rest}"
    return f"({body})?" if lo == 0 else body


def _bounds(schema: Mapping[str, Any], path: str, integral: bool) -> tuple[int | None, int | None]:
    """Inclusive integer bounds from minimum/maximum/exclusiveMinimum/exclusiveMaximum."""
    values = {}
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            v = schema[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise GrammarError(f"{path}: {key} must be a finite number, got {v!r}")
            values[key] = v
    lows = [math.ceil(values["minimum"])] if "minimum" in values else []
    if "exclusiveMinimum" in values:
        lows.append(math.floor(values["exclusiveMinimum"]) + 1)
    highs = [math.floor(values["maximum"])] if "maximum" in values else []
    if "exclusiveMaximum" in values:
        highs.append(math.ceil(values["exclusiveMaximum"]) - 1)
    lo, hi = max(lows, default=None), min(highs, default=None)
    if lo is not None and hi is not None and lo > hi:
        kind = "integer" if integral else "integer-valued number"
        raise GrammarError(f"{path}: no {kind} satisfies the range {values}")
    return lo, hi


def _count(schema: Mapping[str, Any], key: str, path: str) -> int | None:
    v = schema.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise GrammarError(f"{path}: {key} must be a non-negative integer, got {v!r}")
    return v


class _Converter:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {"space": SPACE_RULE}
        self.refs_in_progress: set[str] = set()

    def add_rule(self, name: str, body: str) -> str:
        key = _INVALID_NAME_CHARS.sub("-", name) or "r"
        if key in self.rules and self.rules[key] != body:
            i = 0
            while f"{key}{i}" in self.rules and self.rules[f"{key}{i}"] != body:
                i += 1
            key = f"{key}{i}"
        self.rules[key] = body
        return key

    def add_primitive(self, name: str, primitive: str) -> str:
        body, deps = PRIMITIVES[primitive]
        key = self.add_rule(name, body)
        for dep in deps:
            if dep not in self.rules:
                self.add_primitive(dep, dep)
        return key

    def resolve(self, ref: str, path: str) -> Any:
        if not ref.startswith("#"):
            raise GrammarError(f"{path}: only local $ref ('#/...') is supported, got {ref!r}")
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                raise GrammarError(f"{path}: cannot resolve $ref {ref!r}")
        return target

    def visit_ref(self, ref: str, path: str) -> str:
        name = "ref" + _INVALID_NAME_CHARS.sub("-", ref[1:])
        if name not in self.rules and ref not in self.refs_in_progress:
            self.refs_in_progress.add(ref)
            name = self.visit(self.resolve(ref, path), name, ref)
            self.refs_in_progress.discard(ref)
        return name

    def visit(self, schema: Any, name: str, path: str) -> str:
        """Add the rules for `schema` and return the name of the rule matching it."""
        rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
        if schema is True:
            schema = {"description": "any value"}
        if not isinstance(schema, dict):
            raise GrammarError(f"{path}: expected a schema object, got {json.dumps(schema)}")
        unknown = sorted(set(schema) - _KNOWN_KEYWORDS)
        if unknown:
            raise GrammarError(f"{path}: unsupported JSON schema keyword {unknown[0]!r}")
        schema_type = schema.get("type")
        for t in schema_type if isinstance(schema_type, list) else [schema_type]:
            if t is not None and t not in _TYPES:
                raise GrammarError(f"{path}: unknown type {t!r}")
        sub = f"{name}-" if name else ""

        if "$ref" in schema:
            return self.add_rule(rule_name, self.visit_ref(schema["$ref"], path))
        if "oneOf" in schema or "anyOf" in schema:
            key = "oneOf" if "oneOf" in schema else "anyOf"
            alts = schema[key]
            if not isinstance(alts, list) or not alts:
                raise GrammarError(f"{path}: {key} must be a non-empty list")
            base = name if name else "alternative"
            return self.add_rule(
                rule_name,
                " | ".join(
                    self.visit(alt, f"{base}-{i}", f"{path}/{key}/{i}")
                    for i, alt in enumerate(alts)
                ),
            )
        if isinstance(schema_type, list):
            if not schema_type:
                raise GrammarError(f"{path}: type list is empty")
            return self.add_rule(
                rule_name,
                " | ".join(
                    self.visit({**schema, "type": t}, f"{sub}{t}" if name else t, path)
                    for t in schema_type
                ),
            )
        if "const" in schema:
            return self.add_rule(rule_name, _literal(json.dumps(schema["const"])))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GrammarError(f"{path}: enum must be a non-empty list")
            body = " | ".join(_literal(json.dumps(v)) for v in values)
            return self.add_rule(rule_name, f"({body})")
        if schema_type in (None, "object") and (
            "properties" in schema
            or ("additionalProperties" in schema and schema["additionalProperties"] is not True)
        ):
            return self.add_rule(rule_name, self.object_rule(schema, name, path))
        if schema_type in (None, "array") and ("items" in schema or "prefixItems" in schema):
            return self.add_rule(rule_name, self.array_rule(schema, name, path))
        if schema_type in (None, "string") and "pattern" in schema:
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise GrammarError(f"{path}: pattern must be a string, got {pattern!r}")
            if "minLength" in schema or "maxLength" in schema:
                raise GrammarError(f"{path}: pattern together with minLength/maxLength")
            return self.add_rule(rule_name, pattern_rule(pattern, path))
        if schema_type in (None, "string") and str(schema.get("format", "")).startswith("uuid"):
            return self.add_primitive("root" if rule_name == "root" else "uuid", "uuid")
        if schema_type in (None, "string") and schema.get("format") in STRING_FORMATS:
            prim = f"{schema['format']}-string"
            return self.add_rule(rule_name, self.add_primitive(prim, prim))
        if schema_type == "string" and ("minLength" in schema or "maxLength" in schema):
            lo = _count(schema, "minLength", path) or 0
            hi = _count(schema, "maxLength", path)
            if hi is not None and hi < lo:
                raise GrammarError(f"{path}: maxLength {hi} is below minLength {lo}")
            char = self.add_primitive("char", "char")
            return self.add_rule(rule_name, rf'"\"" {_repetition(char, lo, hi)} "\""')
        has_range = any(
            k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        )
        if schema_type in (None, "integer", "number") and has_range:
            lo, hi = _bounds(schema, path, integral=schema_type != "number")
            return self.add_rule(rule_name, f"({integer_range(lo, hi)})")
        if schema_type == "object" or not schema:
            return self.add_rule(rule_name, self.add_primitive("object", "object"))
        if schema_type is None:
            return self.add_rule(rule_name, self.add_primitive("value", "value"))
        return self.add_primitive("root" if rule_name == "root" else schema_type, schema_type)

    def array_rule(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        sub = f"{name}-" if name else ""
        items = schema.get("items", schema.get("prefixItems"))
        if isinstance(items, list):
            parts = [
                self.visit(item, f"{sub}tuple-{i}", f"{path}/items/{i}")
                for i, item in enumerate(items)
            ]
            return '"[" space ' + ' "," space '.join(parts) + ' space "]"'
        if items is False:
            raise GrammarError(f"{path}: items: false is not supported")
        item_rule = self.visit(items, f"{sub}item", f"{path}/items")
        lo = _count(schema, "minItems", path) or 0
        hi = _count(schema, "maxItems", path)
        if hi is not None and hi < lo:
            raise GrammarError(f"{path}: maxItems {hi} is below minItems {lo}")
        items_rule = _repetition(item_rule, lo, hi, sep='"," space')
        return f'"[" space {items_rule} space "]"'

    def object_rule(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        sub = f"{name}-" if name else ""
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise GrammarError(f"{path}: properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list):
            raise GrammarError(f"{path}: required must be a list")
        for prop in required:
            if prop not in properties:
                raise GrammarError(f"{path}: required property {prop!r} is not in properties")
        kv_rules: dict[str, str] = {}
        for prop, prop_schema in properties.items():
            value_rule = self.visit(prop_schema, f"{sub}{prop}", f"{path}/properties/{prop}")
            kv_rules[prop] = self.add_rule(
                f"{sub}{prop}-kv", f'{_literal(json.dumps(prop))} space ":" space {value_rule}'
            )
        required_props = [p for p in properties if p in required]
        optional_props = [p for p in properties if p not in required]

        additional = schema.get("additionalProperties")
        if additional is not None and additional is not False:
            extra = f"{sub}additional"
            value_rule = (
                self.add_primitive("value", "value")
                if additional is True
                else self.visit(additional, f"{extra}-value", f"{path}/additionalProperties")
            )
            key_rule = (
                self.add_rule(f"{extra}-k", self.key_excluding(list(properties)))
                if properties
                else self.add_primitive("string", "string")
            )
            kv_rules["*"] = self.add_rule(f"{extra}-kv", f'{key_rule} ":" space {value_rule}')
            optional_props.append("*")

        rule = '"{" space ' + ' "," space '.join(kv_rules[p] for p in required_props)
        if optional_props:

            def chain(props: list[str], first_optional: bool) -> str:
                # the remaining optional properties, in order, each present or not
                k, rest = props[0], props[1:]
                comma = f'( "," space {kv_rules[k]} )'
                if first_optional:
                    out = comma + ("*" if k == "*" else "?")
                else:
                    out = kv_rules[k] + (f" {comma}*" if k == "*" else "")
                if rest:
                    out += " " + self.add_rule(f"{sub}{k}-rest", chain(rest, True))
                return out

            alts = " | ".join(chain(optional_props[i:], False) for i in range(len(optional_props)))
            rule += f' ( "," space ( {alts} ) )?' if required_props else f" ( {alts} )?"
        return rule + ' space "}"'

    def key_excluding(self, names: list[str]) -> str:
        """A JSON string rule matching keys that decode to none of the given property names.

        Walks a trie of the names' characters. A named character may only be written in one
        form (its json.dumps spelling); leaving the trie takes a raw character or a short escape
        that decodes to no named character here (never \\u, which could spell one), then any
        string characters.
        """
        char = self.add_primitive("char", "char")
        trie: dict[str, Any] = {}
        for key in names:
            node = trie
            for c in key:
                node = node.setdefault(c, {})
            node[""] = {}  # end-of-name marker

        def alternatives(node: dict[str, Any]) -> str:
            children = sorted(c for c in node if c)
            alts = [
                f"{_literal(json.dumps(c, ensure_ascii=False)[1:-1])} {alternatives(node[c])}"
                for c in children
            ]
            excluded = "".join(_class_char(c) for c in children)
            other = [rf'[^"\\\x7F\x00-\x1F{excluded}]']
            escapes = [e for e, c in _SHORT_ESCAPES.items() if c not in children]
            if escapes:
                other.append(f"[\\\\] [{''.join(_class_char(e) for e in escapes)}]")
            alts.append(f"({' | '.join(other)}) {char}*")
            body = " | ".join(alts)
            return f"({body})" if "" in node else f"({body})?"

        return rf'"\"" {alternatives(trie)} "\""'

    def grammar(self) -> str:
        return "\n".join(f"{name} ::= {body}" for name, body in sorted(self.rules.items()))


def schema_to_grammar(schema: Any) -> str:
    """GBNF text whose language is JSON text valid under `schema` (see module docstring)."""
    converter = _Converter(schema if isinstance(schema, dict) else {})
    converter.visit(schema, "", "#")
    text = converter.grammar()
    parse_gbnf(text)  # surfaces undefined or left-recursive rules (e.g. `{"$ref": "#"}`) here
    return text


def grammar_for_format(fmt: Any, *, chat: bool = False) -> str | None:
    """The grammar for an Ollama `format` value, or None for unconstrained output.

    `"json"` gives Ollama's fixed object grammar on /api/generate and the schema
    `{"type": "object"}` on /api/chat (llama-server's json_object response format).
    Raises InvalidFormat for other values, GrammarError for a schema that cannot be compiled.
    """
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return schema_to_grammar({"type": "object"}) if chat else JSON_OBJECT_GBNF
    if isinstance(fmt, dict):
        try:
            return schema_to_grammar(fmt)
        except GrammarError as err:
            raise GrammarError(f"invalid JSON schema in format: {err}") from err
    raw = json.dumps(fmt, separators=(",", ":"))
    raise InvalidFormat(
        f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object'
    )
