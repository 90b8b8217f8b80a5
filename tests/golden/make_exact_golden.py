"""Record llama.cpp's token-by-token logits as golden data for tests/engine/test_exact*.py.

    python tests/golden/make_exact_golden.py            # smollm2 and gemma3
    python tests/golden/make_exact_golden.py gemma3

Same 30 prompts per model as make_forward_golden.py (the model's chat-wrapped QUESTIONS, then
TEXTS) and the same record per case (prompt ids, greedy continuation of CONTINUATION tokens,
argmax and top-TOP_K ids/logits at every position of prompt + continuation[:-1]), but every token
is evaluated alone (`llm.eval([tok])`, one-token decode steps, also for the prompt): the regime
engine/exact/llama.py and engine/exact/gemma3.py emulate bit for bit. llama.cpp runs with n_ctx=512,
n_threads=2, F16 KV cache, no flash attention.

Output: tests/golden/forward_{smollm2,gemma3}_tokenwise.json, one case per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.gguf.fetch import MODELS  # noqa: E402
from tests.golden.make_forward_golden import (  # noqa: E402
    CHAT,
    CONTINUATION,
    N_THREADS,
    QUESTIONS,
    TEXTS,
    TOP_K,
    _write,
    real_llm,
    run_case,
)
from tests.golden.oracle_build import oracle_build  # noqa: E402


def make(name: str) -> None:
    llm = real_llm(name)
    prompts = [CHAT[name].format(q) for q in QUESTIONS] + TEXTS
    cases = [run_case(llm, text, CONTINUATION, tokenwise=True) for text in prompts]
    header = {
        "model": name,
        "file": MODELS[name].filename,
        "sha256": MODELS[name].sha256,
        "oracle": oracle_build(),
        "n_threads": N_THREADS,
        "kv_cache": "f16 (default)",
        "regime": "every token evaluated alone (one-token decode steps)",
        "top_k": TOP_K,
    }
    _write(f"{name}_tokenwise", header, cases)


if __name__ == "__main__":
    for model in sys.argv[1:] or ["smollm2", "gemma3"]:
        make(model)
