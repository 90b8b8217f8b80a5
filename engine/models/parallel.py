"""Independent pieces of one matrix product or attention call, run on a few threads at once.

NumPy's loops and BLAS release the GIL, so the tiles of a `quant_matmul` or the query chunks of
a prompt's attention can run side by side on several cores. Each piece does exactly the
operations it does when run alone and writes only its own part of the output, so the result's
bits do not depend on the number of threads, on which thread ran which piece, or on their order
(tests/engine/test_determinism.py runs 1, 2 and 4 threads).

The calling thread works through the pieces together with the pool's threads (THREADS - 1 of
them, shared by every caller: two loaded models' batchers may split calls at once, and a caller
never waits for a helper that has not started). Small calls (a decode step's products) stay on
the calling thread: handing them over costs more than it saves. The thread count is
REFLLAMA_NUM_THREADS, else the CPUs this process may run on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# Below this many elements of block sums, scores or cache a call is not split. Measured on
# SmolLM2, 2 threads against 1: a 512-row product 1.5-1.8x faster, the 1-row output head 5.3 ->
# 3.7 ms, while 8-row products of fewer elements lose the hand-off (0.1 ms).
MIN_SPLIT_ELEMENTS = 1 << 19


def _threads() -> int:
    configured = os.environ.get("REFLLAMA_NUM_THREADS", "").strip()
    if configured:
        return max(1, int(configured))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _openblas_threads_setter() -> Callable[[int], int] | None:
    """OpenBLAS's per-thread thread count (openblas_set_num_threads_local, returning the old
    value), in the OpenBLAS the NumPy wheels bundle; None with another BLAS."""
    for lib in (Path(np.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas*.so"):
        setter = getattr(ctypes.CDLL(str(lib)), "openblas_set_num_threads_local", None)
        if setter is not None:
            return setter  # type: ignore[no-any-return]
    return None


def _blas_threads(n: int) -> int:
    """Set this thread's BLAS thread count; the previous one (0 when it cannot be set)."""
    return int(_set_blas_threads(n)) if _set_blas_threads is not None else 0


THREADS = _threads()
_set_blas_threads = _openblas_threads_setter()
# The calling thread works too, so the pool has one thread fewer. Pool threads make their BLAS
# calls single-threaded: OpenBLAS's own threads would compete with them for the same cores.
_pool = (
    ThreadPoolExecutor(THREADS - 1, "refllama", initializer=lambda: _blas_threads(1))
    if THREADS > 1
    else None
)
_inside = threading.local()  # set while a thread runs pieces: pieces never wait on the pool
_DONE = object()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """This thread's BLAS calls run on this thread only, inside (a decorator on the forward
    passes): the engine's products are either split by `run_pieces` or small (a decode step's),
    and for small ones OpenBLAS's thread hand-off costs more than it saves. The process-wide
    setting, which other code in the process may rely on, is left alone."""
    before = _blas_threads(1)
    try:
        yield
    finally:
        if before:
            _blas_threads(before)


def ways(elements: int) -> int:
    """How many threads a call of `elements` (the size of its largest intermediate) is split
    over: THREADS when it is big enough, else 1 (also inside a piece, which never splits)."""
    if _pool is None or elements < MIN_SPLIT_ELEMENTS or getattr(_inside, "on", False):
        return 1
    return THREADS


def run_pieces(fn: Callable[[T], None], pieces: Sequence[T], elements: int) -> None:
    """fn(piece) for every piece: shared between this thread and the pool's when `ways` splits
    the call, else in order here. Re-raises a piece's error once every piece has finished or
    failed."""
    if _pool is None or len(pieces) < 2 or ways(elements) == 1:
        for piece in pieces:
            fn(piece)
        return
    todo = iter(pieces)
    lock = threading.Lock()

    def drain() -> None:
        _inside.on = True
        try:
            while True:
                with lock:
                    piece = next(todo, _DONE)
                if piece is _DONE:
                    return
                fn(piece)  # type: ignore[arg-type]
        finally:
            _inside.on = False

    helpers = [_pool.submit(drain) for _ in range(min(THREADS, len(pieces)) - 1)]
    try:
        with single_threaded_blas():
            drain()
    finally:
        for helper in helpers:
            # A helper still queued behind another model's call has nothing left to do: drop
            # it rather than wait for that call.
            if not helper.cancel():
                helper.result()
