"""JSON schema -> GBNF, and Ollama's `format` values -> grammar text.

Follows the semantics of llama.cpp `common/json-schema-to-grammar.cpp` (spec/sampling.md §7.3):
the same `space` rule, property order (required first, then optional, each in schema order),
additionalProperties handling, bounded repetition for arrays and strings, integer digit ranges,
string formats (date, time, date-time, uuid), and `$ref` within the document. Where llama.cpp
would emit output that does not validate, this package rejects the schema or narrows the
language instead, so every complete output validates:

- keywords it cannot enforce (`multipleOf`, `uniqueItems`, `allOf`, `not`, `minProperties`, ...)
  raise GrammarError (a 400 at the server), as do `required` names missing from `properties`;
- ranges on `number` produce integer values inside the range (llama.cpp ignores them); a number
  range holding no integer is rejected;
- `pattern` is translated from a regex subset (pattern.py) and cannot be combined with
  minLength/maxLength;
- `\\u` escapes of UTF-16 surrogates are not generated (a pair would count as two characters
  against minLength but decode to one);
- additional-property keys never spell a named property in another way and never end on a raw
  backslash (llama.cpp's key rule can emit `"\\"` and break the JSON);
- `oneOf` is treated like `anyOf`, as in llama.cpp: overlapping branches can violate it.
"""

from engine.grammar.json_schema.convert import (
    JSON_OBJECT_GBNF,
    grammar_for_format,
    schema_to_grammar,
)
from engine.grammar.json_schema.ranges import integer_range

__all__ = ["JSON_OBJECT_GBNF", "grammar_for_format", "integer_range", "schema_to_grammar"]
