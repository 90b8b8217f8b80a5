"""The machine line every benchmark table is headed with (STYLE §2.9): NumPy version and CPU.

Imported by the bench_*.py scripts as a sibling module (`python benchmarks/bench_x.py` puts
this folder on sys.path).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(*versions: str) -> str:
    """`numpy X, <versions…>, CPU: <name>`: what a table's numbers were measured with."""
    return ", ".join([f"numpy {np.__version__}", *versions, f"CPU: {cpu_name()}"])
