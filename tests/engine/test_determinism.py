"""Same bits on every machine: the determinism matrix of engine/models/decoder.py's policy.

Each cell is a fresh Python process with one OPENBLAS_CORETYPE (the BLAS kernel family: the
kernels of another CPU generation, simulated on this one), one thread count (OpenBLAS's and the
engine's own pool, engine/models/parallel.py) and NumPy SIMD dispatch on or off
(NPY_DISABLE_CPU_FEATURES switching off every dispatched target, so NumPy runs its baseline
loops). It prints sha256 digests of SmolLM2's and Gemma 3's prompt logits under
several chunkings and of 32 seeded decode steps (tokens and every logits array the decode loop
saw). All cells must print the same digests.

Another machine cannot be simulated whole, so the real models' digests are also compared with
tests/golden/determinism_record.json: the digests tests/golden/make_determinism_record.py
printed on the machine it names (not an oracle's output: the engine's own, which every machine
must reproduce bit for bit).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy._core import _multiarray_umath as umath

from tests.determinism_cells import (
    REAL_CHUNKINGS,
    RECORD,
    machine,
    numpy_dispatch_off,
    run_cell,
)
from tests.tiny_model import write_tiny_model

# OPENBLAS_CORETYPE values and the NumPy CPU features their kernels need. The bundled OpenBLAS
# honours any of them on any CPU (it maps unknown names to its autodetected core; Prescott runs
# its generic "Katmai" kernels), and a kernel the CPU lacks dies of SIGILL, so the matrix takes
# the ones this CPU can run: all five on an AVX512 machine, SkylakeX left out on an AVX2 one.
KERNELS = {
    "Haswell": ("AVX2", "FMA3"),
    "Sandybridge": ("AVX",),
    "SkylakeX": ("AVX512_SKX",),
    "Nehalem": ("SSE42",),
    "Prescott": ("SSE3",),
}
RUNNABLE: list[str | None] = [None] + [
    core for core, needs in KERNELS.items() if all(umath.__cpu_features__.get(f) for f in needs)
]
# (threads, OPENBLAS_CORETYPE, NumPy dispatch off). None: OpenBLAS autodetects (SkylakeX on an
# AVX512 machine, Haswell on an AVX2 one). The tiny models run the whole matrix; the two real
# models (about a minute a cell on two cores) a cover of it: every kernel, every thread count and
# both NumPy settings appear at least once.
MATRIX = [
    (threads, core, numpy_off)
    for core in RUNNABLE
    for threads in (1, 2, 4)
    for numpy_off in (False, True)
]
# Prompt chunkings: the tiny models also go one token at a time (run_cell's default); the real
# ones, whose ~25-token prompt would then take 25 forward passes per model and cell, in chunks
# of 3 (REAL_CHUNKINGS).
REAL_CELLS = [((1, 2, 4)[i % 3], core, i % 2 == 1) for i, core in enumerate(RUNNABLE)]


def _assert_all_equal(cells: dict[tuple[int, str | None, bool], dict[str, object]]) -> None:
    first = next(iter(cells))
    reference = cells[first]
    for key, value in reference.items():
        if key.endswith("/decode"):
            tokens, _ = value  # type: ignore[misc]
            assert len(tokens) >= 8, key
    for name in {k.split("/")[0] for k in reference}:
        digests = {v for k, v in reference.items() if k.startswith(f"{name}/prefill/")}
        assert len(digests) == 1, f"{name}: prompt chunking changed the logits"
    differing = sorted((cell for cell, out in cells.items() if out != reference), key=str)
    assert not differing, f"cells differing from {first}: {differing}"


def test_determinism_matrix_tiny(tmp_path: Path) -> None:
    models = {v: str(write_tiny_model(tmp_path / f"{v}.gguf", v)) for v in ("llama", "gemma3")}
    _assert_all_equal({cell: run_cell(models, *cell) for cell in MATRIX})


@pytest.mark.slow
def test_determinism_matrix_real_models(smollm2_path: Path, gemma3_path: Path) -> None:
    models = {"smollm2": str(smollm2_path), "gemma3": str(gemma3_path)}
    cells = {cell: run_cell(models, *cell, chunkings=REAL_CHUNKINGS) for cell in REAL_CELLS}
    for name in models:
        tokens, _ = cells[REAL_CELLS[0]][f"{name}/decode"]  # type: ignore[misc]
        assert len(tokens) == 32, name
    _assert_all_equal(cells)
    record = json.loads(RECORD.read_text())
    assert record["models"] == {n: Path(p).name for n, p in models.items()}
    here = cells[REAL_CELLS[0]]
    differing = sorted(k for k in record["digests"] if here.get(k) != record["digests"][k])
    assert not differing, (
        f"{differing} differ from the digests recorded on {record['machine']}; "
        f"this machine: {machine()}"
    )


def test_numpy_dispatch_switch_takes_effect() -> None:
    # The matrix's NumPy cells mean something only if the variable really changes NumPy's loops:
    # NumPy's own exp differs between its SIMD paths on these inputs (float64 between its AVX512
    # and AVX2 loops, float32 between AVX2 and baseline).
    off = numpy_dispatch_off()
    if not off:
        pytest.skip("this NumPy dispatches to no SIMD target on this CPU")
    probe = "import numpy as np, hashlib; x = np.linspace(-80, 80, 1 << 20)\n"
    probe += "y = np.exp(x).tobytes() + np.exp(x.astype('f4')).tobytes()\n"
    probe += "print(hashlib.sha256(y).hexdigest())"

    def digest(env_extra: dict[str, str]) -> str:
        env = {**os.environ, **env_extra}
        res = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        return res.stdout.strip()

    x = np.linspace(-80, 80, 1 << 20)
    local = hashlib.sha256(np.exp(x).tobytes() + np.exp(x.astype("f4")).tobytes()).hexdigest()
    assert digest({}) == local
    assert digest({"NPY_DISABLE_CPU_FEATURES": off}) != local
