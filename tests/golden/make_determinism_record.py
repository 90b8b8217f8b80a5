"""Record this machine's determinism digests for tests/engine/test_determinism.py.

    python tests/golden/make_determinism_record.py

Runs one cell of the determinism matrix (tests/determinism_cells.py: SmolLM2 and Gemma 3, the
prompt logits under three chunkings and 32 seeded decode steps, one thread, OpenBLAS's own
kernel choice, NumPy's SIMD dispatch on) and writes its digests with a description of the
machine to tests/golden/determinism_record.json. This is not oracle data: it is the engine's own
output, recorded so that a run of the test on any other CPU, BLAS build or NumPy can check it
computes the same bits. Re-record only when the numerics change on purpose, and say so in the
commit.

Output: tests/golden/determinism_record.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.gguf.fetch import model_path  # noqa: E402
from tests.determinism_cells import REAL_CHUNKINGS, RECORD, machine, run_cell  # noqa: E402


def main() -> None:
    paths = {name: model_path(name) for name in ("smollm2", "gemma3")}
    digests = run_cell({n: str(p) for n, p in paths.items()}, 1, None, False, REAL_CHUNKINGS)
    entries = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in digests.items())
    models = {name: path.name for name, path in paths.items()}
    RECORD.write_text(
        f'{{\n "machine": {json.dumps(machine())},\n "models": {json.dumps(models)},\n'
        f' "digests": {{\n{entries}\n }}\n}}\n'
    )


if __name__ == "__main__":
    main()
