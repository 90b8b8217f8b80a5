"""Run docs/tour.md's snippets: `python -m tests.tour_doc` rewrites their printed outputs.

Every ```python block is followed by a ```text block holding what it prints. The blocks run in
order in one namespace, as a reader typing them into one Python session would.
tests/test_tour.py runs them and compares; this script is the only writer of the outputs.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

TOUR = Path(__file__).resolve().parents[1] / "docs" / "tour.md"
SNIPPET = re.compile(r"```python\n(.*?)```\n\n```text\n(.*?)```", re.DOTALL)


def snippets(text: str) -> list[tuple[str, str]]:
    """(code, recorded output) of every snippet, in order."""
    return [(m.group(1), m.group(2)) for m in SNIPPET.finditer(text)]


def run_snippets(codes: list[str]) -> list[str]:
    """What each snippet prints, run in order in one namespace."""
    namespace: dict[str, object] = {"__name__": "tour"}
    outputs = []
    for code in codes:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(TOUR), "exec"), namespace)
        outputs.append(out.getvalue())
    return outputs


def refresh(path: Path = TOUR) -> None:
    text = path.read_text(encoding="utf-8")
    outputs = iter(run_snippets([code for code, _ in snippets(text)]))
    path.write_text(
        SNIPPET.sub(lambda m: f"```python\n{m.group(1)}```\n\n```text\n{next(outputs)}```", text),
        encoding="utf-8",
    )


if __name__ == "__main__":
    refresh()
