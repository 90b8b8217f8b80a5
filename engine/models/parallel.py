"""Independent pieces of one matrix product or attention call, run on a few threads at once.

NumPy's loops and BLAS release the GIL, so the tiles of a `quant_matmul` or the query chunks of
a prompt's attention can run side by side on several cores. Each piece does exactly the
operations it does when run alone and writes only its own part of the output, so the result's
bits do not depend on the number of threads, on which thread ran which piece, or on their order
(tests/engine/test_determinism.py runs 1, 2 and 4 threads).

Small calls (a decode step's products) stay on the calling thread: handing them over costs more
than it saves. The thread count is REFLLAMA_NUM_THREADS, else the CPUs this process may run on.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# Below this many elements of block sums or scores a call is not split (measured on SmolLM2: a
# 512-row product gains 1.5x on 2 threads, an 8-row one loses).
MIN_SPLIT_ELEMENTS = 1 << 20


def _threads() -> int:
    configured = os.environ.get("REFLLAMA_NUM_THREADS", "").strip()
    if configured:
        return max(1, int(configured))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _blas_on_this_thread_only() -> None:
    """Pool threads make their BLAS calls single-threaded (OpenBLAS's per-thread setting, in
    the OpenBLAS NumPy wheels bundle): OpenBLAS's own threads would otherwise compete with the
    pool's for the same cores. Elsewhere (another BLAS) nothing changes."""
    for lib in (Path(np.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas*.so"):
        setter = getattr(ctypes.CDLL(str(lib)), "openblas_set_num_threads_local", None)
        if setter is not None:
            setter(1)


THREADS = _threads()
_pool = (
    ThreadPoolExecutor(THREADS, "refllama", initializer=_blas_on_this_thread_only)
    if THREADS > 1
    else None
)
_worker = threading.local()  # set in pool threads: a piece never waits on the pool itself


def _run_marked(fn: Callable[[T], None], piece: T) -> None:
    _worker.inside = True
    fn(piece)


def run_pieces(fn: Callable[[T], None], pieces: Sequence[T], elements: int) -> None:
    """fn(piece) for every piece, on the pool when the call is big enough (`elements`: the
    size of its largest intermediate), else in order on this thread. Re-raises a piece's error.
    """
    small = len(pieces) < 2 or elements < MIN_SPLIT_ELEMENTS
    if _pool is None or small or getattr(_worker, "inside", False):
        for piece in pieces:
            fn(piece)
        return
    for future in [_pool.submit(_run_marked, fn, p) for p in pieces]:
        future.result()
