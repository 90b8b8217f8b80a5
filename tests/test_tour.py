"""docs/tour.md: every snippet runs on SmolLM2 and prints exactly the output the doc records.

The recorded outputs are written by `python -m tests.tour_doc`; a change in the engine that
alters what the tour shows fails here until the doc is refreshed and the diff reviewed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from tests.server.live import api_store, live_server
from tests.tour_doc import TOUR, run_snippets, snippets


@pytest.mark.slow
def test_tour_snippets_print_what_the_doc_shows(smollm2_path: Path) -> None:
    recorded = snippets(TOUR.read_text(encoding="utf-8"))
    assert len(recorded) == 10
    printed = run_snippets([code for code, _ in recorded])
    for (code, expected), got in zip(recorded, printed, strict=True):
        assert got == expected, f"snippet starting {code.splitlines()[0]!r}"


@pytest.mark.slow
def test_tour_stream_is_what_the_server_streams(tmp_path: Path, smollm2_path: Path) -> None:
    """Step 10 assembles events from engine and server functions; the real server, sent step
    1's body over HTTP, streams the same pieces."""
    recorded = snippets(TOUR.read_text(encoding="utf-8"))
    body = re.search(r"^body = b'(.*)'$", recorded[0][0], re.MULTILINE)
    assert body is not None
    tour_lines = [json.loads(line) for line in recorded[-1][1].splitlines()]
    with live_server(create_app(api_store(tmp_path, smollm2_path))) as url:
        with httpx.stream("POST", url + "/api/generate", content=body.group(1), timeout=300) as r:
            assert r.status_code == 200
            served = [json.loads(line) for line in r.iter_lines() if line]
    keys = ("model", "response", "done", "done_reason", "eval_count")
    assert [{k: e[k] for k in keys if k in e} for e in served] == [
        {k: e[k] for k in keys if k in e} for e in tour_lines
    ]
