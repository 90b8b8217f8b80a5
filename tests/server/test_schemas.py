"""server/schemas.py: Go-shaped body decoding, keep_alive and think parsing, event building."""

from __future__ import annotations

import math

import pytest

from server.errors import InvalidRequest
from server.schemas import (
    FOREVER,
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    decode_body,
    parse_go_duration,
    parse_keep_alive,
    parse_think,
)


def _error(fn, *args) -> str:
    with pytest.raises(InvalidRequest) as info:
        fn(*args)
    return str(info.value)


def test_empty_body_null_body_and_non_objects():  # G4, §1.4 rules 1-2
    assert _error(decode_body, b"", "GenerateRequest") == "missing request body"
    assert decode_body(b"null", "GenerateRequest") == {}
    assert "cannot unmarshal array" in _error(decode_body, b"[1]", "GenerateRequest")
    assert _error(decode_body, b'{"model":', "GenerateRequest") == "unexpected EOF"
    assert _error(decode_body, b"{x}", "GenerateRequest").startswith("invalid character 'x'")


def test_keys_case_insensitive_last_wins_trailing_ignored_options_case_kept():  # §1.4 rules 4-6
    req = GenerateRequest.from_body(
        b'{"MODEL":"a","model":"b","Unknown":1,"options":{"Top_K":1,"top_k":2}} trailing'
    )
    assert req.model == "b"
    assert req.options == {"Top_K": 1, "top_k": 2}


def test_wrong_field_type_is_a_go_unmarshal_error():  # G5
    msg = _error(GenerateRequest.from_body, b'{"model":"m","stream":"no"}')
    assert msg == (
        "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"
    )


def test_null_fields_are_unset():  # §1.4 rule 7
    req = GenerateRequest.from_body(b'{"model":"m","stream":null,"keep_alive":null,"think":null}')
    assert req.stream is True and req.keep_alive is None and req.think is None


def test_top_logprobs_range():  # GE16
    assert _error(GenerateRequest.from_body, b'{"model":"m","top_logprobs":21}') == (
        "top_logprobs must be between 0 and 20"
    )
    assert GenerateRequest.from_body(b'{"model":"m","top_logprobs":20}').top_logprobs == 20


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(42, 42.0), (42.5, 42.5), ("42m", 2520.0), ("1h30m", 5400.0), ("0.5s", 0.5), ("0", 0.0),
     (0, 0.0), ("250ms", 0.25), ("1h2m3.5s", 3723.5), (-1, FOREVER), ("-5m", FOREVER),
     (-3.14, FOREVER)],
)  # fmt: skip
def test_keep_alive_values(value, seconds):  # O9
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("-1", 'time: missing unit in duration "-1"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("abc", 'time: invalid duration "abc"'),
        ("", 'time: invalid duration ""'),
        (True, "Unsupported type: 'bool'"),
        ({}, "Unsupported type: 'map[string]interface {}'"),
        ([], "Unsupported type: '[]interface {}'"),
    ],
)
def test_keep_alive_errors(value, message):  # O9
    assert _error(parse_keep_alive, value) == message


def test_go_duration_matches_hand_computed_units():
    assert parse_go_duration("1us") == 1e-6
    assert parse_go_duration("1µs") == 1e-6
    assert parse_go_duration("+2h") == 7200.0
    assert math.isclose(parse_go_duration(".5m"), 30.0)


def test_think_values():  # K10, §8.2
    assert parse_think("medium") == "medium"
    assert parse_think(False) is False
    assert _error(parse_think, "extreme") == (
        'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'
    )
    assert _error(parse_think, 3) == (
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def test_images_must_be_standard_base64():  # C12, §1.4 rule 8
    ok = ChatRequest.from_body(
        b'{"model":"m","messages":[{"role":"User","content":"x","images":["aGk=\\n"]}]}'
    )
    assert ok.messages[0].images == (b"hi",) and ok.messages[0].role == "user"  # C8
    msg = _error(
        ChatRequest.from_body,
        b'{"model":"m","messages":[{"role":"user","images":["data:image/png;base64,aGk="]}]}',
    )
    assert msg == "illegal base64 data at input byte 4"


def test_embed_input_normalisation():  # E3, E4
    def inputs(body: bytes) -> list[str]:
        return EmbedRequest.from_body(body).input

    assert inputs(b'{"model":"m","input":"a"}') == ["a"]
    assert inputs(b'{"model":"m","input":["a",""]}') == ["a", ""]
    assert inputs(b'{"model":"m","input":""}') == [] == inputs(b'{"model":"m"}')
    for bad in (b"[1]", b"1", b"{}", b"true"):
        assert _error(EmbedRequest.from_body, b'{"model":"m","input":' + bad + b"}") == (
            "invalid input type"
        )
