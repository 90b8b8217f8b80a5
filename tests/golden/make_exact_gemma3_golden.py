"""Record llama.cpp's token-by-token Gemma 3 logits as golden data for
tests/engine/test_exact_gemma3.py.

    python tests/golden/make_exact_gemma3_golden.py

The gemma3 sibling of make_exact_golden.py (same record per case, same regime: every token,
prompt included, evaluated alone with `llm.eval([tok])`, n_ctx=512, n_threads=2, F16 KV cache,
no flash attention), over gemma3's chat-wrapped QUESTIONS then TEXTS of make_forward_golden.py.
That regime is what engine/exact_gemma3.py emulates bit for bit.

Output: tests/golden/forward_gemma3_tokenwise.json, one case per line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.fetch import MODELS  # noqa: E402
from tests.golden.make_exact_golden import run_case_tokenwise  # noqa: E402
from tests.golden.make_forward_golden import (  # noqa: E402
    CHAT,
    N_THREADS,
    QUESTIONS,
    TEXTS,
    TOP_K,
    _write,
    real_llm,
)

NAME = "gemma3"


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
