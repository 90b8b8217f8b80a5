"""`record`: a corpus of Ollama requests -> a golden JSONL of refllama's answers.

The golden file (format "refllama-golden", version 1) is JSON Lines, UTF-8:

- line 1, the header: `format`, `version`, `model` (store name), `model_digest` (manifest
  sha256), `weights` (the GGUF blob's sha256), `engine` (refllama and NumPy versions),
  `top_logprobs` (alternatives kept per token), `trace` (whether cases carry the sampler trace),
  `corpus_sha256` and `cases` (how many).
- then one line per corpus case, in corpus order: `index`, `id`, `kind` ("generate" or
  "chat"), `request` (as given), `options` (the resolved engine options), `greedy`
  (temperature <= 0), `prompt` (rendered text) and `prompt_ids`, `ids` (generated token ids,
  a final end-of-generation token included), `text`, `thinking`, `tokens` (per generated token:
  `token`, `bytes`, `logprob`, `top_logprobs`), `done_reason`, optionally `trace`; or, for a
  request the server refuses, `error` with the server's message.

Nothing in it depends on time, machine or worker count, so a golden recorded twice is
byte-identical. Writing is append-only, one whole line per write and fsync, in corpus order;
an interrupted run resumes after the last complete case (a torn last line is cut off).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from engine import load
from engine.errors import EngineError
from server import inference
from server.scheduler import Scheduler
from server.schemas import ChatRequest, GenerateRequest
from server.store import Store

GOLDEN_FORMAT = "refllama-golden"
GOLDEN_VERSION = 1
DEFAULT_TOP_LOGPROBS = 5

Progress = Callable[[int, int, float], None]  # (cases done, cases in total, seconds elapsed)


class GoldenError(Exception):
    """A corpus or golden file that cannot be used, with what was expected and found."""


@dataclass(frozen=True)
class Case:
    index: int
    id: str
    request: dict[str, Any]

    @property
    def kind(self) -> str:
        return "chat" if "messages" in self.request else "generate"


@dataclass(frozen=True)
class _Setup:
    """What a worker needs to record cases; plain data so it pickles to processes and Ray."""

    store_root: str
    model: str
    top_logprobs: int
    trace: bool


def read_corpus(path: Path) -> list[Case]:
    """JSONL: each line a request, or {"id": ..., "request": {...}}; blank lines skipped."""
    cases: list[Case] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise GoldenError(
                f"{path}:{n}: expected a JSON object, found invalid JSON ({e})"
            ) from e
        if not isinstance(value, dict):
            raise GoldenError(f"{path}:{n}: expected a JSON object, found {type(value).__name__}")
        request = value.get("request", value)
        if not isinstance(request, dict):
            raise GoldenError(f"{path}:{n}: expected `request` to be an object")
        case_id = str(value["id"]) if "request" in value and "id" in value else str(len(cases))
        cases.append(Case(len(cases), case_id, request))
    return cases


def golden_line(value: dict[str, Any]) -> bytes:
    """One golden line: compact JSON, keys in insertion order, non-ASCII kept, newline ended."""
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def record(
    corpus: Path,
    model: str,
    output: Path,
    *,
    store_root: Path | None = None,
    workers: int = 1,
    top_logprobs: int = DEFAULT_TOP_LOGPROBS,
    trace: bool = False,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Record every corpus case not yet in `output`; returns how many were recorded now.

    `model` names a model in the store at `store_root` (default: OLLAMA_MODELS, as the server).
    Cases run on `workers` local processes, or as that many Ray tasks on the cluster at
    `ray_address` (needs the `ray` extra and refllama importable on the cluster's nodes).
    """
    if workers < 1:
        raise GoldenError(f"workers must be >= 1, found {workers}")
    if not 0 <= top_logprobs <= 20:
        raise GoldenError(f"top_logprobs must be between 0 and 20, found {top_logprobs}")
    cases = read_corpus(corpus)
    store = Store(store_root) if store_root is not None else Store.from_env()
    header = _header(store, model, corpus, len(cases), top_logprobs, trace)
    done = _resume(output, header)
    pending = cases[done:]
    setup = _Setup(str(store.root), model, top_logprobs, trace)
    start = time.monotonic()
    with output.open("ab") as out:
        if done == 0:
            _append(out, golden_line(header))
        if not pending:
            return 0
        if ray_address is not None:
            results = _ray_results(ray_address, setup, pending, workers)
        else:
            results = _pool_results(setup, pending, workers)
        for n, case in enumerate(results, start=1):
            _append(out, golden_line(case))
            if progress is not None:
                progress(done + n, len(cases), time.monotonic() - start)
    return len(pending)


def _append(out: Any, line: bytes) -> None:
    out.write(line)
    out.flush()
    os.fsync(out.fileno())


def _header(
    store: Store, model: str, corpus: Path, n_cases: int, top_logprobs: int, trace: bool
) -> dict[str, Any]:
    rec = store.resolve(model)
    return {
        "format": GOLDEN_FORMAT,
        "version": GOLDEN_VERSION,
        "model": model,
        "model_digest": f"sha256:{rec.digest}",
        "weights": rec.gguf_path.name.replace("sha256-", "sha256:"),
        "engine": {"refllama": version("refllama"), "numpy": np.__version__},
        "top_logprobs": top_logprobs,
        "trace": trace,
        "corpus_sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
        "cases": n_cases,
    }


