"""Dequantization and quantization throughput per ggml type (engine.gguf.quants vs gguf-py, and
llama.cpp's C reference when llama-cpp-python is installed), plus GGUF load time.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/bench_quants.py [--elements N] [--repeat R]
       python benchmarks/bench_quants.py --smoke

Each type dequantizes the same random blocks (f16 scale fields set to finite values) through
`engine.gguf.quants.dequantize`, `gguf.quants.dequantize` and libggml's `dequantize_row_*` (one C
thread); the table gives the median MB/s of float32 output over R timed runs after one warm-up.
The quantize table does the same for normal random float32 input (MB/s of input). The
load-time table opens the Gemma 3 GGUF (262k-token vocabulary) with `engine.gguf.reader.GGUFFile`
and `gguf.GGUFReader`.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from _machine import machine_line
from gguf import GGMLQuantizationType as GGMLType

from engine.gguf import quants
from engine.gguf.fetch import model_path
from engine.gguf.reader import GGUFFile

ROW = 2048  # elements per tensor row; gguf-py works on groups of rows, as GGUFReader gives them


def random_blocks(t: GGMLType, n_elements: int, rng: np.random.Generator) -> np.ndarray:
    """Random uint8 bytes for `n_elements` of type `t`, with finite scale fields."""
    block, size = quants.TYPE_SIZES[t]
    n_blocks = n_elements // block
    if block == 1:  # plain floats: draw values, not bytes
        values = rng.standard_normal(n_blocks).astype(np.float32)
        if t == GGMLType.F32:
            return values.view(np.uint8)
        if t == GGMLType.F16:
            return values.astype(np.float16).view(np.uint8)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in quants.F16_SCALE_OFFSETS.get(t, ()):
        scale = (rng.random(n_blocks) * 0.01).astype(np.float16)
        blocks[:, at : at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if t == GGMLType.Q8_K:
        d = (rng.random(n_blocks) * 0.01).astype(np.float32)
        blocks[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    return blocks.reshape(-1)


Call = tuple[Callable[..., object], tuple[object, ...]]


def time_interleaved(repeat: int, calls: list[Call | None]) -> list[list[float]]:
    """Seconds per run of each call, the calls taking turns run by run (on a shared machine a
    burst of load then hits all of them alike). A None call gets an empty list."""
    live = [c for c in calls if c is not None]
    for fn, args in live:
        fn(*args)  # warm-up
    times: dict[int, list[float]] = {id(c): [] for c in live}
    for _ in range(repeat):
        for c in live:
            start = time.perf_counter()
            c[0](*c[1])
            times[id(c)].append(time.perf_counter() - start)
    return [times[id(c)] if c is not None else [] for c in calls]


def _libggml() -> ctypes.CDLL | None:
    """llama.cpp's libggml-base from llama-cpp-python, when it is installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(str(Path(spec.origin).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_chunk.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return lib


