"""docs/tour.md: every snippet runs on SmolLM2 and prints exactly the output the doc records.

The recorded outputs are written by `python -m tests.tour_doc`; a change in the engine that
alters what the tour shows fails here until the doc is refreshed and the diff reviewed.
"""

from __future__ import annotations

import pytest

from tests.tour_doc import TOUR, run_snippets, snippets


@pytest.mark.slow
def test_tour_snippets_print_what_the_doc_shows(smollm2_path: object) -> None:
    recorded = snippets(TOUR.read_text(encoding="utf-8"))
    assert len(recorded) == 10
    printed = run_snippets([code for code, _ in recorded])
    for (code, expected), got in zip(recorded, printed, strict=True):
        assert got == expected, f"snippet starting {code.splitlines()[0]!r}"
