"""End to end: SmolLM2 generating under grammars built from hypothesis-generated JSON schemas.

Every generation that ends with an end-of-generation token must be JSON that validates against
its schema; one cut by num_predict must say so with done_reason "length" and be exactly
num_predict tokens long (no silent truncation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.generate import Slot, generate
from engine.grammar import GrammarConstraint, compile_grammar, trie_for
from engine.grammar.json_schema import grammar_for_format, schema_to_grammar
from engine.models.decoder import Model, load
from engine.sampling.options import Options

NUM_PREDICT = 32
NUM_CTX = 256
log = logging.getLogger(__name__)
PROMPT = "<|im_start|>user\nAnswer with a short JSON value.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> Model:
    return load(smollm2_path)


@pytest.fixture(scope="module")
def slot(smollm2: Model) -> Slot:
    return Slot.new(smollm2, NUM_CTX)  # shared, so the prompt prefix is evaluated once


def _run(model: Model, slot: Slot, grammar: str, seed: int) -> tuple[str, str, int]:
    """(text, done_reason, generated tokens) of one constrained generation."""
    constraint = GrammarConstraint(compile_grammar(grammar), trie_for(model.tokenizer))
    ids = model.tokenizer.encode(PROMPT, add_special=False)
    opts = Options(seed=seed, num_predict=NUM_PREDICT, num_ctx=NUM_CTX)
    steps = list(generate(model, ids, opts, constraint=constraint, slot=slot))
    reason = steps[-1].done_reason
    assert reason is not None
    if reason == "stop":
        assert steps[-1].token in model.tokenizer.eog_ids and constraint.is_complete()
    text = "".join(s.text for s in steps)
    log.info("outcome=%s tokens=%d text=%r", reason, len(steps), text)
    return text, reason, len(steps)


_name = st.sampled_from(["id", "name", "ok", "n", "tag", "x y", "é"])
_leaf = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 6)),
    st.builds(
        lambda lo, w: {"type": "integer", "minimum": lo, "maximum": lo + w},
        st.integers(-100, 100),
        st.integers(0, 1000),
    ),
    st.builds(
        lambda lo: {"type": "number", "exclusiveMinimum": lo, "maximum": lo + 50},
        st.integers(-50, 50),
    ),
    st.sampled_from(
        [
            {"type": "boolean"},
            {"type": "null"},
            {"type": ["boolean", "null"]},
            {"type": "string", "format": "date"},
            {"enum": ["red", "green", 3, None]},
            {"const": "fixed"},
        ]
    ),
)


def _compound(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    obj = st.builds(
        lambda props, req: {
            "type": "object",
            "properties": props,
            "required": [p for p, r in zip(props, req, strict=False) if r],
        },
        st.dictionaries(_name, children, min_size=1, max_size=3),
        st.lists(st.booleans(), min_size=3, max_size=3),
    )
    arr = st.builds(
        lambda items, hi: {"type": "array", "items": items, "maxItems": hi},
        children,
        st.integers(0, 2),
    )
    return obj | arr | st.lists(children, min_size=2, max_size=3).map(lambda a: {"anyOf": a})


_schemas = st.recursive(_leaf, _compound, max_leaves=4)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schema=_schemas, seed=st.integers(0, 2**32 - 1))
def test_generated_json_validates_against_its_schema(
    smollm2: Model, slot: Slot, schema: dict, seed: int
) -> None:
    text, reason, n = _run(smollm2, slot, schema_to_grammar(schema), seed)
    if reason == "length":
        assert n == NUM_PREDICT
        return
    jsonschema.Draft202012Validator(schema).validate(json.loads(text))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_format_json_gives_an_object(smollm2: Model, slot: Slot, seed: int) -> None:
    grammar = grammar_for_format("json")
    assert grammar is not None
    text, reason, n = _run(smollm2, slot, grammar, seed)
    if reason == "length":
        assert n == NUM_PREDICT
    else:
        assert isinstance(json.loads(text), dict)
