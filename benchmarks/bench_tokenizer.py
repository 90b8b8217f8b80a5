"""Tokenizer build time and encode/decode throughput, against llama.cpp's vocab-only load.

Usage: python benchmarks/bench_tokenizer.py [--repeat R] [--models smollm2,gemma3]
       python benchmarks/bench_tokenizer.py --smoke

Rows per model:
  build      Tokenizer.from_gguf on an already parsed GGUFFile (the vocab-only path)
  gguf+build GGUFFile(path) plus the build, i.e. what a tokenizer-only load costs
  llama.cpp  llama_cpp.Llama(path, vocab_only=True) (when llama_cpp is importable)
Then encode and decode throughput over tests/golden/tokenizer_corpus.json, in MB of UTF-8 text
per second (ours vs llama.cpp's C `llama_tokenize` / `llama_detokenize`).
Target (issue 3): Gemma 3 build < 2 s.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tokenizers

from engine.fetch import model_path
from engine.gguf import GGUFFile
from engine.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tokenizer_corpus.json"
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def time_runs(repeat: int, fn: Callable[[], object]) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row(name: str, times: list[float], unit: str = "s", scale: float = 1.0) -> None:
    values = [scale / t for t in times] if unit == "MB/s" else times
    best = max(values) if unit == "MB/s" else min(values)
    print(f"{name:28} {statistics.median(values):10.3f} {best:10.3f}  {unit}")


def bench_model(name: str, texts: list[str], repeat: int) -> None:
    path = model_path(name)
    gguf = GGUFFile(path)
    print(f"\n{name}: {path.name}, {repeat} runs{'':8} {'median':>10} {'best':>10}")
    row("build", time_runs(repeat, lambda: Tokenizer.from_gguf(gguf)))
    row("gguf+build", time_runs(repeat, lambda: Tokenizer.from_gguf(GGUFFile(path))))
    tok = Tokenizer.from_gguf(gguf)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    all_ids = [tok.encode(t) for t in texts]
    llm = None
    if HAVE_LLAMA_CPP:
        import llama_cpp

        def load() -> llama_cpp.Llama:
            return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

        row("llama.cpp vocab_only load", time_runs(repeat, load))
        llm = load()
    row("encode", time_runs(repeat, lambda: [tok.encode(t) for t in texts]), "MB/s", mb)
    if llm is not None:
        # The C API with buffers allocated once (Llama.tokenize allocates n_ctx_train per call).
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        data = [t.encode() for t in texts]
        ids_buf = (llama_cpp.llama_token * (1 << 16))()
        text_buf = ctypes.create_string_buffer(1 << 20)
        id_arrays = [(llama_cpp.llama_token * max(1, len(ids)))(*ids) for ids in all_ids]

        def encode_ref() -> None:
            for b in data:
                llama_cpp.llama_tokenize(vocab, b, len(b), ids_buf, 1 << 16, True, True)

        def decode_ref() -> None:
            for arr, ids in zip(id_arrays, all_ids, strict=True):
                llama_cpp.llama_detokenize(vocab, arr, len(ids), text_buf, 1 << 20, False, True)

        row("llama.cpp encode", time_runs(repeat, encode_ref), "MB/s", mb)
    row("decode", time_runs(repeat, lambda: [tok.decode(ids) for ids in all_ids]), "MB/s", mb)
    if llm is not None:
        row("llama.cpp decode", time_runs(repeat, decode_ref), "MB/s", mb)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--models", default="smollm2,gemma3", help="comma-separated model names")
    parser.add_argument("--smoke", action="store_true", help="SmolLM2 only, one run, 50 strings")
    args = parser.parse_args(argv)
    texts = json.loads(CORPUS.read_text("utf-8"))["strings"]
    models, repeat = args.models.split(","), args.repeat
    if args.smoke:
        models, repeat, texts = ["smollm2"], 1, texts[:50]
    print(
        f"numpy {np.__version__}, tokenizers {tokenizers.__version__}, "
        f"llama_cpp {'yes' if HAVE_LLAMA_CPP else 'no'}, CPU: {cpu_name()}"
    )
    for name in models:
        bench_model(name, texts, repeat)


if __name__ == "__main__":
    main()
