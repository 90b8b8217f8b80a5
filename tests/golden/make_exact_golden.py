"""Record llama.cpp's token-by-token SmolLM2 logits as golden data for tests/engine/test_exact.py.

    python tests/golden/make_exact_golden.py

Same 30 prompts as make_forward_golden.py (smollm2's chat-wrapped QUESTIONS, then TEXTS) and the
same record per case (prompt ids, greedy continuation of CONTINUATION tokens, argmax and top-TOP_K
ids/logits at every position of prompt + continuation[:-1]), but every token is evaluated alone
(`llm.eval([tok])`, one-token decode steps, also for the prompt): the regime engine/exact.py
emulates bit for bit. llama.cpp runs with n_ctx=512, n_threads=2, F16 KV cache, no flash
attention.

Output: tests/golden/forward_smollm2_tokenwise.json, one case per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.fetch import MODELS  # noqa: E402
from tests.golden.make_forward_golden import (  # noqa: E402
    CHAT,
    CONTINUATION,
    N_THREADS,
    QUESTIONS,
    TEXTS,
    TOP_K,
    _top,
    _write,
    real_llm,
)

NAME = "smollm2"


def run_case_tokenwise(llm: llama_cpp.Llama, text: str) -> dict:
    llm.reset()
    prompt = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    rows = []
    for tok in prompt:
        llm.eval([tok])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
    cont: list[int] = []
    for step in range(CONTINUATION):
        tok = int(np.argmax(rows[-1]))
        cont.append(tok)
        if step < CONTINUATION - 1:
            llm.eval([tok])
            rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
    tops = [_top(r) for r in rows]
    return {
        "text": text,
        "prompt": [int(t) for t in prompt],
        "continuation": cont,
        "argmax": [int(np.argmax(r)) for r in rows],
        "top_ids": [t[0] for t in tops],
        "top_logits": [t[1] for t in tops],
    }


def main() -> None:
    llm = real_llm(NAME)
    prompts = [CHAT[NAME].format(q) for q in QUESTIONS] + TEXTS
    cases = [run_case_tokenwise(llm, text) for text in prompts]
    header = {
        "model": NAME,
        "file": MODELS[NAME].filename,
        "sha256": MODELS[NAME].sha256,
        "llama_cpp_python": llama_cpp.__version__,
        "n_threads": N_THREADS,
        "kv_cache": "f16 (default)",
        "regime": "every token evaluated alone (one-token decode steps)",
        "top_k": TOP_K,
    }
    _write(f"{NAME}_tokenwise", header, cases)


if __name__ == "__main__":
    main()
