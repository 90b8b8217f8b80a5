"""How well llama.cpp agrees with its own golden data when it splits the work differently.

    python tests/golden/llama_cpp_self_agreement.py            # smollm2 and gemma3
    python tests/golden/llama_cpp_self_agreement.py smollm2

The golden files (make_forward_golden.py) record llama.cpp's prompt logits from one batched
prefill and the continuation from one-token decode steps. llama.cpp computes a row with other
kernels when it is one of n >= 2 rows in a batch (llamafile tinyBLAS for the F16 attention
products, repacked/tiled quant kernels) than when it is alone (ggml_vec_dot_*), and the
re-quantization of activations before every matmul turns those last-bit differences into visibly
different logits a few tokens later. This script replays every golden case through llama.cpp
itself in two other ways and scores them with tests/agreement.py, exactly as the tests score this
engine: `one batch` evaluates prompt + continuation[:-1] in a single batch; `token by token`
evaluates every token alone. The result is the ceiling that any engine computing each row one
way, whatever the batch, can be held to against this golden.

The numbers depend on the llama.cpp build and CPU (an AVX2 build scored SmolLM2 one batch 97.78% /
16 greedy where this AVX512 one scores more), so the script writes them with `oracle_build()` to
tests/golden/llama_cpp_self_agreement.json, and README and the tests quote that file's machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_forward_golden as mk  # noqa: E402
from oracle_build import oracle_build  # noqa: E402

from tests.agreement import compare, summarize  # noqa: E402


def replay(llm: object, tokens: list[int], one_batch: bool) -> np.ndarray:
    llm.reset()  # type: ignore[attr-defined]
    if one_batch:
        llm.eval(tokens)  # type: ignore[attr-defined]
    else:
        for t in tokens:
            llm.eval([t])  # type: ignore[attr-defined]
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)  # type: ignore[attr-defined]


OUT = mk.GOLDEN / "llama_cpp_self_agreement.json"


def main(argv: list[str]) -> None:
    build = oracle_build()
    print(f"llama-cpp-python {build['llama_cpp_python']}, {build['isa']} build, {build['cpu']}")
    print("| model | llama.cpp run | top-1 | mean KL | greedy identical |")
    print("|---|---|---|---|---|")
    rows = []
    for name in argv or ["smollm2", "gemma3"]:
        cases = json.loads((mk.GOLDEN / f"forward_{name}.json").read_text())["cases"]
        llm = mk.real_llm(name)
        for label, one_batch in (("one batch", True), ("token by token", False)):
            results = []
            for case in cases:
                tokens = case["prompt"] + case["continuation"][:-1]
                results.append(compare(replay(llm, tokens, one_batch), case))
            a = summarize(results)
            print(f"| {name} | {label} | {a.top1:.2%} | {a.kl:.1e} | {a.greedy}/{a.cases} |")
            rows.append(
                {"model": name, "run": label, "top1": round(a.top1, 6), "kl": float(f"{a.kl:.3e}"),
                 "greedy": a.greedy, "cases": a.cases}
            )  # fmt: skip
        del llm
    OUT.write_text(json.dumps({"oracle": build, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