def _resume(output: Path, header: dict[str, Any]) -> int:
    """How many cases `output` already holds; cuts a torn last line. 0 for a new file."""
    if not output.exists() or output.stat().st_size == 0:
        return 0
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    lines = complete.splitlines()
    if not lines or json.loads(lines[0]) != header:
        raise GoldenError(
            f"{output} holds a golden of another corpus, model, engine or settings "
            f"(expected header {json.dumps(header)}); remove it or choose another output"
        )
    for position, line in enumerate(lines[1:]):
        index = json.loads(line).get("index")
        if index != position:
            raise GoldenError(f"{output}: case line {position + 1} has index {index}")
    if len(complete) < len(data):
        with output.open("r+b") as f:
            f.truncate(len(complete))
    return len(lines) - 1


# --------------------------------------------------------------------------------------------
# Running cases: local processes or Ray tasks, results always in corpus order.


def _pool_results(setup: _Setup, cases: Sequence[Case], workers: int) -> Iterator[dict[str, Any]]:
    if workers == 1:
        with _Recorder(setup) as recorder:
            for case in cases:
                yield recorder.record(case)
        return
    # spawn, not fork: a forked child would inherit the parent's BLAS threads and locks.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(setup,)) as pool:
        yield from pool.imap(_record_in_worker, cases, chunksize=1)


_worker: _Recorder | None = None  # one per pool process, set by its initializer


def _init_worker(setup: _Setup) -> None:
    global _worker
    _worker = _Recorder(setup)  # lives as long as its process, which the pool ends


def _record_in_worker(case: Case) -> dict[str, Any]:
    assert _worker is not None  # the pool's initializer ran
    return _worker.record(case)


def _record_shard(setup: _Setup, cases: list[Case]) -> list[dict[str, Any]]:
    with _Recorder(setup) as recorder:
        return [recorder.record(case) for case in cases]


def _ray_results(
    address: str, setup: _Setup, cases: Sequence[Case], tasks: int
) -> Iterator[dict[str, Any]]:
    """Contiguous shards as Ray tasks; each shard's cases are written when it finishes."""
    # Imported here because Ray is an optional extra (`pip install refllama[ray]`).
    import ray

    ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        remote = ray.remote(_record_shard)
        size = -(-len(cases) // tasks)
        shards = [list(cases[i : i + size]) for i in range(0, len(cases), size)]
        refs = [remote.remote(setup, shard) for shard in shards]
        for ref in refs:
            yield from ray.get(ref)
    finally:
        ray.shutdown()


class _Recorder:
    """The server's request path in-process: parse, preflight, render, tokenize, generate."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup
        self.store = Store(Path(setup.store_root), prune=False)
        self.scheduler = Scheduler(load)
        self.loop = asyncio.Runner()

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.close()

    def record(self, case: Case) -> dict[str, Any]:
        head = {"index": case.index, "id": case.id, "kind": case.kind, "request": case.request}
        try:
            return head | self._run(case)
        except EngineError as e:
            return head | {"error": str(e)}

    def _run(self, case: Case) -> dict[str, Any]:
        body = case.request | {
            "model": self.setup.model,
            "stream": False,
            "logprobs": True,
            "top_logprobs": max(self.setup.top_logprobs, int(case.request.get("top_logprobs", 0))),
            "trace": True,  # the trace is where the sampled token ids come from
        }
        raw = json.dumps(body).encode("utf-8")
        rec = self.store.resolve(self.setup.model)
        arrived = time.monotonic_ns()
        if case.kind == "chat":
            job = self.loop.run(
                inference.prepare_chat(rec, ChatRequest.from_body(raw), self.scheduler, arrived)
            )
        else:
            job = self.loop.run(
                inference.prepare_generate(
                    rec, GenerateRequest.from_body(raw), self.scheduler, arrived
                )
            )
        if job is None:
            raise GoldenError(f"case {case.id}: a load-only request (no prompt or messages)")
        # A fresh KV cache per case, so no case depends on which cases ran before it in this
        # worker: the golden then cannot depend on how cases were sharded.
        job.runner.free_slots.clear()
        events = list(job.events)
        final = events[-1]
        if "error" in final:
            raise GoldenError(f"case {case.id}: generation failed: {final['error']}")
        traces = [t for e in events for t in e.get("trace", [])]
        tokens = [
            {
                "token": lp["token"],
                "bytes": lp.get("bytes", []),
                "logprob": lp["logprob"],
                "top_logprobs": [
                    {"token": t["token"], "bytes": t.get("bytes", []), "logprob": t["logprob"]}
                    for t in lp.get("top_logprobs", [])[: self.setup.top_logprobs]
                ],
            }
            for e in events
            for lp in e.get("logprobs", [])
        ]
        body_of = [e.get("message", e) for e in events]
        out: dict[str, Any] = {
            "options": _options_json(job.opts),
            "greedy": job.opts.temperature <= 0,
            "prompt": job.prompt_text,
            "prompt_ids": list(job.prompt_ids),
            "ids": [t["token"] for t in traces],
            "text": "".join(b.get("content", b.get("response", "")) for b in body_of),
            "thinking": "".join(b.get("thinking", "") for b in body_of),
            "tokens": tokens,
            "done_reason": final.get("done_reason", ""),
        }
        if self.setup.trace:
            out["trace"] = traces
        return out


def _options_json(opts: Any) -> dict[str, Any]:
    values = dataclasses.asdict(opts)
    values["stop"] = list(values["stop"])
    return values
