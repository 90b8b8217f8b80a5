"""Grammar mask time per token on SmolLM2's 49k vocabulary, against llama.cpp's grammar sampler.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/bench_grammar.py [--repeat R]
       python benchmarks/bench_grammar.py --smoke

A JSON document is tokenized with SmolLM2's tokenizer and replayed through a grammar; at every
state on the way the (V,) mask is computed. Three rows per grammar:
  cold      a freshly compiled grammar: the DFA transitions are built while masking (first request)
  warm DFA  the same states again with every transition known, mask cache bypassed
  cached    GrammarConstraint.mask() as the sampler calls it (per-state mask cache, warm)
  llama.cpp llama_sampler_apply of llama.cpp's grammar sampler on all 49k candidates
Target (issue 8): median <= 20 ms per token.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import platform
import statistics
import time

import numpy as np
from _machine import machine_line

from engine.gguf.fetch import model_path
from engine.gguf.reader import GGUFFile
from engine.grammar import CompiledGrammar, GrammarConstraint, compute_mask, parse_gbnf, trie_for
from engine.grammar.json_schema import JSON_OBJECT_GBNF, schema_to_grammar
from engine.tokenizer import Tokenizer

DOCUMENT = {
    "name": "Zoë Ångström",
    "age": 42,
    "email": "zoe@example.com",
    "tags": ["alpha", "beta\n", "日本語"],
    "address": {"street": "1 Main St", "city": "Springfield", "zip": "12345"},
    "scores": [1, -2.5, 3.25e2, 0],
    "active": True,
    "notes": None,
}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("street", "city", "zip")},
            "required": ["street", "city", "zip"],
        },
        "scores": {"type": "array", "items": {"type": "number"}},
        "active": {"type": "boolean"},
        "notes": {"type": ["string", "null"]},
    },
    "required": ["name", "age", "email", "tags", "address", "scores", "active", "notes"],
}


def _llama_cpp_times(grammar_text: str, ids: list[int], repeat: int) -> list[float]:
    import llama_cpp as L

    params = L.llama_model_default_params()
    params.vocab_only = True
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(model_path("smollm2")).encode(), params)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    data = (L.llama_token_data * n_vocab)()
    view = np.ctypeslib.as_array(data)
    times: list[float] = []
    for _ in range(repeat):
        sampler = L.llama_sampler_init_grammar(vocab, grammar_text.encode(), b"root")
        for t in ids:
            view["id"] = np.arange(n_vocab)
            view["logit"] = 0.0
            arr = L.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
            t0 = time.perf_counter()
            L.llama_sampler_apply(sampler, ctypes.byref(arr))
            times.append((time.perf_counter() - t0) * 1e3)
            L.llama_sampler_accept(sampler, t)
        L.llama_sampler_free(sampler)
    L.llama_model_free(model)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the document")
    parser.add_argument("--smoke", action="store_true", help="one short pass, JSON mode only")
    args = parser.parse_args()

    tokenizer = Tokenizer.from_gguf(GGUFFile(model_path("smollm2")))
    t0 = time.perf_counter()
    trie = trie_for(tokenizer)
    trie_s = time.perf_counter() - t0
    text = json.dumps(DOCUMENT, ensure_ascii=False, indent=1 if not args.smoke else None)
    ids = tokenizer.encode(text, add_special=False)
    if args.smoke:
        ids = ids[:12]
    repeat = 1 if args.smoke else args.repeat
    grammars = {"format json": JSON_OBJECT_GBNF}
    if not args.smoke:
        grammars["schema"] = schema_to_grammar(SCHEMA)

    print(machine_line(f"python {platform.python_version()}"))
    print(f"vocabulary {trie.n_vocab} tokens, trie {trie.n_nodes} nodes built in {trie_s:.2f} s")
    print(f"document: {len(ids)} tokens, {repeat} pass(es)\n")
    print(
        f"{'grammar':<12} {'path':<10} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'steps':>6}"
    )
    for name, grammar_text in grammars.items():
        rows: dict[str, list[float]] = {"cold": [], "warm DFA": [], "cached": []}
        for _ in range(repeat):
            grammar = CompiledGrammar(parse_gbnf(grammar_text))
            c = GrammarConstraint(grammar, trie)
            cold_states = []
            for t in [*ids, None]:
                start = grammar.at_token_start(c.state)
                t0 = time.perf_counter()
                compute_mask(grammar, trie, start)
                rows["cold"].append((time.perf_counter() - t0) * 1e3)
                cold_states.append(start)
                if t is not None:
                    c.accept(t)
            for start in cold_states:
                t0 = time.perf_counter()
                compute_mask(grammar, trie, start)
                rows["warm DFA"].append((time.perf_counter() - t0) * 1e3)
            cached = GrammarConstraint(grammar, trie)
            for t in [*ids, None]:
                t0 = time.perf_counter()
                cached.mask()
                rows["cached"].append((time.perf_counter() - t0) * 1e3)
                if t is not None:
                    cached.accept(t)
        if importlib.util.find_spec("llama_cpp") is not None:
            rows["llama.cpp"] = _llama_cpp_times(grammar_text, ids, repeat)
        for path, times in rows.items():
            q = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
            print(
                f"{name:<12} {path:<10} {statistics.median(times):>10.2f} {q:>8.2f} "
                f"{max(times):>8.2f} {len(times):>6}"
            )


if __name__ == "__main__":
    main()
