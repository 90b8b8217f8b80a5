"""Pull and push over the OCI distribution protocol, as Ollama does it (spec §14, §11.7, §11.8).

Blocking I/O on the standard library's http.client; the generators yield Ollama's progress
objects and are meant to be driven from a worker thread. Crash safety for pulls: blob data goes
to `blobs/sha256-<hex>-partial` with one JSON record per part (`-partial-<N>`, Ollama's resume
format), is verified, and only then renamed to its digest; the manifest is written last.

Differences from Ollama, on purpose or for lack of a dependency: parts are fetched one after the
other (not 16 at a time); a blob served directly with 200 is accepted (Ollama insists on a
redirect); 401 challenges get an anonymous bearer token (no Ed25519-signed request, so pushing
to registry.ollama.ai is not possible).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import ModelNotFound, RegistryError, ServerError
from server.manifest import MEDIA_MANIFEST, Layer, Manifest
from server.names import Name, is_valid_name, parse_digest, parse_name
from server.store import CHUNK, Store

log = logging.getLogger(__name__)

USER_AGENT = "ollama/0.12.6 (amd64 linux) Go/go1.24.0 refllama"
MIN_PART = 100_000_000  # decimal MB, as Ollama splits blobs (§14.2)
MAX_PART = 1_000_000_000
PROGRESS_INTERVAL = 0.06  # seconds between progress lines while bytes move
MAX_REDIRECTS = 10
TIMEOUT = 60.0

_download_locks: dict[str, threading.Lock] = {}
_download_locks_guard = threading.Lock()


def part_sizes(total: int) -> list[tuple[int, int]]:
    """(offset, size) of each part: total/16 clamped to 100 MB..1000 MB, last part shorter."""
    size = min(max(total // 16, MIN_PART), MAX_PART)
    return [(off, min(size, total - off)) for off in range(0, total, size)] or [(0, 0)]


@dataclass
class _Response:
    """A response and the one-request connection it arrived on; `close` releases both."""

    status: int
    headers: http.client.HTTPMessage
    body: http.client.HTTPResponse
    url: str
    conn: http.client.HTTPConnection

    def read(self) -> bytes:
        try:
            return self.body.read()
        finally:
            self.close()

    def read_text(self) -> str:
        return self.read().decode("utf-8", errors="replace").strip()

    def close(self) -> None:
        self.body.close()
        self.conn.close()


class Registry:
    """One registry host, reached over https, or http when insecure or the name says http://."""

    def __init__(self, name: Name, insecure: bool) -> None:
        if name.scheme == "http" and not insecure:
            raise RegistryError("insecure protocol http")
        scheme = "http" if insecure else name.scheme
        self.base = f"{scheme}://{name.host}"
        self.repo = name.repository
        self.insecure = insecure
        self.token = ""

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: Any, auth: bool
    ) -> _Response:
        parts = urllib.parse.urlsplit(url)
        if self.insecure:
            parts = parts._replace(scheme="http")
        conn_cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_cls(parts.netloc, timeout=TIMEOUT)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        all_headers = {"User-Agent": USER_AGENT, **headers}
        if auth and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, target, body=body, headers=all_headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise RegistryError(f"{method} {url}: {network_error(parts, e)}") from e
        return _Response(resp.status, resp.headers, resp, urllib.parse.urlunsplit(parts), conn)

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: Any = None,
        follow: bool = True,
    ) -> _Response:
        """Send with auth, run the token flow once on 401, follow redirects for GET/HEAD.

        Redirects to another host drop the registry token, as Ollama's do.
        """
        headers = headers or {}
        host = urllib.parse.urlsplit(url).netloc
        resp = self._send(method, url, headers, body, auth=True)
        if resp.status == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            self._fetch_token(challenge, host)
            resp = self._send(method, url, headers, body, auth=True)
            if resp.status == 401:
                resp.close()
                raise RegistryError("unauthorized: access denied")
        for _ in range(MAX_REDIRECTS):
            if (
                not follow
                or method not in ("GET", "HEAD")
                or resp.status not in (301, 302, 303, 307, 308)
            ):
                break
            location = urllib.parse.urljoin(resp.url, resp.headers.get("Location", ""))
            resp.close()
            same_host = urllib.parse.urlsplit(location).netloc == host
            resp = self._send(method, location, headers, None, auth=same_host)
        return resp

    def _fetch_token(self, challenge: str, host: str) -> None:
        """Bearer token flow (§14.4) without Ollama's key signature: an anonymous token."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not challenge.lower().startswith("bearer") or not realm:
            raise RegistryError("unauthorized: access denied")
        realm_host = urllib.parse.urlsplit(realm).netloc
        if realm_host != host:
            raise RegistryError(f'realm host "{realm_host}" does not match original host "{host}"')
        query = [("service", params.get("service", ""))]
        query += [("scope", s) for s in params.get("scope", "").split()]
        query += [("ts", str(int(time.time())))]
        resp = self._send("GET", f"{realm}?{urllib.parse.urlencode(query)}", {}, None, auth=False)
        if resp.status >= 400:
            raise RegistryError(f"{resp.status}: {resp.read_text()}")
        data = json.loads(resp.read() or b"{}")
        self.token = data.get("token") or data.get("access_token") or ""


# OpenSSL's reasons when an https request meets a plain-http server (1.1 and 3.x spellings).
_PLAIN_HTTP_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                       "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}  # fmt: skip


def network_error(parts: urllib.parse.SplitResult, e: OSError) -> str:
    """What went wrong reaching a registry and what to do, instead of a raw OS error: Go's
    wording for the cause (what Ollama prints), then a hint."""
    host = parts.hostname or parts.netloc
    if isinstance(e, ssl.SSLCertVerificationError):
        return (
            f"tls: failed to verify certificate: {e.verify_message} "
            "(for a registry without a trusted certificate use --insecure, which uses plain http)"
        )
    if isinstance(e, ssl.SSLError) and (e.reason in _PLAIN_HTTP_REASONS):
        return (
            "http: server gave HTTP response to HTTPS client "
            "(the registry speaks plain http: pull or push with --insecure)"
        )
    if isinstance(e, socket.gaierror):
        if e.errno == socket.EAI_AGAIN:
            return (
                f"dial tcp: lookup {host}: temporary failure in name resolution "
                "(check your network connection and DNS, then try again)"
            )
        return (
            f"dial tcp: lookup {host}: no such host "
            "(check the registry name in the model name, and your network connection)"
        )
    if isinstance(e, ConnectionRefusedError):
        return (
            f"dial tcp {parts.netloc}: connect: connection refused "
            "(is the registry running, and on this port?)"
        )
    if isinstance(e, TimeoutError | socket.timeout):
        return f"dial tcp {parts.netloc}: i/o timeout (check your network connection)"
    return str(e)


def _error(prefix: str, resp: _Response) -> RegistryError:
    if resp.status == 404:
        resp.close()
        return RegistryError(f"{prefix}file does not exist")
    return RegistryError(f"{prefix}{resp.status}: {resp.read_text()}")


def _progress(verb: str, digest: str, total: int, completed: int) -> dict[str, Any]:
    hex_digest = digest.split(":", 1)[-1]
    out: dict[str, Any] = {"status": f"{verb} {hex_digest[:12]}", "digest": digest}
    if total:
        out["total"] = total
    if completed:
        out["completed"] = completed
    return out


# ---- pull -------------------------------------------------------------------------------------


def pull(store: Store, name: Name, insecure: bool = False) -> Iterator[dict[str, Any]]:
    """Fetch a model into the store; yields Ollama's pull progress (§11.7)."""
    registry = Registry(name, insecure)
    yield {"status": "pulling manifest"}
    resp = registry.request(
        "GET", registry.url(f"manifests/{name.tag}"), {"Accept": MEDIA_MANIFEST}
    )
    if resp.status >= 400:
        raise _error("pull model manifest: ", resp)
    raw = resp.read()
    try:
        manifest = Manifest.decode(raw)
        for layer in manifest.blobs:
            parse_digest(layer.digest)
    except (ValueError, KeyError) as e:
        raise RegistryError(f"pull model manifest: invalid manifest: {e}") from e
    failures: list[ServerError] = []
    for layer in manifest.blobs:
        if store.has_blob(layer.digest):
            size = store.blob_path(layer.digest).stat().st_size
            yield _progress("pulling", layer.digest, size, size)
            continue
        with _lock_for(layer.digest):  # a concurrent pull of this blob finishes first
            if store.has_blob(layer.digest):
                size = store.blob_path(layer.digest).stat().st_size
                yield _progress("pulling", layer.digest, size, size)
                continue
            yield from _download(store, registry, layer)
            # Verified while the lock is held; a mismatch is reported after the status line.
            try:
                _commit_download(store, layer)
            except ServerError as e:
                failures.append(e)
    yield {"status": "verifying sha256 digest"}
    if failures:
        raise failures[0]
    yield {"status": "writing manifest"}
    _, removed = store.write_manifest_bytes(store.canonical(name), raw)
    if removed:
        yield {"status": "removing unused layers"}
    yield {"status": "success"}


