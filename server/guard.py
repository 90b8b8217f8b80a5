"""Ollama's browser-facing checks (spec/ollama-api.md §1.3): the CORS allow-list and the
DNS-rebinding Host check, as one ASGI middleware.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from fnmatch import fnmatch
from pathlib import Path
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


# Go's netip.Addr.IsPrivate: RFC 1918 and RFC 4193 only. Python's `is_private` also admits
# link-local, documentation and other reserved ranges, which Ollama's check refuses.
_GO_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def _split_host_port(host: str) -> str:
    """The host part as Go's net.SplitHostPort gives it, or the whole text when that fails
    (no port, or a bare IPv6 literal), as Ollama's middleware falls back."""
    if host.startswith("["):
        close = host.find("]")
        if close > 0 and host[close + 1 : close + 2] == ":" and ":" not in host[close + 2 :]:
            return host[1:close]
        return host
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


def local_addresses() -> set[str]:
    """Addresses of this machine's interfaces (Ollama's isLocalIP), read from Linux's /proc
    and SIOCGIFADDR; empty where neither is available."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
                found.add(socket.inet_ntoa(reply[20:24]))
    return found


def host_allowed(host_header: str) -> bool:
    """Ollama's allowedHostsMiddleware for a loopback listener: loopback, RFC 1918/4193,
    unspecified or this machine's own addresses, localhost, the hostname, and names under
    .localhost, .local and .internal."""
    host = _split_host_port(host_header)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_loopback or ip.is_unspecified or any(ip in n for n in _GO_PRIVATE):
            return True
        if str(ip) in local_addresses():
            return True
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


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
