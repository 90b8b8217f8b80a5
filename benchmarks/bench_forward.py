"""Forward-pass speed: refllama vs llama-cpp-python on the same GGUF file, same thread count.

    python benchmarks/bench_forward.py                 # SmolLM2, 512-token prefill, 128 decode
    python benchmarks/bench_forward.py --model gemma3 --repeat 3
    python benchmarks/bench_forward.py --smoke         # tiny model, a few tokens (CI)
    python benchmarks/bench_forward.py --prompt-tokens 512,2000,8000 --decode-tokens 32
                                                       # how cost grows with context

Each engine runs in its own subprocess (so peak RSS is its own); llama.cpp gets n_threads =
--threads and refllama OPENBLAS_NUM_THREADS = --blas-threads (default: --threads). refllama's decode
makes many small BLAS calls (one gemv per matrix and token), so on a machine whose other cores are
busy, OpenBLAS's thread hand-off per call dominates: compare --blas-threads 1.

Measured: load time; prefill tokens/s over a --prompt-tokens random prompt (logits of the last
position only, as llama.cpp computes them); decode tokens/s over --decode-tokens greedy one-token
steps (as the server's decode loop); peak RSS. Each timing is repeated --repeat times after
--warmup untimed rounds (default 1); the table shows the median and the best.

For refllama also its decode floor: a decode step reads every weight matrix once, held as
float32 integers (4 bytes per weight, engine/models/blockmatmul.py), so the BLAS block sums of
one row over all of them, and nothing else, bound the decode rate; the table gives that rate
and the GB/s it streams at.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _measure(
    engine: str, model: str, prompt_tokens: int, decode_tokens: int, repeat: int, warmup: int
) -> dict:
    """Runs inside the per-engine subprocess; returns timings in seconds and peak RSS in bytes."""
    import resource

    import numpy as np

    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    if engine == "refllama":
        import engine as refllama

        m = refllama.load(model, num_ctx_hint=prompt_tokens + decode_tokens)
        n_vocab = m.n_vocab

        def prefill(ids: list[int]) -> tuple[object, int]:
            cache = m.new_cache(prompt_tokens + decode_tokens + 1)
            return cache, int(m.eval(ids, cache, last_only=True)[0].argmax())

        def step(state: object, tok: int) -> int:
            return int(m.eval([tok], state)[0].argmax())  # type: ignore[arg-type]
    else:
        import llama_cpp

        threads = int(os.environ["REFLLAMA_BENCH_THREADS"])
        llm = llama_cpp.Llama(
            model,
            n_ctx=prompt_tokens + decode_tokens + 16,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        n_vocab = llm.n_vocab()

        def last_logits() -> object:
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

        def prefill(ids: list[int]) -> tuple[object, int]:
            llm.reset()
            llm.eval(ids)
            return None, int(np.argmax(last_logits()))

        def step(state: object, tok: int) -> int:
            llm.eval([tok])
            return int(np.argmax(last_logits()))

    load = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = [int(t) for t in rng.integers(100, min(n_vocab, 30000), prompt_tokens)]
    prefills, decodes = [], []
    state: object = None
    for i in range(warmup + repeat):
        state = None  # the last round's cache goes first: peak RSS is one round's
        t0 = time.perf_counter()
        state, tok = prefill(ids)
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            tok = step(state, tok)
        t2 = time.perf_counter()
        if i >= warmup:
            prefills.append(t1 - t0)
            decodes.append(t2 - t1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"load": load, "prefill": prefills, "decode": decodes, "rss": rss}
    if engine == "refllama":
        result["stream"], result["weight_bytes"] = _weight_stream(m.weights, repeat)
    return result


def _weight_stream(weights: object, repeat: int) -> tuple[list[float], int]:
    """Seconds for the BLAS part of one decode row over every weight matrix (--repeat times),
    and the bytes those matrices hold."""
    import numpy as np

    from engine.models.blockmatmul import FloatMatrix, QuantMatrix
    from engine.models.decoder import Linear
    from engine.models.parallel import single_threaded_blas

    mats = [weights.output]  # type: ignore[attr-defined]
    for layer in weights.layers:  # type: ignore[attr-defined]
        for value in vars(layer).values():
            if isinstance(value, Linear):
                mats += value.parts
    rows = []
    for w in mats:
        if isinstance(w, QuantMatrix):
            rows.append((w.q, np.ones((w.q.shape[0], w.q.shape[2], 1), np.float32)))
        elif isinstance(w, FloatMatrix):
            rows.append((np.ones((1, w.w.shape[0])), w.w))
    times = []
    with single_threaded_blas():
        for _ in range(repeat):
            t0 = time.perf_counter()
            for a, b in rows:
                np.matmul(a, b)
            times.append(time.perf_counter() - t0)
    return times, sum(a.nbytes + b.nbytes for a, b in rows)


def _run_engine(engine: str, args: argparse.Namespace, model: str, prompt_tokens: int) -> dict:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(args.blas_threads or args.threads),
        "REFLLAMA_BENCH_THREADS": str(args.threads),
    }
    cmd = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--model",
        model,
        "--prompt-tokens",
        str(prompt_tokens),
        "--decode-tokens",
        str(args.decode_tokens),
        "--repeat",
        str(args.repeat),
        "--warmup",
        str(args.warmup),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _model_path(name: str, tmp: Path) -> str:
    sys.path.insert(0, str(ROOT))
    if name == "tiny":
        from tests.tiny_model import write_tiny_model

        return str(write_tiny_model(tmp / "tiny.gguf", "llama"))
    if Path(name).exists():
        return name
    from engine.gguf.fetch import model_path

    return str(model_path(name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2, gemma3, tiny, or a GGUF path")
    p.add_argument(
        "--prompt-tokens", default="512", help="prompt length, or several: 512,2000,8000"
    )
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (0 for long prompts)"
    )
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    p.add_argument("--blas-threads", type=int, help="refllama's OPENBLAS_NUM_THREADS")
    p.add_argument("--smoke", action="store_true", help="tiny model, 16 + 4 tokens, 1 repeat")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = _measure(
            args.child,
            args.model,
            int(args.prompt_tokens),
            args.decode_tokens,
            args.repeat,
            args.warmup,
        )
        print(json.dumps(result))
        return
    if args.smoke:
        args.model, args.prompt_tokens, args.decode_tokens, args.repeat = "tiny", "16", 4, 1
    lengths = [int(n) for n in args.prompt_tokens.split(",")]

    import importlib.util

    from _machine import machine_line

    engines = ["refllama"]
    if importlib.util.find_spec("llama_cpp") is not None:
        engines.append("llama.cpp")
    with tempfile.TemporaryDirectory() as tmp:
        model = _model_path(args.model, Path(tmp))
        runs = {n: {e: _run_engine(e, args, model, n) for e in engines} for n in lengths}

    blas = args.blas_threads or args.threads
    print(f"model {Path(model).name}, llama.cpp {args.threads} threads, refllama OpenBLAS {blas}")
    print(machine_line())
    print(f"decode {args.decode_tokens} tokens, {args.repeat} repeats (median / best)")
    for n, results in runs.items():
        print(f"\nprompt {n} tokens (decode runs at that context)")
        _print_table(engines, results, n, args.decode_tokens)


def _print_table(engines: list[str], results: dict, prompt_tokens: int, decode_tokens: int) -> None:
    header = f"{'metric':<22}" + "".join(f"{e:>24}" for e in engines)
    if len(engines) == 2:
        header += f"{'ratio':>10}"
    print(header)
    rows: list[tuple[str, list[str], float | None]] = []
    for metric, tokens in (("prefill tok/s", prompt_tokens), ("decode tok/s", decode_tokens)):
        key = metric.split()[0]
        cells, medians = [], []
        for e in engines:
            rates = [tokens / t for t in results[e][key]]
            medians.append(statistics.median(rates))
            cells.append(f"{statistics.median(rates):10.1f} / {max(rates):8.1f}")
        rows.append((metric, cells, medians[0] / medians[1] if len(medians) == 2 else None))
    loads = [results[e]["load"] for e in engines]
    rows.append(
        ("load s", [f"{t:24.2f}" for t in loads], loads[0] / loads[1] if len(loads) == 2 else None)
    )
    rss = [results[e]["rss"] / 2**20 for e in engines]
    rows.append(
        ("peak RSS MiB", [f"{r:24.0f}" for r in rss], rss[0] / rss[1] if len(rss) == 2 else None)
    )
    for metric, cells, ratio in rows:
        line = f"{metric:<22}" + "".join(f"{c:>24}" for c in cells)
        if ratio is not None:
            line += f"{ratio:9.2f}x"
        print(line)
    ours = results["refllama"]
    if "stream" in ours:
        best = min(ours["stream"])
        decode = statistics.median(decode_tokens / t for t in ours["decode"])
        print(
            f"refllama decode floor: {ours['weight_bytes'] / 1e9:.2f} GB of float32 weights per "
            f"step, streamed at {ours['weight_bytes'] / best / 1e9:.1f} GB/s by the block sums "
            f"alone = {1 / best:.1f} tok/s; decode runs at {decode * best:.0%} of it"
        )


if __name__ == "__main__":
    main()
