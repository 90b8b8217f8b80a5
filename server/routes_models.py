"""HTTP routes for model management: blobs, create, tags, show, copy, delete, pull, push.

`model_routes(store)` returns Starlette routes that server/app.py mounts beside the inference
routes. Each endpoint parses, delegates to server/store.py, server/create.py or server/oci.py,
and formats Ollama's answer (spec/ollama-api.md §11). Errors are answered here, with Ollama's
per-endpoint wording, so these routes behave the same in any application that mounts them.
Progress endpoints (create, pull, push) drive their sync generator from a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.errors import EngineError, GGUFError
from engine.gguf.quantize import quantize_gguf
from engine.gguf.reader import GGUFFile
from server import oci
from server.body import parse_body
from server.create import Quantizer, original_case, parse_create, run_create
from server.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidName,
    InvalidRequest,
    ModelNotFound,
    ServerError,
    go_quote,
)
from server.manifest import file_type_name
from server.model_info import capabilities, gguf_facts, model_info, tensor_list
from server.modelfile import render_modelfile, show_parameters
from server.names import parse_digest, parse_name
from server.schemas import decode_body
from server.store import ModelRecord, Store

log = logging.getLogger(__name__)

JSON_UTF8 = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"  # Ollama's progress endpoints and stream errors: no charset
NDJSON = "application/x-ndjson"

Handler = Callable[[Request], Awaitable[Response]]


def _shown_template(rec: ModelRecord) -> str:
    """The template the model renders with: its TEMPLATE layer, else the GGUF's own Jinja chat
    template (Ollama would show the Go template it matched at create time), else
    `{{ .Prompt }}`."""
    if rec.template is not None:
        return rec.template
    try:
        jinja = gguf_facts(rec.gguf_path).chat_template
    except GGUFError:
        jinja = None
    return jinja or "{{ .Prompt }}"


def _json(obj: Any, status: int = 200, media_type: str = JSON_UTF8) -> Response:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(body.encode("utf-8"), status_code=status, media_type=media_type)


def _error(exc: ServerError, media_type: str = JSON_UTF8) -> Response:
    return _json({"error": exc.message}, exc.status_code, media_type)


def _answers_errors(handler: Handler) -> Handler:
    """Turn ServerError (and stray engine errors, as 500) into `{"error": …}` responses."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServerError as e:
            return _error(e)
        except EngineError as e:
            log.warning("%s %s: %s", request.method, request.url.path, e)
            return _error(ServerError(str(e)))

    return wrapped


def local_time(ns: int) -> str:
    """RFC 3339 in the server's zone with ns precision, trailing zeros cut (`modified_at`)."""
    secs, frac = divmod(ns, 1_000_000_000)
    local = time.localtime(secs)
    offset = local.tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    hh, mm = divmod(abs(offset) // 60, 60)
    digits = f"{frac:09d}".rstrip("0")
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", local)
        + (f".{digits}" if digits else "")
        + f"{sign}{hh:02d}:{mm:02d}"
    )


# ---- progress streams (create, pull, push) ----------------------------------------------------


async def _progress_response(events: Iterator[dict[str, Any]], stream: bool) -> Response:
    """NDJSON progress, or only the last object when `stream` is false (spec §1.6, §1.7).

    The first object is computed before the response starts, so an error before any progress
    keeps its own status; later errors end the stream with an `{"error": …}` line.
    """
    if not stream:
        try:
            last = await anyio.to_thread.run_sync(_last, events)
        except ServerError as e:
            return _error(e, JSON_PLAIN)
        return _json(last, media_type=JSON_PLAIN)
    try:
        first = await anyio.to_thread.run_sync(next, events, None)
    except ServerError as e:
        return _error(e, JSON_PLAIN)
    if first is None:
        return Response(b"", media_type=NDJSON)
    return StreamingResponse(_lines(first, events), media_type=NDJSON)


