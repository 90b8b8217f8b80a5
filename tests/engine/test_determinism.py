"""Same bits on every machine: the determinism matrix of engine/models/decoder.py's policy.

Each cell is a fresh Python process with one OPENBLAS_CORETYPE (the BLAS kernel family: the
kernels of another CPU generation, simulated on this one), one thread count (OpenBLAS's and the
engine's own pool, engine/models/parallel.py) and NumPy SIMD dispatch on or off
(NPY_DISABLE_CPU_FEATURES switching off every dispatched target, so NumPy runs its baseline
loops). It prints sha256 digests of SmolLM2's and Gemma 3's prompt logits under
several chunkings and of 32 seeded decode steps (tokens and every logits array the decode loop
saw). All cells must print the same digests. The kernels named here are the ones this machine's
bundled OpenBLAS accepts (it maps unknown names to its autodetected core).
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

from tests.tiny_model import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from engine.generate import generate
from engine.models.decoder import load
from engine.sampling.options import Options

text = "<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n"
out = {}
chunkings = json.loads(sys.argv[2])
for name, path in json.loads(sys.argv[1]).items():
    model = load(path)
    ids = model.tokenize(text)
    for num_batch in chunkings:
        cache = model.new_cache(len(ids))
        logits = model.eval(ids, cache, num_batch=num_batch)
        out[f"{name}/prefill/{num_batch}"] = hashlib.sha256(logits.tobytes()).hexdigest()

    class Recorder:  # hashes every logits array the decode loop sees
        def __init__(self):
            self.tokenizer, self.sha = model.tokenizer, hashlib.sha256()

        def new_cache(self, n):
            return model.new_cache(n)

        def eval(self, tokens, cache, num_batch, last_only=False, cancelled=None):
            x = model.eval(tokens, cache, num_batch, last_only=last_only, cancelled=cancelled)
            self.sha.update(x.tobytes())
            return x

    rec = Recorder()
    opts = Options(seed=1234, num_predict=32, temperature=0.9)
    tokens = [s.token for s in generate(rec, ids, opts)]
    out[f"{name}/decode"] = [tokens, rec.sha.hexdigest()]
print(json.dumps(out))
"""


def _numpy_dispatch_off() -> str:
    """Every SIMD target this NumPy dispatches to on this CPU, for NPY_DISABLE_CPU_FEATURES."""
    from numpy._core import _multiarray_umath as umath

    return " ".join(f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f))


def _cell(
    models: dict[str, str],
    threads: int,
    coretype: str | None,
    numpy_off: bool,
    chunkings: tuple[int, ...] = (512, 5, 1),
) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",)}
    env.update(
        OPENBLAS_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        REFLLAMA_NUM_THREADS=str(threads),
    )
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    if numpy_off:
        env["NPY_DISABLE_CPU_FEATURES"] = _numpy_dispatch_off()
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(models), json.dumps(chunkings)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)  # type: ignore[no-any-return]


# (threads, OPENBLAS_CORETYPE, NumPy dispatch off). None: OpenBLAS autodetects (SkylakeX on an
# AVX512 machine, Haswell on an AVX2 one). The tiny models run the whole matrix; the two real
# models (about a minute a cell on two cores) a cover of it: every kernel, every thread count and
# both NumPy settings appear at least once.
MATRIX = [
    (threads, core, numpy_off)
    for core in (None, "Haswell", "Sandybridge", "SkylakeX", "Nehalem")
    for threads in (1, 2, 4)
    for numpy_off in (False, True)
]
# Prompt chunkings: the tiny models also go one token at a time; the real ones, whose ~25-token
# prompt would then take 25 forward passes per model and cell, in chunks of 3.
REAL_CHUNKINGS = (512, 7, 3)
REAL_CELLS = [
    (1, None, False),
    (2, "Sandybridge", False),
    (4, "Haswell", False),
    (2, "SkylakeX", True),
    (1, "Nehalem", True),
]


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
    _assert_all_equal({cell: _cell(models, *cell) for cell in MATRIX})


@pytest.mark.slow
def test_determinism_matrix_real_models(smollm2_path: Path, gemma3_path: Path) -> None:
    models = {"smollm2": str(smollm2_path), "gemma3": str(gemma3_path)}
    cells = {cell: _cell(models, *cell, chunkings=REAL_CHUNKINGS) for cell in REAL_CELLS}
    for name in models:
        tokens, _ = cells[REAL_CELLS[0]][f"{name}/decode"]  # type: ignore[misc]
        assert len(tokens) == 32, name
    _assert_all_equal(cells)


def test_numpy_dispatch_switch_takes_effect() -> None:
    # The matrix's NumPy cells mean something only if the variable really changes NumPy's loops:
    # NumPy's own exp differs between its SIMD paths on these inputs (float64 between its AVX512
    # and AVX2 loops, float32 between AVX2 and baseline).
    off = _numpy_dispatch_off()
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
