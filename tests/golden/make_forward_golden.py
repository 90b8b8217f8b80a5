"""Record llama.cpp's logits and greedy continuations as golden data for tests/engine/test_model.py.

    python tests/golden/make_forward_golden.py        # all: smollm2, gemma3, qwen2.5-coder, tiny
    python tests/golden/make_forward_golden.py tiny

For each real model (SmolLM2-135M Q4_1, gemma-3-270m Q4_K_M, Qwen2.5-Coder-0.5B-Instruct with
its mixed Q5_0/Q8_0/Q6_K/Q4_K tensors) and each prompt below: the prompt's
token ids (llama.cpp's tokenizer, add_special and parse_special on), llama.cpp's greedy
continuation of CONTINUATION tokens, and at every position of prompt + continuation[:-1] the
top-TOP_K logits (ids, values) and the argmax. Prompt positions come from one batched prefill
with logits for all positions; continuation positions from llama.cpp's own one-token decode
steps. llama.cpp runs with n_threads=2 and its defaults otherwise (F16 KV cache, no flash
attention), i.e. as llama-server would.

The tiny models (tests/tiny_model.py, float32 weights) run with an F32 KV cache so llama.cpp
computes them almost exactly: a tight check of each architecture's wiring.

Output: tests/golden/forward_{smollm2,gemma3,qwen2.5-coder,tiny}.json, one case per line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.gguf.fetch import MODELS, model_path  # noqa: E402
from tests.golden.oracle_build import oracle_build  # noqa: E402
from tests.tiny_model import VARIANTS, write_tiny_model  # noqa: E402

GOLDEN = Path(__file__).resolve().parent
TOP_K = 20
CONTINUATION = 32
N_THREADS = 2
GGML_TYPE_F32 = 0

QUESTIONS = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Give me a Python function that reverses a string.",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Tell me a short joke.",
    "Summarize the plot of Cinderella in two sentences.",
    "What does CPU stand for?",
    "Name a planet in our solar system.",
    "Why is the sky blue?",
]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the mountains, there lived",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "1, 2, 3, 4, 5, 6,",
    "The year 2024 had 366 days.",
    "In mathematics, a prime number is",
    "Paris is the capital of",
    "naïve café – résumé 東京 🤖",
    "import numpy as np\n\nx = np.",
    "The mitochondria is the powerhouse of the",
    "Dear Sir or Madam,\n\nI am writing to",
    "Water is made of hydrogen and",
    "<b>Hello</b> world, this is HTML:",
    "I'm here, you're there; they'll go.",
    "The first law of thermodynamics states that",
]
CHAT = {
    "smollm2": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
    # the GGUF template without tools or a system message: its default system prompt
    "qwen2.5-coder": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful"
    " assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
}
TINY_PROMPTS = [
    "<|im_start|>user\nHello world! What is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. The answer is yes, the answer is no.",
]


def _top(row: np.ndarray) -> tuple[list[int], list[float]]:
    ids = np.argsort(-row, kind="stable")[:TOP_K]
    return [int(i) for i in ids], [round(float(row[i]), 4) for i in ids]


def run_case(llm: llama_cpp.Llama, text: str, continuation: int, tokenwise: bool = False) -> dict:
    """One golden case; `tokenwise` evaluates the prompt one token at a time too."""
    llm.reset()
    prompt = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    for batch in [[t] for t in prompt] if tokenwise else [prompt]:
        llm.eval(batch)
    rows = [np.array(llm.scores[i], dtype=np.float32) for i in range(len(prompt))]
    cont: list[int] = []
    for step in range(continuation):
        tok = int(np.argmax(rows[-1]))
        cont.append(tok)
        if step < continuation - 1:
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


def _write(name: str, header: dict, cases: list[dict]) -> None:
    path = GOLDEN / f"forward_{name}.json"
    lines = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases]
    head = json.dumps(header, separators=(",", ":"))
    path.write_text('{"header":' + head + ',"cases":[\n' + ",\n".join(lines) + "\n]}\n")
    print(f"wrote {path} ({len(cases)} cases)")


def real_llm(name: str, n_threads: int = N_THREADS) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(model_path(name)),
        n_ctx=512,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=True,
        verbose=False,
    )


def make_real(name: str) -> None:
    llm = real_llm(name)
    prompts = [CHAT[name].format(q) for q in QUESTIONS] + TEXTS
    cases = [run_case(llm, text, CONTINUATION) for text in prompts]
    header = {
        "model": name,
        "file": MODELS[name].filename,
        "sha256": MODELS[name].sha256,
        "oracle": oracle_build(),
        "n_threads": N_THREADS,
        "kv_cache": "f16 (default)",
        "top_k": TOP_K,
    }
    _write(name, header, cases)


def tiny_llm(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(path),
        n_ctx=256,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )


def make_tiny() -> None:
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            llm = tiny_llm(write_tiny_model(Path(tmp) / f"{variant}.gguf", variant))
            for text in TINY_PROMPTS:
                cases.append({"variant": variant, **run_case(llm, text, 8)})
            del llm
    header = {
        "models": "tests/tiny_model.py, seed 0",
        "oracle": oracle_build(),
        "n_threads": N_THREADS,
        "kv_cache": "f32",
        "top_k": TOP_K,
    }
    _write("tiny", header, cases)


def main(argv: list[str]) -> None:
    which = argv or ["smollm2", "gemma3", "qwen2.5-coder", "tiny"]
    for name in which:
        if name == "tiny":
            make_tiny()
        else:
            make_real(name)


if __name__ == "__main__":
    main(sys.argv[1:])
