"""Score the bit-exact engines on every case of their token-by-token golden files.

    python tests/golden/check_exact_agreement.py                # smollm2 and gemma3, ~10 + ~15 min
    python tests/golden/check_exact_agreement.py smollm2 --cases 5
    python tests/golden/check_exact_agreement.py --live --cases 10   # against this llama.cpp

CI checks two cases per model (tests/engine/test_exact*.py); this runs all 30, scored with
tests/agreement.py like the other agreement numbers, plus the count of positions whose top-20 ids
or 4-decimal logits differ from the golden's at all (`differing`). The emulated build is the
golden's (its header names it). With --live the reference is instead the importable llama.cpp,
evaluating the same tokens one at a time, and the emulator is that build's (AVX512 or AVX2):
`differing` then counts positions whose whole logit vector is not bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.exact.gemma3 import load_exact  # noqa: E402
from engine.exact.llama import ISAS  # noqa: E402
from engine.gguf.fetch import model_path  # noqa: E402
from tests.agreement import compare, summarize  # noqa: E402

GOLDEN = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["smollm2", "gemma3"])
    p.add_argument("--cases", type=int, help="only the first N cases")
    p.add_argument("--live", action="store_true", help="compare with the importable llama.cpp")
    args = p.parse_args()
    print("| model | cases | positions | differing | top-1 | mean KL | greedy | s/token |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        golden = json.loads((GOLDEN / f"forward_{name}_tokenwise.json").read_text())
        cases = golden["cases"][: args.cases]
        live = _live(name) if args.live else None
        isa = _live_isa() if live else golden["header"]["oracle"]["isa"]
        model = load_exact(model_path(name), isa=isa)
        results, differing, positions, t0 = [], 0, 0, time.perf_counter()
        for case in cases:
            tokens = case["prompt"] + case["continuation"][:-1]
            logits = model.logits(tokens)
            results.append(compare(logits, case))
            if live is not None:
                ref = _live_logits(live, tokens)
                differing += int((logits != ref).any(axis=1).sum())
                positions += len(logits)
                continue
            ids = np.argsort(-logits, axis=1, kind="stable")[:, : len(case["top_ids"][0])]
            top = np.take_along_axis(logits, ids, axis=1)
            ours = [[round(float(v), 4) for v in row] for row in top]  # as the golden writer
            same = (ids == np.array(case["top_ids"])).all(1)
            same &= (np.array(ours) == np.array(case["top_logits"])).all(1)
            differing += int((~same).sum())
            positions += len(logits)
        a = summarize(results)
        per_token = (time.perf_counter() - t0) / positions
        print(
            f"| {name} ({isa}{', live' if live else ''}) | {a.cases} | {positions} | {differing} "
            f"| {a.top1:.2%} | {a.kl:.1e} | {a.greedy}/{a.cases} | {per_token:.2f} |"
        )


def _live_isa() -> str:
    from tests.golden.oracle_build import oracle_build

    isa = str(oracle_build()["isa"])
    if isa not in ISAS:
        raise SystemExit(f"llama.cpp here is an {isa} build; the exact engines emulate {ISAS}")
    return isa


def _live(name: str):  # type: ignore[no-untyped-def]
    from tests.golden.make_forward_golden import real_llm  # imports llama_cpp

    return real_llm(name, n_threads=1)  # one-row kernels: the same bits for any thread split


def _live_logits(llm, tokens: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """llama.cpp's logits for `tokens`, every token evaluated alone from an empty cache."""
    llm.reset()  # eval drops the cells past n_tokens, as make_forward_golden relies on
    rows = []
    for i, tok in enumerate(tokens):
        llm.eval([tok])
        rows.append(np.array(llm.scores[i], dtype=np.float32))
    return np.stack(rows)


if __name__ == "__main__":
    main()