def _lock_for(digest: str) -> threading.Lock:
    with _download_locks_guard:
        return _download_locks.setdefault(digest, threading.Lock())


def _partial(store: Store, digest: str) -> Path:
    return store.blob_path(digest).with_name(parse_digest(digest) + "-partial")


def _part_file(partial: Path, n: int) -> Path:
    return partial.with_name(f"{partial.name}-{n}")


def _load_parts(partial: Path, total: int) -> list[dict[str, int]]:
    """The saved part records if they match this blob's split, else a fresh split (§14.2)."""
    fresh = [
        {"N": n, "Offset": off, "Size": size, "Completed": 0}
        for n, (off, size) in enumerate(part_sizes(total))
    ]
    if not partial.exists():
        return fresh
    saved = []
    for part in fresh:
        try:
            record = json.loads(_part_file(partial, part["N"]).read_text())
        except (OSError, ValueError):
            return fresh
        same = all(record.get(k) == part[k] for k in ("N", "Offset", "Size"))
        done = record.get("Completed")
        if not same or not isinstance(done, int) or not 0 <= done <= part["Size"]:
            return fresh
        saved.append({**part, "Completed": done})
    return saved


def _save_part(partial: Path, part: dict[str, int]) -> None:
    path = _part_file(partial, part["N"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(part))
    os.replace(tmp, path)


def _download(store: Store, registry: Registry, layer: Layer) -> Iterator[dict[str, Any]]:
    url = registry.url(f"blobs/{layer.digest}")
    head = registry.request("HEAD", url)
    head.close()
    if head.status >= 400:
        raise _error("", head)
    total = int(head.headers.get("Content-Length") or layer.size)
    partial = _partial(store, layer.digest)
    parts = _load_parts(partial, total)
    done = sum(p["Completed"] for p in parts)
    yield _progress("pulling", layer.digest, total, done)
    mode = "r+b" if partial.exists() else "w+b"
    with open(partial, mode) as f:
        f.truncate(total)
        last = time.monotonic()
        for part in parts:
            while part["Completed"] < part["Size"]:
                start = part["Offset"] + part["Completed"]
                end = part["Offset"] + part["Size"] - 1
                resp = registry.request("GET", url, {"Range": f"bytes={start}-{end}"})
                if resp.status not in (200, 206):
                    raise _error("", resp)
                if resp.status == 200:
                    _skip(resp, start)  # the server ignored Range: drop what we already have
                f.seek(start)
                try:
                    while part["Completed"] < part["Size"]:
                        chunk = resp.body.read(min(CHUNK, part["Size"] - part["Completed"]))
                        if not chunk:
                            break
                        f.write(chunk)
                        part["Completed"] += len(chunk)
                        done += len(chunk)
                        if time.monotonic() - last >= PROGRESS_INTERVAL:
                            f.flush()
                            _save_part(partial, part)
                            last = time.monotonic()
                            yield _progress("pulling", layer.digest, total, done)
                finally:
                    resp.close()
                    f.flush()
                    _save_part(partial, part)
        os.fsync(f.fileno())
    yield _progress("pulling", layer.digest, total, done)


def _skip(resp: _Response, n: int) -> None:
    while n > 0:
        chunk = resp.body.read(min(CHUNK, n))
        if not chunk:
            raise RegistryError("blob download ended early")
        n -= len(chunk)


def _commit_download(store: Store, layer: Layer) -> None:
    """Hash the finished partial file; rename it into place or delete it on a mismatch."""
    partial = _partial(store, layer.digest)
    try:
        store.commit_verified(partial, layer.digest)
    finally:
        for n in range(len(part_sizes(max(layer.size, 1))) + 1):
            _part_file(partial, n).unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


# ---- push -------------------------------------------------------------------------------------


def push(store: Store, name: Name, insecure: bool = False) -> Iterator[dict[str, Any]]:
    """Upload a local model to its registry; yields Ollama's push progress (§11.8)."""
    yield {"status": "retrieving manifest"}
    try:
        record = store.resolve(name)
    except ModelNotFound:
        yield {"status": "couldn't retrieve manifest"}
        path = store.manifest_path(store.canonical(name))
        raise RegistryError(f"open {path}: no such file or directory") from None
    registry = Registry(record.parsed, insecure)
    for layer in record.manifest.blobs:
        yield from _upload(store, registry, layer)
    yield {"status": "pushing manifest"}
    body = record.manifest.encode(newline=False)
    resp = registry.request(
        "PUT",
        registry.url(f"manifests/{record.parsed.tag}"),
        {"Content-Type": MEDIA_MANIFEST, "Content-Length": str(len(body))},
        body,
    )
    if resp.status >= 400:
        raise _error("", resp)
    resp.close()
    yield {"status": "success"}


def _upload(store: Store, registry: Registry, layer: Layer) -> Iterator[dict[str, Any]]:
    path = store.blob_path(layer.digest)
    total = path.stat().st_size
    head = registry.request("HEAD", registry.url(f"blobs/{layer.digest}"))
    head.close()
    if head.status == 200:
        yield _progress("pushing", layer.digest, total, total)
        return
    query = ""
    if layer.from_:
        from_repo = _repository_of(layer.from_)
        if from_repo and from_repo != registry.repo:
            query = "?" + urllib.parse.urlencode({"mount": layer.digest, "from": from_repo})
    start = registry.request(
        "POST", registry.url(f"blobs/uploads/{query}"), {"Content-Length": "0"}, b""
    )
    start.close()
    if start.status == 201:
        yield _progress("pushing", layer.digest, total, total)
        return
    if start.status >= 400:
        raise _error("", start)
    location = _upload_location(start, registry)
    yield _progress("pushing", layer.digest, total, 0)
    done = 0
    for offset, size in part_sizes(total):
        if size == 0:
            break
        resp = yield from _patch_part(
            registry, location, path, offset, size, layer.digest, total, done
        )
        location = _upload_location(resp, registry)
        done += size
        yield _progress("pushing", layer.digest, total, done)
    sep = "&" if "?" in location else "?"
    final = registry.request(
        "PUT",
        f"{location}{sep}{urllib.parse.urlencode({'digest': layer.digest})}",
        {"Content-Type": "application/octet-stream", "Content-Length": "0"},
        b"",
    )
    final.close()
    if final.status >= 400:
        raise _error("", final)


def _upload_location(resp: _Response, registry: Registry) -> str:
    location = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location")
    if not location:
        raise RegistryError(f"{resp.status}: upload response has no Location header")
    return urllib.parse.urljoin(registry.base + "/", location)


def _repository_of(source: str) -> str:
    """`namespace/model` of a layer's `from` name, or "" if it is a file name."""
    if not is_valid_name(source):
        return ""
    return parse_name(source).repository


def _patch_part(
    registry: Registry,
    location: str,
    path: Path,
    offset: int,
    size: int,
    digest: str,
    total: int,
    done: int,
) -> Generator[dict[str, Any], None, _Response]:
    """PATCH one part, streaming it from the file with progress; returns the response."""
    parts = urllib.parse.urlsplit(location)
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_cls(parts.netloc, timeout=TIMEOUT)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
        "Content-Range": f"{offset}-{offset + size - 1}",
        "X-Redirect-Uploads": "1",
    }
    if registry.token:
        headers["Authorization"] = f"Bearer {registry.token}"
    try:
        conn.putrequest("PATCH", target, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        sent, last = 0, time.monotonic()
        with open(path, "rb") as f:
            f.seek(offset)
            while sent < size:
                chunk = f.read(min(CHUNK, size - sent))
                conn.send(chunk)
                sent += len(chunk)
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    yield _progress("pushing", digest, total, done + sent)
        raw = conn.getresponse()
    except OSError as e:
        conn.close()
        raise RegistryError(
            f"PATCH {location}: {network_error(urllib.parse.urlsplit(location), e)}"
        ) from e
    resp = _Response(raw.status, raw.headers, raw, location, conn)
    if resp.status >= 400:
        raise _error("", resp)
    resp.close()
    return resp
