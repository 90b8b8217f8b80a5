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
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import tokenizers
from _machine import machine_line

from engine.gguf.fetch import model_path
from engine.gguf.reader import GGUFFile
from engine.tokenizer import Tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tokenizer_corpus.json"
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
if HAVE_LLAMA_CPP:
    import llama_cpp

    # llama.cpp warns on stderr for every corpus string that starts with "<bos>"; keep quiet.
    _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)


def time_runs(repeat: int, fn: Callable[[], object]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def row(name: str, times: list[tuple[float, float]], unit: str = "s", mb: float = 1.0) -> None:
    """Median and best of wall-clock and CPU time (CPU time is steadier on a shared machine)."""
    if unit == "MB/s":
        times = [(mb / wall, mb / cpu) for wall, cpu in times]
    pick = max if unit == "MB/s" else min
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    print(
        f"{name:26} {statistics.median(wall):9.3f} {pick(wall):9.3f} "
        f"{statistics.median(cpu):9.3f} {pick(cpu):9.3f}  {unit}"
    )


def bench_model(name: str, texts: list[str], repeat: int) -> None:
    path = model_path(name)
    gguf = GGUFFile(path)
    print(f"\n{name}: {path.name}, {repeat} runs")
    print(f"{'':26} {'wall med':>9} {'best':>9} {'cpu med':>9} {'best':>9}")
    row("build", time_runs(repeat, lambda: Tokenizer.from_gguf(gguf)))
    row("gguf+build", time_runs(repeat, lambda: Tokenizer.from_gguf(GGUFFile(path))))
    tok = Tokenizer.from_gguf(gguf)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    all_ids = [tok.encode(t) for t in texts]
    llm = None
    if HAVE_LLAMA_CPP:
        llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p())

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
        machine_line(
            f"tokenizers {tokenizers.__version__}", f"llama_cpp {'yes' if HAVE_LLAMA_CPP else 'no'}"
        )
    )
    for name in models:
        bench_model(name, texts, repeat)


if __name__ == "__main__":
    main()
