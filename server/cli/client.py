"""The HTTP side of every client verb: OLLAMA_HOST parsed as Ollama's envconfig.Host does
(spec/ollama-api.md §1.1), and a small stdlib client shaped like Ollama's api.Client.

Standard library only, so `refllama list` starts without NumPy or the engine.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PORT = 11434


# --------------------------------------------------------------------------------------------
# OLLAMA_HOST


@dataclass(frozen=True)
class HostURL:
    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = f"/{self.path}" if self.path else ""
        return f"{self.scheme}://{host}:{self.port}{path}"


def parse_ollama_host(value: str) -> HostURL:
    """Ollama's envconfig.Host: `host`, `host:port` or `scheme://host:port[/path]`."""
    default_port = DEFAULT_PORT
    text = value.strip()
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport, _, path = hostport.partition("/")
    host, port_text = _split_host_port(hostport)
    if host == "":  # `:11500`: Go would dial the local host; name it, for clients and serve
        host = "127.0.0.1"
    if host is None:
        host, port_text = (hostport.strip("[]") or "127.0.0.1"), str(default_port)
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(port_text)
    except ValueError:
        log.warning("invalid port in OLLAMA_HOST %r, using %d", value, default_port)
        port = default_port
    return HostURL(scheme, host, port, path)


def _split_host_port(hostport: str) -> tuple[str | None, str]:
    """Go's net.SplitHostPort; (None, "") when it would fail (no port, or a bare IPv6)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None, ""
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        return None, ""
    host, port = hostport.split(":")
    return host, port


def server_url() -> HostURL:
    return parse_ollama_host(os.environ.get("OLLAMA_HOST", ""))


# --------------------------------------------------------------------------------------------
# A tiny HTTP client (stdlib only), shaped like Ollama's api.Client


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def _open(self, method: str, path: str, body: Any = None, stream: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        accept = "application/x-ndjson" if stream else "application/json"
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": accept},
        )
        try:
            return urllib.request.urlopen(request)
        except urllib.error.HTTPError as e:
            raise APIError(e.code, _error_text(e.read())) from None
        except urllib.error.URLError as e:
            raise APIError(
                0,
                f"could not connect to a running server at {self.base} "
                "(start one with `refllama serve`)",
            ) from e

    def get(self, path: str) -> Any:
        with self._open("GET", path) as resp:
            return json.loads(resp.read() or b"null")

    def post(self, path: str, body: Any) -> Any:
        with self._open("POST", path, body) as resp:
            return json.loads(resp.read() or b"null")

    def delete(self, path: str, body: Any) -> None:
        self._open("DELETE", path, body).close()

    def head(self, path: str) -> None:
        self._open("HEAD", path).close()

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """NDJSON events; an `error` line raises, as Ollama's client does (spec §1.8)."""
        with self._open("POST", path, body, stream=True) as resp:
            for line in resp:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("error"):
                    raise APIError(200, event["error"])
                yield event


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace").strip()
