"""The Starlette application: route table, thin endpoints, one exception-to-HTTP map.

Endpoints parse (server/schemas.py), delegate (server/inference.py, server/embeddings.py, the
model routes of server/routes_models.py) and format. Every error is an exception: the map in
`EXCEPTION_STATUS` turns it into Ollama's `{"error": "..."}` body with its status
(spec/ollama-api.md §1.7, §19). CORS and Host checks live in server/guard.py (§1.3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from engine import load
from engine.errors import (
    Cancelled,
    ContextOverflow,
    EngineError,
    GrammarError,
    InvalidOption,
    TokenizerError,
)
from server import embeddings, inference
from server.body import parse_body, parse_bytes, read_body
from server.compat import anthropic, openai, responses
from server.errors import InvalidRequest, ModelNotFound, ServerError, go_quote
from server.events import chat_event, dumps, generate_event, local_timestamp, ndjson_line
from server.guard import OriginAndHostGuard
from server.job import Job
from server.names import parse_name
from server.preflight import model_capabilities, model_template
from server.routes_models import model_routes
from server.scheduler import Scheduler
from server.schemas import (
    ChatRequest,
    DetokenizeRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    TokenizeRequest,
)
from server.store import ModelRecord, Store

log = logging.getLogger(__name__)

# The Ollama API version this server speaks (GET /api/version); clients gate features on it.
OLLAMA_VERSION = "0.12.6"
# Go's maximum time.Duration: "forever" expires about 292 years from now (spec §3.2).
_FOREVER_SECONDS = (2**63 - 1) / 1e9
# The sampling inspector's static page (HTML, CSS, JS; no build step), served at /inspect/.
INSPECTOR_DIR = Path(__file__).parent / "inspect"

# --------------------------------------------------------------------------------------------
# Errors: the one map (STYLE §2.7). Starlette walks each exception's MRO, so the most specific
# class listed wins. ServerError subclasses carry their own status.

EXCEPTION_STATUS: dict[type[Exception], int] = {
    ContextOverflow: 400,  # a prompt that cannot fit (spec §19)
    InvalidOption: 400,  # out of range; type errors become 500 in preflight.request_options
    GrammarError: 400,  # a JSON schema the grammar compiler rejects
    TokenizerError: 400,  # e.g. a token id outside the vocabulary
    EngineError: 500,  # template execution errors included, as Ollama answers them
    Exception: 500,
}


JSON_UTF8 = "application/json; charset=utf-8"


class JSONBody(Response):
    """A JSON object rendered by schemas.dumps (non-finite floats handled deliberately)."""

    media_type = JSON_UTF8

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


def _status(exc: Exception) -> int:
    if isinstance(exc, ServerError):
        return exc.status_code
    return next(EXCEPTION_STATUS[c] for c in type(exc).__mro__ if c in EXCEPTION_STATUS)


def _error_body(exc: Exception, media_type: str = JSON_UTF8) -> Response:
    return JSONBody({"error": str(exc).strip()}, status_code=_status(exc), media_type=media_type)


def _error_response(request: Request, exc: Exception) -> Response:
    if _status(exc) >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error_body(exc)


def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", 404)
    if exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", 405)
    return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)


# --------------------------------------------------------------------------------------------
# Streaming: NumPy runs in worker threads; the event loop only moves bytes.


class EventStream(StreamingResponse):
    """A streamed response over a job's events, each step computed in a worker thread.

    `frame` writes one event: an NDJSON line for /api, server-sent events for the /v1
    translations. A client disconnect cancels the job even while nothing is being sent (text
    held back); when the stream ends for any reason the job is closed, which ends generation
    and releases the model.
    """

    def __init__(
        self,
        first: dict[str, Any],
        job: Job,
        frame: Callable[[dict[str, Any]], bytes] = ndjson_line,
        media_type: str = "application/x-ndjson",
    ) -> None:
        self._job = job
        self._frame = frame
        super().__init__(self._lines(first), media_type=media_type)

    async def _lines(self, first: dict[str, Any]) -> AsyncIterator[bytes]:
        yield self._frame(first)
        try:
            while (
                event := await anyio.to_thread.run_sync(next, self._job.events, None)
            ) is not None:
                yield self._frame(event)
        except Cancelled:
            return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    continue
                self._job.cancelled.set()

            tg.start_soon(watch)
            try:
                await super().__call__(scope, receive, send)
            except ClientDisconnect:
                pass  # the client went away mid-stream: nothing left to answer
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._job.close)


async def _respond(job: Job, request: Request) -> Response:
    """Stream the job's events as NDJSON, or combine them into one object (spec §1.6).

    The first event is computed before the response starts, so an error while the prompt is
    processed still gets its own status instead of a 200 stream (spec §1.7); such an error is
    sent as `application/json` without a charset, as Ollama sends it. A client that goes away
    meanwhile stops the prompt processing between two layers.
    """
    if not job.stream or job.single:
        try:
            return JSONBody(await _combine_while_connected(job, request))
        except Cancelled:
            return Response(status_code=499)  # nobody is listening any more
        finally:
            await anyio.to_thread.run_sync(job.close)
    try:
        first = await _first_while_connected(job, request)
    except Cancelled:
        await anyio.to_thread.run_sync(job.close)
        return Response(status_code=499)
    except EngineError as exc:
        await anyio.to_thread.run_sync(job.close)
        return _error_body(exc, media_type="application/json")
    except BaseException:
        await anyio.to_thread.run_sync(job.close)
        raise
    if first is None:  # the repeat guard ended generation before any piece: an empty stream
        await anyio.to_thread.run_sync(job.close)
        return Response(b"", media_type="application/x-ndjson")
    return EventStream(first, job)


T = TypeVar("T")


async def _while_connected(
    request: Request, work: Callable[[], Awaitable[T]], cancel: threading.Event
) -> T:
    """`await work()`, setting `cancel` if the client disconnects meanwhile."""
    result: list[T] = []
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                continue
            cancel.set()

        tg.start_soon(watch)
        try:
            result.append(await work())
        except Exception as exc:  # raised below, so it reaches the error map unwrapped
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result[0]


async def _combine_while_connected(job: Job, request: Request) -> dict[str, Any]:
    """`job.combine()` in a worker thread; a client disconnect cancels the job meanwhile."""
    return await _while_connected(
        request, lambda: anyio.to_thread.run_sync(job.combine), job.cancelled
    )


async def _first_while_connected(job: Job, request: Request) -> dict[str, Any] | None:
    """The job's first event (the prompt is processed for it), cancelled on a disconnect."""
    return await _while_connected(
        request, lambda: anyio.to_thread.run_sync(next, job.events, None), job.cancelled
    )


