"""Score the bit-exact engines on every case of their token-by-token golden files.

    python tests/golden/check_exact_agreement.py                # smollm2 and gemma3, ~10 + ~15 min
    python tests/golden/check_exact_agreement.py smollm2 --cases 5

CI checks two cases per model (tests/engine/test_exact*.py); this runs all 30, scored with
tests/agreement.py like the other agreement numbers, plus the count of positions whose top-20 ids
or 4-decimal logits differ from the golden's at all (`differing`).
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
from engine.gguf.fetch import model_path  # noqa: E402
from tests.agreement import compare, summarize  # noqa: E402

GOLDEN = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["smollm2", "gemma3"])
    p.add_argument("--cases", type=int, help="only the first N cases")
    args = p.parse_args()
    print("| model | cases | positions | differing | top-1 | mean KL | greedy | s/token |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        cases = json.loads((GOLDEN / f"forward_{name}_tokenwise.json").read_text())["cases"]
        cases = cases[: args.cases]
        model = load_exact(model_path(name))
        results, differing, positions, t0 = [], 0, 0, time.perf_counter()
        for case in cases:
            logits = model.logits(case["prompt"] + case["continuation"][:-1])
            results.append(compare(logits, case))
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
            f"| {name} | {a.cases} | {positions} | {differing} | {a.top1:.2%} | {a.kl:.1e} "
            f"| {a.greedy}/{a.cases} | {per_token:.2f} |"
        )


if __name__ == "__main__":
    main()
