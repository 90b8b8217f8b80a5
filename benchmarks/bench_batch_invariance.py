"""Batch invariance: does a sequence get the same logits alone as when batched with others?

    python benchmarks/bench_batch_invariance.py                 # Gemma 3, 4 prompts, 16 steps
    python benchmarks/bench_batch_invariance.py --model smollm2 --sequences 8
    python benchmarks/bench_batch_invariance.py --smoke         # tiny model, refllama only (CI)

Each prompt is run alone (its prompt in one evaluation, then one-token greedy steps) and then
all prompts together: one evaluation holding every prompt, then every step one evaluation of one
row per sequence. For llama.cpp the batch is a low-level `llama_batch` whose tokens carry their
sequence's `seq_id` (as llama-server's slots share a batch); for refllama it is `Model.eval_many`
(as the server's batcher calls it). The table counts, over all sequences and steps, the logit
rows that are not bit-identical to the solo run, their largest difference, and the sequences
whose greedy tokens changed. llama.cpp picks other kernels for an n-row batch than for one row,
where those kernels exist (repacked Q4_K for Gemma 3's Q4_K_M: with 4 sequences, 64 of 68 rows
differed, by up to 26 in a logit, and 3 of the 4 sequences generated other tokens; SmolLM2's Q4_1
has no such kernel and its rows matched, llama-cpp-python 0.3.36, AVX512 EPYC). refllama's forward
pass is row-wise by construction (engine/models/blockmatmul.py), so its count is always 0.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import machine_line  # noqa: E402

import engine  # noqa: E402
from engine.gguf.fetch import model_path  # noqa: E402
from tests.tiny_model import write_tiny_model  # noqa: E402

PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colors are",
    "def fibonacci(n):",
    "Paris is the capital of",
    "Water boils at a temperature of",
    "The first person to walk on the moon was",
    "A haiku about autumn:",
    "In 1492, Columbus",
]

Run = list[list[np.ndarray]]  # per sequence, the logits of the prompt's last token and each step


def _greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def _ours(model: engine.Model, prompts: list[list[int]], steps: int, together: bool) -> Run:
    caches = [model.new_cache(len(p) + steps + 1) for p in prompts]

    def evaluate(tokens: list[list[int]]) -> list[np.ndarray]:
        """The last-token logits of each sequence's new `tokens`, batched or one by one."""
        requests = list(zip(tokens, caches, strict=True))
        if together:
            return [x[0] for x in model.eval_many(requests)]
        return [model.eval(t, c, last_only=True)[0] for t, c in requests]

    out: Run = [[r] for r in evaluate(prompts)]
    for _ in range(steps):
        for seq, r in zip(out, evaluate([[_greedy(seq[-1])] for seq in out]), strict=True):
            seq.append(r)
    return out


class _LlamaCpp:
    """A llama.cpp context with room for `n_seq` sequences, driven through llama_batch."""

    def __init__(self, path: Path, n_seq: int, n_ctx: int, threads: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params()
        )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = n_seq
        params.kv_unified = True  # one cache that all sequences' cells share
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """One llama_decode of (token, position, seq_id, wants logits); the requested rows."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (token, pos, seq, wants) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, wants
            b.seq_id[i][0] = seq
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        rows = []
        for i, item in enumerate(items):
            if item[3]:
                ptr = self.lib.llama_get_logits_ith(self.ctx, i)
                data = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float * self.n_vocab)).contents
                rows.append(np.frombuffer(data, np.float32).copy())
        return rows

    def run(self, prompts: list[list[int]], steps: int) -> Run:
        """All `prompts` as sequences 0..n-1 of one batch per evaluation, from an empty cache."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        items = [(t, j, s, j == len(p) - 1) for s, p in enumerate(prompts) for j, t in enumerate(p)]
        out: Run = [[r] for r in self._decode(items)]
        for k in range(steps):
            items = [
                (_greedy(seq[-1]), len(p) + k, s, True)
                for s, (p, seq) in enumerate(zip(prompts, out, strict=True))
            ]
            for seq, r in zip(out, self._decode(items), strict=True):
                seq.append(r)
        return out


def _compare(solo: Run, batched: Run) -> tuple[int, int, float, int]:
    """(rows, rows not bit-identical, largest |difference|, sequences whose tokens changed)."""
    rows = differ = changed = 0
    largest = 0.0
    for a_seq, b_seq in zip(solo, batched, strict=True):
        rows += len(a_seq)
        for a, b in zip(a_seq, b_seq, strict=True):
            differ += not np.array_equal(a, b)
            largest = max(largest, float(np.max(np.abs(a - b))))
        changed += [_greedy(x) for x in a_seq] != [_greedy(x) for x in b_seq]
    return rows, differ, largest, changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3", help="gemma3, smollm2, or a GGUF path")
    p.add_argument("--sequences", type=int, default=4, help=f"prompts batched (<= {len(PROMPTS)})")
    p.add_argument("--steps", type=int, default=16, help="greedy one-token steps per sequence")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 sequences, 2 steps")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            path, args.sequences, args.steps = write_tiny_model(Path(tmp) / "t.gguf", "llama"), 2, 2
        else:
            path = Path(args.model) if Path(args.model).exists() else model_path(args.model)
        model = engine.load(path)
        prompts = [model.tokenize(text) for text in PROMPTS[: args.sequences]]
        rows = [("refllama", _compare(*(_ours(model, prompts, args.steps, t) for t in (0, 1))))]
        versions = []
        if not args.smoke:
            import llama_cpp

            versions.append(f"llama-cpp-python {llama_cpp.__version__}")
            n_ctx = sum(len(x) for x in prompts) + args.sequences * (args.steps + 1) + 64
            llm = _LlamaCpp(path, args.sequences, n_ctx, args.threads)
            try:
                solo = [llm.run([x], args.steps)[0] for x in prompts]
                rows.append(("llama.cpp", _compare(solo, llm.run(prompts, args.steps))))
            finally:
                llm.close()
    print(machine_line(*versions))
    print(f"{path.name}: {args.sequences} sequences batched, {args.steps} greedy steps each")
    print("| engine | logit rows | rows unlike solo | max abs diff | seqs, other tokens |")
    print("|---|---|---|---|---|")
    for name, (n, differ, largest, changed) in rows:
        print(f"| {name} | {n} | {differ} | {largest:.3g} | {changed} |")


if __name__ == "__main__":
    main()
