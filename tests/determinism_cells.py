"""One cell of the determinism matrix: a fresh Python process under one BLAS kernel, thread
count and NumPy dispatch setting, printing sha256 digests of a model's logits.

Shared by tests/engine/test_determinism.py (every cell must print the same digests) and
tests/golden/make_determinism_record.py (which writes one machine's digests, so that every other
machine's run of the test can compare against them).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.golden.oracle_build import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "tests" / "golden" / "determinism_record.json"
# Prompt chunkings for the real models: whole, and two that split the ~25-token prompt.
REAL_CHUNKINGS = (512, 7, 3)

CELL_SCRIPT = r"""
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


def numpy_dispatch_off() -> str:
    """Every SIMD target this NumPy dispatches to on this CPU, for NPY_DISABLE_CPU_FEATURES."""
    from numpy._core import _multiarray_umath as umath

    return " ".join(f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f))


def run_cell(
    models: dict[str, str],
    threads: int,
    coretype: str | None,
    numpy_off: bool,
    chunkings: tuple[int, ...] = (512, 5, 1),
) -> dict[str, object]:
    """The digests one cell prints: `{model}/prefill/{num_batch}` and `{model}/decode`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",)}
    env.update(
        OPENBLAS_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        REFLLAMA_NUM_THREADS=str(threads),
    )
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    if numpy_off:
        env["NPY_DISABLE_CPU_FEATURES"] = numpy_dispatch_off()
    res = subprocess.run(
        [sys.executable, "-c", CELL_SCRIPT, json.dumps(models), json.dumps(chunkings)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"determinism cell {threads, coretype, numpy_off} failed:\n" + res.stderr[-3000:]
        )
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def machine() -> dict[str, object]:
    """What could change a float result if the engine let it: CPU, its SIMD features, NumPy and
    the BLAS NumPy was built with."""
    from numpy._core import _multiarray_umath as umath

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    features = sorted(f for f, on in umath.__cpu_features__.items() if on)
    return {
        "cpu": cpu_model(),
        "simd": [f for f in features if f.startswith(("AVX", "FMA", "F16C"))],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas.get('name')} {blas.get('version')}",
    }
