"""Ollama's browser-facing checks (spec/ollama-api.md §1.3): the CORS allow-list and the
DNS-rebinding Host check, as one ASGI middleware.
"""

from __future__ import annotations

import ipaddress
import socket
from fnmatch import fnmatch
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

_LOCAL_ORIGINS = ("localhost", "127.0.0.1", "0.0.0.0")
_APP_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")
_EXTENSION_SCHEMES = ("chrome-extension", "moz-extension", "safari-web-extension")
_ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
    "x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, "
    "x-stainless-helper-method, x-stainless-lang, x-stainless-os, x-stainless-package-version, "
    "x-stainless-poll-helper, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)


def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    scheme, _, rest = origin.partition("://")
    host = rest.split(":")[0].strip("/")
    if scheme in ("http", "https") and host in _LOCAL_ORIGINS:
        return True
    if scheme in _APP_SCHEMES or scheme in _EXTENSION_SCHEMES:
        return True
    return any(fnmatch(origin, pattern) for pattern in extra)


def host_allowed(host_header: str) -> bool:
    host = host_header
    if host.startswith("["):  # [::1]:11434
        host = host[1:].split("]")[0]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    if host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


class OriginAndHostGuard:
    """ASGI middleware: Ollama's CORS allow-list and DNS-rebinding Host check."""

    def __init__(self, app: ASGIApp, check_host: bool, extra_origins: tuple[str, ...]) -> None:
        self.app = app
        self.check_host = check_host
        self.extra_origins = extra_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.check_host and not host_allowed(headers.get("host", "")):
            await Response(status_code=403)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if not origin_allowed(origin, self.extra_origins):
            await Response(status_code=403)(scope, receive, send)
            return
        cors = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS":
            preflight = Response(status_code=204)
            preflight.raw_headers.extend(cors)
            preflight.raw_headers += [
                (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
                (b"access-control-allow-headers", _ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", b"43200"),
            ]
            await preflight(scope, receive, send)
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + cors
            await send(message)

        await self.app(scope, receive, send_with_cors)
