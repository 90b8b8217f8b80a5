"""Embeddings per second on a batch of 32 short texts: refllama's encoder vs llama.cpp, one run.

Usage: python benchmarks/bench_embed.py [--repeat R] [--models nomic-embed-text] [--threads N]
       python benchmarks/bench_embed.py --smoke

Ours: `BertModel.embed` on each text in turn ("refllama"), and `BertModel.embed_many` on all 32
in one forward pass ("batched"), then mean/cls pooling. llama.cpp:
`Llama(embedding=True).embed(texts)` on the same 32 texts (it packs them into one batch).
Tokenization is included on both sides. Target (issue 16): ours >= 0.5x llama.cpp.
Models: any name `engine.gguf.fetch` knows with a bert / nomic-bert GGUF.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

from _machine import machine_line

from engine import BertModel, load
from engine.gguf.fetch import model_path

TEXTS = tuple(
    f"{prefix} {topic}"
    for prefix in ("search_query:", "search_document:", "clustering:", "classification:")
    for topic in (
        "how do rainbows form?",
        "the best pizza in Naples",
        "quarterly earnings beat expectations",
        "a cat sleeping in the sun",
        "learn Python in a weekend",
        "symptoms of the common cold",
        "train delays on Monday morning",
        "the history of the printing press",
    )
)
assert len(TEXTS) == 32


def _ours(model: BertModel) -> Callable[[], int]:
    def run() -> int:
        vectors = []
        for text in TEXTS:
            hidden = model.embed(model.tokenize(text, parse_special=False))  # (T, D)
            vectors.append(hidden[0] if model.config.pooling_type == 2 else hidden.mean(axis=0))
        return len(vectors)

    return run


def _ours_batched(model: BertModel) -> Callable[[], int]:
    def run() -> int:
        seqs = [model.tokenize(text, parse_special=False) for text in TEXTS]
        hidden = model.embed_many(seqs)  # (T_i, D) each
        pooled = [h[0] if model.config.pooling_type == 2 else h.mean(axis=0) for h in hidden]
        return len(pooled)

    return run


def _llama_cpp(path: str, threads: int) -> Callable[[], int]:
    import llama_cpp

    llm = llama_cpp.Llama(
        path, embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=threads,
        n_seq_max=len(TEXTS), verbose=False,
    )  # fmt: skip

    def run() -> int:
        return len(llm.embed(list(TEXTS)))

    return run


def _rate(run: Callable[[], int], repeat: int, warm_up: bool = True) -> tuple[float, float]:
    if warm_up:
        run()
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), min(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="nomic-embed-text")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument(
        "--smoke", action="store_true", help="one repeat, no warm-up: keeps the script working"
    )
    args = ap.parse_args()
    repeat = 1 if args.smoke else args.repeat
    have_oracle = importlib.util.find_spec("llama_cpp") is not None
    versions = []
    if have_oracle:
        import llama_cpp

        versions.append(f"llama-cpp-python {llama_cpp.__version__}")
    print(machine_line(*versions))
    print(f"{len(TEXTS)} texts per batch, {repeat} repeats; embeddings per second")
    print(f"{'model':<20} {'engine':<10} {'median/s':>10} {'min/s':>10} {'ratio':>7}")
    for name in args.models.split(","):
        path = model_path(name)
        model = load(path)
        if not isinstance(model, BertModel):
            raise SystemExit(f"{name} is not an encoder (bert, nomic-bert)")
        warm_up = not args.smoke
        theirs = (
            _rate(_llama_cpp(str(path), args.threads), repeat, warm_up) if have_oracle else None
        )
        for label, run in (("refllama", _ours(model)), ("batched", _ours_batched(model))):
            ours = _rate(run, repeat, warm_up)
            ratio = f"{ours[0] / theirs[0]:.2f}x" if theirs else "-"
            print(f"{name:<20} {label:<10} {ours[0]:>10.1f} {ours[1]:>10.1f} {ratio:>7}")
        if theirs:
            print(
                f"{name:<20} {'llama.cpp':<10} {theirs[0]:>10.1f} {theirs[1]:>10.1f} {'1.00x':>7}"
            )


if __name__ == "__main__":
    main()