def _c_dequantize(lib: ctypes.CDLL, t: GGMLType, raw: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(n, np.float32)
    name = {GGMLType.F16: "ggml_fp16_to_fp32_row", GGMLType.BF16: "ggml_bf16_to_fp32_row"}.get(
        t, f"dequantize_row_{t.name.lower().replace('_k', '_K')}"
    )
    getattr(lib, name)(ctypes.c_void_p(raw.ctypes.data), ctypes.c_void_p(out.ctypes.data),
                       ctypes.c_int64(n))  # fmt: skip
    return out


def _c_quantize(lib: ctypes.CDLL, t: GGMLType, x: np.ndarray) -> np.ndarray:
    block, size = quants.TYPE_SIZES[t]
    out = np.empty(x.size // block * size, np.uint8)
    lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, *x.shape, None)
    return out


def _row(name: str, mb: float, columns: list[list[float]]) -> str:
    """Median MB/s per implementation, then ours relative to gguf-py (column 2)."""
    cells = [f"{mb / statistics.median(c):10.0f}" if c else f"{'n/a':>10}" for c in columns]
    ratio = statistics.median(columns[1]) / statistics.median(columns[0]) if columns[1] else None
    return f"{name:8} " + " ".join(cells) + (f" {ratio:7.2f}x" if ratio else "")


def bench_dequant(n_elements: int, repeat: int, lib: ctypes.CDLL | None) -> None:
    rng = np.random.default_rng(0)
    mb = n_elements * 4 / 1e6
    print(f"\ndequantize {n_elements} elements ({mb:.1f} MB float32 out), median of {repeat}, MB/s")
    print(f"{'type':8} {'ours':>10} {'gguf-py':>10} {'libggml':>10} {'ours/gguf':>8}")
    for t in quants.QUANTS:
        raw = random_blocks(t, n_elements, rng)
        shape = (n_elements // ROW, ROW)
        ref_raw = raw.reshape(n_elements // ROW, -1)
        if t in (GGMLType.F32, GGMLType.F16):
            ref_raw = ref_raw.view(np.float32 if t == GGMLType.F32 else np.float16)
        in_gguf_py = t != GGMLType.Q8_K
        ours, ref, c = time_interleaved(
            repeat,
            [
                (quants.dequantize, (raw, t, shape)),
                (gguf.quants.dequantize, (ref_raw, t)) if in_gguf_py else None,
                (_c_dequantize, (lib, t, raw, n_elements)) if lib and t != GGMLType.F32 else None,
            ],
        )
        print(_row(t.name, mb, [ours, ref, c]))
    print("(F32 is a zero-copy view in both: its row measures per-call overhead, not throughput)")


def bench_quantize(n_elements: int, repeat: int, lib: ctypes.CDLL | None) -> None:
    x = np.random.default_rng(1).standard_normal((n_elements // ROW, ROW)).astype(np.float32)
    mb = x.nbytes / 1e6
    print(f"\nquantize {n_elements} float32 elements ({mb:.1f} MB in), median of {repeat}, MB/s")
    print(f"{'type':8} {'ours':>10} {'gguf-py':>10} {'libggml':>10} {'ours/gguf':>8}")
    for t in quants.QUANTIZERS:
        in_gguf_py = t not in (GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)  # no K quantizers
        ours, ref, c = time_interleaved(
            repeat,
            [
                (quants.quantize, (x, t)),
                (gguf.quants.quantize, (x, t)) if in_gguf_py else None,
                (_c_quantize, (lib, t, x)) if lib and quants.TYPE_SIZES[t][0] > 1 else None,
            ],
        )
        print(_row(t.name, mb, [ours, ref, c]))


def bench_load(path: Path, repeat: int) -> None:
    print(f"\nload {path.name} ({path.stat().st_size / 1e6:.0f} MB), {repeat} runs, seconds")
    print(f"{'reader':22} {'median':>8} {'min':>8}")
    names = ("engine.gguf.reader.GGUFFile", "gguf.GGUFReader")
    results = time_interleaved(repeat, [(GGUFFile, (path,)), (gguf.GGUFReader, (path,))])
    for name, times in zip(names, results, strict=True):
        print(f"{name:22} {statistics.median(times):8.3f} {min(times):8.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 22, help="elements per type")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run; no load test")
    parser.add_argument("--no-load", action="store_true", help="skip the GGUF load timing")
    parser.add_argument(
        "--quantize-fraction", type=int, default=8, help="quantize elements / this many"
    )
    args = parser.parse_args(argv)
    n_elements, repeat = (1 << 14, 1) if args.smoke else (args.elements, args.repeat)
    n_elements -= n_elements % ROW
    gguf_version = importlib.metadata.version("gguf")
    lib = _libggml()
    versions = [f"gguf-py {gguf_version}"]
    if lib is not None:  # the oracle is optional (README's install leaves it out)
        versions.append(
            f"libggml from llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"
        )
    print(machine_line(*versions))
    bench_dequant(n_elements, repeat, lib)
    bench_quantize(n_elements // args.quantize_fraction, repeat, lib)
    if not (args.smoke or args.no_load):
        bench_load(model_path("gemma3"), max(3, repeat // 2))


if __name__ == "__main__":
    main()
