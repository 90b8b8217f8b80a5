"""Reading JSON request bodies without stalling the event loop.

A body is read up to `MAX_BODY` bytes (more is a 413, refused from Content-Length before
anything is read when the client declares it), and a large one is decoded in a worker thread:
Python's JSON decoder holds the event loop for as long as it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from starlette.requests import Request

from server.errors import BodyTooLarge

MAX_BODY = 32 << 20  # bytes; prompts, messages and base64 images fit with room to spare
_INLINE_BYTES = 1 << 16  # bodies below this decode on the loop: a thread hop costs more

T = TypeVar("T")


async def read_body(request: Request) -> bytes:
    """The whole body, or BodyTooLarge once it passes MAX_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge(MAX_BODY)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(MAX_BODY)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, parse: Callable[[bytes], T]) -> T:
    """`parse(body)`, in a worker thread when the body is large."""
    return await parse_bytes(await read_body(request), parse)


async def parse_bytes(raw: bytes, parse: Callable[[bytes], T]) -> T:
    """`parse(raw)`, in a worker thread when `raw` is large."""
    if len(raw) < _INLINE_BYTES:
        return parse(raw)
    return await anyio.to_thread.run_sync(parse, raw)
