"""Every benchmark script still runs: `--smoke` keeps them from rotting (STYLE §2.9).

Only that they run to completion and print a table is checked; their numbers are reported in
issue notes, never asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_is_listed() -> None:
    assert {p.stem for p in BENCHMARKS} >= {"bench_quants", "bench_forward", "bench_tokenizer"}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_smoke_run(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) >= 2, result.stdout
