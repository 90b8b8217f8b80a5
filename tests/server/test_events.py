"""server/events.py: timestamps, metric omission, key order, float printing, non-finite floats."""

from __future__ import annotations

import json
import math

import numpy as np

from server.events import (
    FLT_MAX,
    Metrics,
    float32_list,
    generate_event,
    local_timestamp,
    ndjson_line,
    utc_timestamp,
)


def test_timestamps():  # G10
    assert utc_timestamp(1_700_000_000_123_400_000) == "2023-11-14T22:13:20.1234Z"
    assert utc_timestamp(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    stamp = local_timestamp(1_700_000_000.5)
    assert stamp[19:21] == ".5" and stamp[-6] in "+-" and stamp[-3] == ":"


def test_zero_metrics_are_omitted_and_keys_in_wire_order():  # G10, §4.4
    event = generate_event(
        "m", "", done=True, done_reason="stop", context=[1], metrics=Metrics(eval_count=3)
    )
    assert list(event) == [
        "model", "created_at", "response", "done", "done_reason", "context", "eval_count",
    ]  # fmt: skip


def test_non_finite_floats_become_finite_or_null():
    line = ndjson_line({"a": -math.inf, "b": math.inf, "c": math.nan, "d": [1.5]})
    assert json.loads(line) == {"a": -FLT_MAX, "b": FLT_MAX, "c": None, "d": [1.5]}
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_float32_values_print_shortest():
    v = np.array([0.010071029, 1e-8, -0.5], dtype=np.float32)
    out = float32_list(v)
    assert json.dumps(out) == "[0.010071029, 1e-08, -0.5]"
    assert np.array_equal(np.array(out, dtype=np.float32), v)
