"""/api/embed, /api/embeddings and the /api/tokenize, /api/detokenize extensions
(spec/ollama-api.md §10; llama-server's tokenize shapes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from engine import BertModel
from engine.sampling.options import Options
from server.errors import InvalidRequest
from server.events import Metrics, float32_list
from server.preflight import acquire_runner, gguf_facts, request_options
from server.scheduler import Runner, Scheduler
from server.schemas import DetokenizeRequest, EmbeddingsRequest, EmbedRequest, TokenizeRequest
from server.store import ModelRecord

log = logging.getLogger(__name__)


async def embed(
    record: ModelRecord,
    req: EmbedRequest,
    scheduler: Scheduler,
    arrived: int,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """/api/embed (spec §10.1); `cancelled` (the client left) stops it between layers."""
    opts = request_options(record, req.options)
    runner, load_ns = await acquire_runner(scheduler, record, opts, req.keep_alive, arrived)
    try:
        if not req.input:
            return {"model": req.model, "embeddings": []}
        vectors, count = await anyio.to_thread.run_sync(_embed_all, runner, req, opts, cancelled)
    finally:
        scheduler.release(runner)
    body: dict[str, Any] = {"model": req.model, "embeddings": vectors}
    metrics = Metrics(
        total_duration=time.monotonic_ns() - arrived,
        load_duration=load_ns,
        prompt_eval_count=count,
    )
    body.update(metrics.fields())
    return body


def _embed_all(
    runner: Runner, req: EmbedRequest, opts: Options, cancelled: Callable[[], bool] | None
) -> tuple[list[list[float]], int]:
    """Spec §10.1 step 7 for every input, in order; returns the vectors and the token total.

    An encoder (BertModel) embeds all inputs in one forward pass; its vectors are the same
    bytes as one input at a time (engine/models/bert.py `embed_many`)."""
    model, tok = runner.model, runner.model.tokenizer
    pooling = gguf_facts(runner.record.gguf_path).pooling_type
    ctx = min(opts.num_ctx, model.config.n_ctx_train)
    batch: list[list[int]] = []
    for text in req.input:
        ids = tok.encode(text, add_special=False, parse_special=False)
        limit = ctx - int(not ids or ids[0] != tok.bos_id) - int(not ids or ids[-1] != tok.eos_id)
        if limit <= 0:
            raise InvalidRequest("input after truncation exceeds maximum context length")
        if len(ids) > limit:
            if not req.truncate:
                raise InvalidRequest("the input length exceeds the context length")
            text = tok.decode(ids[:limit])
        ids = tok.encode(text, add_special=True, parse_special=False)
        if not ids:
            raise InvalidRequest(f"input {len(batch)} has no tokens to embed")
        batch.append(ids)
    if isinstance(model, BertModel):
        hidden = model.embed_many(batch, cancelled=cancelled)  # (T_i, D) each
    else:
        hidden = [model.embed(ids, cancelled=cancelled) for ids in batch]
    vectors = []
    for h in hidden:
        vector = normalize(pool(h, pooling))
        if 0 < req.dimensions < vector.size:
            vector = normalize(vector[: req.dimensions])
        vectors.append(float32_list(vector))
    return vectors, sum(len(ids) for ids in batch)


def pool(hidden: npt.NDArray[np.float32], pooling_type: int) -> npt.NDArray[np.float32]:
    """(T, D) -> (D,) by the GGUF's `{arch}.pooling_type`: 1 mean, 2 cls (first token),
    3 last. A generative model has none (0); like Ollama's own runner it then returns the
    last token's hidden state."""
    if pooling_type == 1:
        return hidden.mean(axis=0, dtype=np.float32)
    if pooling_type == 2:
        return hidden[0]
    return hidden[-1]


def normalize(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """v / max(||v||_2, 1e-12) in float32 (spec §10.1 step 7.8); NaN or Inf is an error."""
    if not np.isfinite(v).all():
        raise InvalidRequest("embedding contains NaN or Inf values")
    norm = max(float(np.linalg.norm(v.astype(np.float64))), 1e-12)
    return (v / np.float32(norm)).astype(np.float32)


async def embeddings(
    record: ModelRecord,
    req: EmbeddingsRequest,
    scheduler: Scheduler,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Legacy /api/embeddings: one raw pooled vector as float64, no normalisation (§10.2);
    `cancelled` (the client left) stops it between layers."""
    opts = request_options(record, req.options)
    runner, _ = await acquire_runner(scheduler, record, opts, req.keep_alive)
    try:
        if not req.prompt:
            return {"embedding": []}
        vector = await anyio.to_thread.run_sync(_embed_one, runner, req.prompt, opts, cancelled)
    finally:
        scheduler.release(runner)
    return {"embedding": vector.astype(np.float64).tolist()}


def _embed_one(
    runner: Runner, text: str, opts: Options, cancelled: Callable[[], bool] | None
) -> npt.NDArray[np.float32]:
    """The pooled vector of the prompt's first num_ctx tokens: Ollama's runner truncates a
    longer input to the context, and embedding all of it would hold the model for minutes."""
    tok = runner.model.tokenizer
    ctx = min(opts.num_ctx, runner.model.config.n_ctx_train)
    ids = tok.encode(text, add_special=True, parse_special=False)[:ctx]
    if not ids:
        raise InvalidRequest("prompt has no tokens to embed")
    hidden = runner.model.embed(ids, cancelled=cancelled)  # (T, D)
    return pool(hidden, gguf_facts(runner.record.gguf_path).pooling_type)


# --------------------------------------------------------------------------------------------
# Tokenize / detokenize (refllama extensions, llama-server's shapes)


async def tokenize(
    record: ModelRecord, req: TokenizeRequest, scheduler: Scheduler
) -> dict[str, Any]:
    opts = request_options(record, {})
    runner, _ = await acquire_runner(scheduler, record, opts, None)
    try:
        return await anyio.to_thread.run_sync(_tokenize, runner.model, req)
    finally:
        scheduler.release(runner)


def _tokenize(model: Any, req: TokenizeRequest) -> dict[str, Any]:
    ids = [
        int(t)
        for t in model.tokenize(
            req.content, add_special=req.add_special, parse_special=req.parse_special
        )
    ]
    if not req.with_pieces:
        return {"tokens": ids}
    return {"tokens": [{"id": t, "piece": _piece(model.tokenizer.token_bytes(t))} for t in ids]}


def _piece(raw: bytes) -> str | list[int]:
    """llama-server's `with_pieces`: the text when it is valid UTF-8, else the byte values."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


async def detokenize(
    record: ModelRecord, req: DetokenizeRequest, scheduler: Scheduler
) -> dict[str, Any]:
    opts = request_options(record, {})
    runner, _ = await acquire_runner(scheduler, record, opts, None)
    try:
        vocab = runner.model.tokenizer.n_vocab
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is out of range [0, {vocab})")
        return {"content": await anyio.to_thread.run_sync(runner.model.detokenize, req.tokens)}
    finally:
        scheduler.release(runner)