def _last(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for last in events:  # noqa: B007 (only the final object is answered)
        pass
    return last


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


async def _lines(first: dict[str, Any], events: Iterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    yield _line(first)
    try:
        while (event := await anyio.to_thread.run_sync(next, events, None)) is not None:
            yield _line(event)
    except (ServerError, EngineError, OSError) as e:
        log.warning("progress stream failed: %s", e)
        yield _line({"error": str(e)})
    finally:
        await anyio.to_thread.run_sync(_close, events)


def _close(events: Iterator[dict[str, Any]]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        close()


def _guarded(events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Re-raise stray engine or OS errors as ServerError (500) so they become error lines."""
    try:
        yield from events
    except ServerError:
        raise
    except (EngineError, OSError) as e:
        raise ServerError(str(e)) from e


# ---- request fields ----------------------------------------------------------------------------


def _type_error(key: str, value: Any, go_type: str) -> InvalidRequest:
    """Go's unmarshal message; the JSON kind is named as encoding/json names it."""
    kinds = ((bool, "bool"), (int | float, "number"), (str, "string"), (list, "array"))
    kind = next((name for t, name in kinds if isinstance(value, t)), "object")
    return InvalidRequest(
        f"json: cannot unmarshal {kind} into Go struct field .{key} of type {go_type}"
    )


def _str_field(body: dict[str, Any], *keys: str) -> str:
    """The first of `keys` holding a non-empty string (later keys are deprecated aliases)."""
    for key in keys:
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise _type_error(key, value, "string")
        return value
    return ""


def _bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(key, value, "bool")
    return value


# ---- endpoints ---------------------------------------------------------------------------------


class ModelEndpoints:
    def __init__(self, store: Store, quantizer: Quantizer) -> None:
        self.store = store
        self.quantizer = quantizer

    # blobs (§11.6)

    async def head_blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        parse_digest(digest)
        if not self.store.has_blob(digest):
            raise BlobNotFound(digest)  # HEAD: the body never reaches the wire
        return Response(status_code=200)

    async def post_blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        parse_digest(digest)
        if self.store.has_blob(digest):
            return Response(status_code=200)
        tmp = self.store.temp_path()
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                # Chunks are small (about 64 KB): hashing and writing each inline costs less
                # than a hop to a worker thread.
                async for chunk in request.stream():
                    h.update(chunk)
                    f.write(chunk)
                await anyio.to_thread.run_sync(os.fsync, f.fileno())
            actual = f"sha256:{h.hexdigest()}"
            # Ollama keeps the bytes under their true digest even when they mismatch the URL.
            await anyio.to_thread.run_sync(self.store.commit_temp, tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)
        if actual != digest:
            raise DigestMismatch(digest, actual)
        return Response(status_code=201)

    # create (§11.5)

    async def create(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="CreateRequest"))
        req = parse_create(body)
        stream = _bool_field(body, "stream", True)
        pull = functools.partial(oci.pull, self.store, insecure=False)
        events = _guarded(run_create(self.store, req, self.quantizer, pull))
        return await _progress_response(events, stream)

    # tags (§11.1)

    async def tags(self, request: Request) -> Response:
        records = await anyio.to_thread.run_sync(self.store.list_models)
        models = []
        for rec in records:
            try:
                models.append(await anyio.to_thread.run_sync(self._tag_entry, rec))
            except (EngineError, OSError) as e:
                log.warning("skipping %s in /api/tags: %s", rec.name, e)
        return _json({"models": models})

    def _tag_entry(self, rec: ModelRecord) -> dict[str, Any]:
        facts = gguf_facts(rec.gguf_path)
        details = rec.details.to_json()
        if details["quantization_level"] in ("", "unknown"):
            ft = facts.file_type
            details["quantization_level"] = "F32" if ft == 0 else file_type_name(ft)
        if facts.context_length:
            details["context_length"] = facts.context_length
        if facts.embedding_length:
            details["embedding_length"] = facts.embedding_length
        entry = {
            "name": rec.name,
            "model": rec.name,
            "modified_at": local_time(rec.modified_ns),
            "size": rec.size,
            "digest": rec.digest,
            "details": details,
        }
        caps = capabilities(rec)
        if caps:
            entry["capabilities"] = caps
        return entry

    # show (§11.2)

    async def show(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="ShowRequest"))
        raw = _str_field(body, "model", "name").strip()
        if not raw:
            raise InvalidRequest("model is required")
        name = parse_name(raw)
        verbose = _bool_field(body, "verbose", False)
        system = _str_field(body, "system")
        options = original_case(body.get("options"))
        try:
            rec = self.store.resolve(name)
        except ModelNotFound:
            raise ModelNotFound(raw, f"model '{name.short}' not found") from None
        extra = options if isinstance(options, dict) else {}
        return _json(await anyio.to_thread.run_sync(self._show, rec, verbose, system, extra))

    def _show(
        self, rec: ModelRecord, verbose: bool, system: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            gguf: GGUFFile | None = GGUFFile(rec.gguf_path)
        except GGUFError:
            gguf = None
        system_text = system or rec.system or ""
        out: dict[str, Any] = {}
        if rec.license:
            out["license"] = "\n".join(rec.license)
        out["modelfile"] = render_modelfile(
            rec.name,
            rec.gguf_path,
            rec.template,
            system_text,
            {**rec.parameters, **options},
            rec.license,
            rec.messages,
            rec.adapters,
            rec.projectors,
        )
        params = show_parameters(rec.parameters)
        if params:
            out["parameters"] = params
        out["template"] = _shown_template(rec)
        if system_text:
            out["system"] = system_text
        out["details"] = rec.details.to_json()
        if rec.messages:
            out["messages"] = [
                {"role": m.get("role"), "content": m.get("content")} for m in rec.messages
            ]
        out["model_info"] = model_info(gguf, verbose) if gguf is not None else {}
        if rec.projectors:
            try:
                out["projector_info"] = model_info(GGUFFile(rec.projectors[0]), verbose)
            except GGUFError as e:
                log.warning("projector of %s does not parse: %s", rec.name, e)
        if gguf is not None:
            out["tensors"] = tensor_list(gguf)
        out["capabilities"] = capabilities(rec)
        out["modified_at"] = local_time(rec.modified_ns)
        if rec.config.get("requires"):
            out["requires"] = rec.config["requires"]
        return out

    # copy (§11.3) and delete (§11.4)

    async def copy(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="CopyRequest"))
        source = _str_field(body, "source")
        destination = _str_field(body, "destination")
        try:
            src = parse_name(source)
        except InvalidName:
            raise InvalidName(source, f"source {go_quote(source)} is invalid") from None
        try:
            dst = parse_name(destination)
        except InvalidName:
            raise InvalidName(
                destination, f"destination {go_quote(destination)} is invalid"
            ) from None
        try:
            await anyio.to_thread.run_sync(self.store.copy, src, dst)
        except ModelNotFound:
            raise ModelNotFound(source, f"model {go_quote(source)} not found") from None
        return Response(status_code=200)

    async def delete(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="DeleteRequest"))
        raw = _str_field(body, "model", "name").strip()
        if not raw:
            raise InvalidRequest("model is required")
        try:
            name = parse_name(raw)
        except InvalidName:
            raise InvalidName(raw, f"name {go_quote(raw)} is invalid") from None
        try:
            await anyio.to_thread.run_sync(self.store.delete, name)
        except ModelNotFound:
            raise ModelNotFound(raw, f"model '{raw}' not found") from None
        return Response(status_code=200)

    # pull (§11.7) and push (§11.8)

    async def pull(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="PullRequest"))
        raw = _str_field(body, "model", "name").strip()
        name = parse_name(raw)
        insecure = _bool_field(body, "insecure", False)
        events = _guarded(oci.pull(self.store, name, insecure))
        return await _progress_response(events, _bool_field(body, "stream", True))

    async def push(self, request: Request) -> Response:
        body = await parse_body(request, functools.partial(decode_body, struct="PushRequest"))
        raw = _str_field(body, "model", "name")
        if not raw:
            raise InvalidRequest("model is required")
        name = parse_name(raw)
        insecure = _bool_field(body, "insecure", False)
        events = _guarded(oci.push(self.store, name, insecure))
        return await _progress_response(events, _bool_field(body, "stream", True))


def model_routes(store: Store, scheduler: object | None = None) -> list[Route]:
    """The model-management routes over `store` (spec §1.2).

    `scheduler` is accepted from create_app but unused: like Ollama, deleting or replacing a
    model never unloads a loaded instance.
    """
    ep = ModelEndpoints(store, quantize_gguf)
    routes = [
        ("/api/blobs/{digest}", ep.head_blob, ["HEAD"]),
        ("/api/blobs/{digest}", ep.post_blob, ["POST"]),
        ("/api/create", ep.create, ["POST"]),
        ("/api/tags", ep.tags, ["GET", "HEAD"]),
        ("/api/show", ep.show, ["POST"]),
        ("/api/copy", ep.copy, ["POST"]),
        ("/api/delete", ep.delete, ["DELETE"]),
        ("/api/pull", ep.pull, ["POST"]),
        ("/api/push", ep.push, ["POST"]),
    ]
    return [Route(path, _answers_errors(fn), methods=methods) for path, fn, methods in routes]