# --------------------------------------------------------------------------------------------
# Endpoints


class Endpoints:
    def __init__(self, store: Store, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONBody({"version": OLLAMA_VERSION})

    async def generate(self, request: Request) -> Response:
        arrived = time.monotonic_ns()
        job = await self._generate_job(await read_body(request), arrived)
        return JSONBody(job) if isinstance(job, dict) else await _respond(job, request)

    async def chat(self, request: Request) -> Response:
        arrived = time.monotonic_ns()
        job = await self._chat_job(await read_body(request), arrived)
        return JSONBody(job) if isinstance(job, dict) else await _respond(job, request)

    async def embed(self, request: Request) -> Response:
        arrived = time.monotonic_ns()
        body = await read_body(request)
        cancel = threading.Event()
        try:
            answer = await _while_connected(
                request, lambda: self._embed(body, arrived, cancel.is_set), cancel
            )
        except Cancelled:
            return Response(status_code=499)
        return JSONBody(answer)

    # The native paths, shared by /api and the /v1 translations. A load or unload request
    # (no prompt) is answered with its one event instead of a job.

    async def _generate_job(self, body: bytes, arrived: int) -> Job | dict[str, Any]:
        req = await parse_bytes(body, GenerateRequest.from_body)
        if not req.model.strip():
            raise ModelNotFound("", "model '' not found")
        if not req.prompt and req.keep_alive == 0 and self._unload_deleted(req.model):
            return generate_event(req.model, "", done=True, done_reason="unload")
        record = self._resolve(req.model)
        if not req.prompt and req.keep_alive == 0:
            self.scheduler.unload(record)
            return generate_event(req.model, "", done=True, done_reason="unload")
        job = await inference.prepare_generate(record, req, self.scheduler, arrived)
        if job is None:
            return generate_event(req.model, "", done=True, done_reason="load")
        return job

    async def _chat_job(
        self, body: bytes, arrived: int, relax_thinking: bool = False
    ) -> Job | dict[str, Any]:
        """`relax_thinking` drops `think` for a model that cannot think instead of failing,
        as Ollama does for its Anthropic route."""
        req = await parse_bytes(body, ChatRequest.from_body)
        if not req.model.strip():
            raise InvalidRequest("model is required")
        record = self._resolve(req.model)
        if not req.messages and req.keep_alive == 0:
            self.scheduler.unload(record)
            return chat_event(req.model, "", done=True, done_reason="unload")
        if relax_thinking and req.think:
            if "thinking" not in model_capabilities(record, model_template(record)):
                req = dataclasses.replace(req, think=None)
        job = await inference.prepare_chat(record, req, self.scheduler, arrived)
        if job is None:
            return chat_event(req.model, "", done=True, done_reason="load")
        return job

    async def _embed(
        self, body: bytes, arrived: int, cancelled: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        req = await parse_bytes(body, EmbedRequest.from_body)
        if not req.model.strip():
            raise ModelNotFound("", "model '' not found")
        record = self._resolve(req.model, pull_hint=True)
        return await embeddings.embed(record, req, self.scheduler, arrived, cancelled)

    async def embeddings(self, request: Request) -> Response:
        req = await parse_body(request, EmbeddingsRequest.from_body)
        if not req.model.strip():
            raise InvalidRequest("model is required")
        record = self._resolve(req.model, pull_hint=True)
        cancel = threading.Event()
        try:
            answer = await _while_connected(
                request,
                lambda: embeddings.embeddings(record, req, self.scheduler, cancel.is_set),
                cancel,
            )
        except Cancelled:
            return Response(status_code=499)
        return JSONBody(answer)

    async def ps(self, request: Request) -> Response:
        now = time.time()
        models = []
        for runner in self.scheduler.loaded():
            rec = runner.record
            details = rec.details.to_json()
            details["parent_model"] = ""
            models.append(
                {
                    "name": rec.name,
                    "model": rec.name,
                    "size": runner.size(),
                    "digest": rec.digest,
                    "details": details,
                    "expires_at": local_timestamp(
                        min(runner.ps_expiry(now), now + _FOREVER_SECONDS)
                    ),
                    "size_vram": 0,
                    "context_length": runner.num_ctx,
                }
            )
        return JSONBody({"models": models})

    async def tokenize(self, request: Request) -> Response:
        req = await parse_body(request, TokenizeRequest.from_body)
        if not req.model.strip():
            raise InvalidRequest("model is required")
        record = self._resolve(req.model)
        return JSONBody(await embeddings.tokenize(record, req, self.scheduler))

    async def detokenize(self, request: Request) -> Response:
        req = await parse_body(request, DetokenizeRequest.from_body)
        if not req.model.strip():
            raise InvalidRequest("model is required")
        record = self._resolve(req.model)
        return JSONBody(await embeddings.detokenize(record, req, self.scheduler))

    # /v1: OpenAI and Anthropic requests translated onto the native paths (server/compat/)

    async def v1_chat(self, request: Request) -> Response:
        return await self._translated(openai.ChatCompletions(await read_body(request)), request)

    async def v1_completions(self, request: Request) -> Response:
        return await self._translated(openai.Completions(await read_body(request)), request)

    async def v1_responses(self, request: Request) -> Response:
        return await self._translated(responses.Responses(await read_body(request)), request)

    async def v1_messages(self, request: Request) -> Response:
        return await self._translated(anthropic.Messages(await read_body(request)), request)

    async def v1_embeddings(self, request: Request) -> Response:
        arrived = time.monotonic_ns()
        tr = openai.Embeddings(await read_body(request))
        native = dumps(tr.native).encode()
        cancel = threading.Event()
        try:
            answer = await _while_connected(
                request, lambda: self._embed(native, arrived, cancel.is_set), cancel
            )
        except Cancelled:
            return Response(status_code=499)
        return JSONBody(tr.answer(answer))

    async def v1_models(self, request: Request) -> Response:
        return JSONBody(openai.model_list(await anyio.to_thread.run_sync(self.store.list_models)))

    async def v1_model(self, request: Request) -> Response:
        raw = request.path_params["model"]
        return JSONBody(openai.model_entry(raw, self._resolve(raw)))

    async def _translated(self, tr: Translation, request: Request) -> Response:
        arrived = time.monotonic_ns()
        native = dumps(tr.native).encode()
        if tr.kind == "chat":
            job = await self._chat_job(native, arrived, tr.relax_thinking)
        else:
            job = await self._generate_job(native, arrived)
        if isinstance(job, dict):  # a load request: one event, streamed when asked for
            if tr.stream:
                return Response(tr.frames(job), media_type="text/event-stream")
            return JSONBody(tr.answer(job))
        if not job.stream or job.single:
            try:
                return JSONBody(tr.answer(await _combine_while_connected(job, request)))
            except Cancelled:
                return Response(status_code=499)
            finally:
                await anyio.to_thread.run_sync(job.close)
        try:
            first = await _first_while_connected(job, request)
        except Cancelled:
            await anyio.to_thread.run_sync(job.close)
            return Response(status_code=499)
        except BaseException:
            await anyio.to_thread.run_sync(job.close)
            raise
        if first is None:  # the repeat guard ended generation before any piece
            await anyio.to_thread.run_sync(job.close)
            return Response(b"", media_type="text/event-stream")
        return EventStream(first, job, tr.frames, "text/event-stream")

    def _unload_deleted(self, raw: str) -> bool:
        """`refllama stop` of a model deleted while loaded: unload it by name (README)."""
        name = parse_name(raw.strip())
        try:
            self.store.resolve(name)
        except ModelNotFound:
            return self.scheduler.unload_name(name.full)
        return False

    def _resolve(self, raw: str, pull_hint: bool = False) -> ModelRecord:
        """The stored model for a request's `model`, with the endpoint's not-found wording."""
        name = parse_name(raw.strip())
        try:
            record = self.store.resolve(name)
        except ModelNotFound:
            if pull_hint:
                raise ModelNotFound(raw, _pull_hint(raw)) from None
            raise ModelNotFound(raw) from None
        if not record.gguf_path.exists():  # manifest without its model blob (spec §4.2 step 10)
            raise ModelNotFound(raw, _pull_hint(raw))
        return record


def _pull_hint(raw: str) -> str:
    return f"model {go_quote(raw)} not found, try pulling it first"


Translation = openai.ChatCompletions | openai.Completions | responses.Responses | anthropic.Messages


def _in_shape(
    endpoint: Callable[[Request], Awaitable[Response]], shape: Callable[[int, str], dict[str, Any]]
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint with every error answered in its API's own shape (`shape(status, text)`),
    at the status the native map gives it."""

    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # the one error map, rendered in the vendor's shape
            status = _status(exc)
            if status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return JSONBody(shape(status, str(exc).strip()), status_code=status)

    return answered


def _v1_routes(ep: Endpoints) -> list[BaseRoute]:
    oa, an = openai.error_body, anthropic.error_body
    return [
        Route("/v1/chat/completions", _in_shape(ep.v1_chat, oa), methods=["POST"]),
        Route("/v1/completions", _in_shape(ep.v1_completions, oa), methods=["POST"]),
        Route("/v1/embeddings", _in_shape(ep.v1_embeddings, oa), methods=["POST"]),
        Route("/v1/models", _in_shape(ep.v1_models, oa), methods=["GET"]),
        Route("/v1/models/{model}", _in_shape(ep.v1_model, oa), methods=["GET"]),
        Route("/v1/responses", _in_shape(ep.v1_responses, oa), methods=["POST"]),
        Route("/v1/messages", _in_shape(ep.v1_messages, an), methods=["POST"]),
    ]


# --------------------------------------------------------------------------------------------


def create_app(
    store: Store,
    scheduler: Scheduler | None = None,
    *,
    check_host: bool = True,
) -> Starlette:
    """The Ollama-compatible application over `store`.

    `check_host` enables the DNS-rebinding Host check; `refllama serve` turns it off when
    listening on a non-loopback address, as Ollama does.
    """
    sched = scheduler if scheduler is not None else Scheduler.from_env(load)
    ep = Endpoints(store, sched)
    routes: list[BaseRoute] = [
        Route("/", ep.root, methods=["GET", "HEAD"]),
        Route("/api/version", ep.version, methods=["GET", "HEAD"]),
        Route("/api/generate", ep.generate, methods=["POST"]),
        Route("/api/chat", ep.chat, methods=["POST"]),
        Route("/api/embed", ep.embed, methods=["POST"]),
        Route("/api/embeddings", ep.embeddings, methods=["POST"]),
        Route("/api/ps", ep.ps, methods=["GET"]),
        Route("/api/tokenize", ep.tokenize, methods=["POST"]),
        Route("/api/detokenize", ep.detokenize, methods=["POST"]),
        *model_routes(store, sched),
        Mount("/inspect", StaticFiles(directory=INSPECTOR_DIR, html=True), name="inspect"),
        *_v1_routes(ep),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:

            async def reap() -> None:
                while True:
                    await anyio.sleep(1.0)
                    sched.purge_expired()
                    await anyio.to_thread.run_sync(sched.return_memory)

            tg.start_soon(reap)
            yield
            tg.cancel_scope.cancel()

    handlers: dict[Any, Any] = {c: _error_response for c in (*EXCEPTION_STATUS, ServerError)}
    handlers[HTTPException] = _http_exception
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    extra = tuple(o.strip() for o in os.environ.get("OLLAMA_ORIGINS", "").split(",") if o.strip())
    app.add_middleware(OriginAndHostGuard, check_host=check_host, extra_origins=extra)
    app.state.scheduler = sched
    app.state.store = store
    return app
