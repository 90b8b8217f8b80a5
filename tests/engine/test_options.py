from __future__ import annotations

import logging

import numpy as np
import pytest

from engine.errors import InvalidOption
from engine.sampling.options import DEFAULT_NUM_CTX, Options, predict_limit, resolve


def test_defaults_are_ollamas() -> None:
    o = resolve(None, None)
    assert o == Options()
    assert (o.temperature, o.top_k, o.top_p, o.min_p, o.typical_p) == (
        np.float32(0.8),
        40,
        np.float32(0.9),
        0.0,
        1.0,
    )
    assert (o.repeat_last_n, o.repeat_penalty, o.num_keep, o.seed) == (64, 1.0, 4, -1)
    assert (o.num_predict, o.num_ctx, o.num_batch, o.stop) == (-1, DEFAULT_NUM_CTX, 512, ())


def test_merge_order_request_over_model_over_default() -> None:
    o = resolve(
        {"temperature": 0.1, "top_k": 7, "stop": ["a", "b"]},
        {"top_k": 3, "stop": ["c"]},
    )
    assert o.temperature == float(np.float32(0.1))  # from the model
    assert o.top_k == 3  # the request wins
    assert o.stop == ("c",)  # replaced, not merged
    assert o.top_p == float(np.float32(0.9))  # built-in default


def test_null_keeps_lower_layer() -> None:
    assert resolve({"top_k": 5}, {"top_k": None}).top_k == 5


def test_floats_are_float32() -> None:
    o = resolve(None, {"top_p": 0.95, "temperature": 1})
    assert o.top_p == float(np.float32(0.95)) != 0.95
    assert isinstance(o.temperature, float) and o.temperature == 1.0


def test_integer_fields_truncate_toward_zero() -> None:
    o = resolve(None, {"top_k": 3.9, "num_keep": -1.5, "seed": 42.0})
    assert (o.top_k, o.num_keep, o.seed) == (3, -1, 42)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("top_k", "40", "an integer"),
        ("top_k", True, "an integer"),
        ("temperature", "hot", "a float32 number"),
        ("temperature", False, "a float32 number"),
        ("use_mmap", 1, "a boolean"),
        ("stop", "\n", "an array of strings"),
        ("stop", ["a", 1], "an array of strings"),
        ("top_p", float("nan"), "a finite number"),
        ("temperature", 1e300, "a finite number"),  # overflows float32
    ],
)
def test_type_errors(key: str, value: object, allowed: str) -> None:
    with pytest.raises(InvalidOption) as e:
        resolve(None, {key: value})
    assert (e.value.field, e.value.allowed) == (key, allowed)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("repeat_last_n", -1),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", -1.0),
        ("min_p", 1.5),
        ("num_keep", -2),
        ("num_ctx", 3),
        ("num_batch", 0),
    ],
)
def test_range_errors_never_clamp(key: str, value: object) -> None:
    with pytest.raises(InvalidOption) as e:
        resolve(None, {key: value})
    assert e.value.field == key and e.value.value == value


def test_range_errors_in_model_parameters_too() -> None:
    with pytest.raises(InvalidOption):
        resolve({"repeat_penalty": 0}, None)


def test_values_with_clamp_equivalent_meaning_are_accepted() -> None:
    o = resolve(None, {"top_k": -5, "top_p": 1.5, "temperature": -1, "min_p": -0.5})
    assert (o.top_k, o.top_p, o.temperature, o.min_p) == (-5, 1.5, -1.0, -0.5)


def test_unknown_keys_are_skipped_with_a_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.sampling.options"):
        o = resolve({"mirostat": 2}, {"penalize_newline": True, "top_k": 2})
    assert o.top_k == 2
    assert "penalize_newline" in caplog.text and "mirostat" in caplog.text


def test_empty_stop_strings_are_dropped() -> None:
    assert resolve(None, {"stop": ["", "x"]}).stop == ("x",)


@pytest.mark.parametrize(
    ("num_predict", "num_ctx", "limit"),
    [
        (-1, 100, 1000),
        (-2, 100, 1000),
        (5000, 100, 1000),
        (1000, 100, 1000),
        (7, 100, 7),
        (0, 100, None),
    ],
)
def test_predict_limit(num_predict: int, num_ctx: int, limit: int | None) -> None:
    assert predict_limit(Options(num_predict=num_predict, num_ctx=num_ctx)) == limit
