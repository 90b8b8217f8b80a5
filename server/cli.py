"""The `refllama` command: an Ollama-shaped CLI.

`serve` runs the HTTP server (address from OLLAMA_HOST, default 127.0.0.1:11434, parsed as
Ollama's envconfig.Host does, spec/ollama-api.md §1.1). Every other subcommand is an HTTP client
of that server, as `ollama` is: `run`, `ps`, `stop` here, and the model-management commands of
server/cli_models.py (`create`, `pull`, `push`, `list`, `show`, `cp`, `rm`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import uvicorn

from server import cli_models
from server.app import create_app
from server.store import Store
from server.transport import HeaderTimeoutProtocol

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


# --------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    url = server_url()
    try:
        loopback = ipaddress.ip_address(url.host).is_loopback
    except ValueError:
        loopback = url.host == "localhost"
    store = Store.from_env()
    store.prune_startup()  # Ollama's startup clean-up: stale temporary and unreferenced blobs
    app = create_app(store, check_host=loopback)
    uvicorn.run(
        app, host=url.host, port=url.port, log_level=args.log_level, http=HeaderTimeoutProtocol
    )
    return 0


# --------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace) -> int:
    client = Client(server_url().base)
    base: dict[str, Any] = {"model": args.model}
    if args.format:
        base["format"] = args.format
    if args.keepalive is not None:
        base["keep_alive"] = args.keepalive
    if args.think is not None:
        base["think"] = args.think
    words = list(args.prompt)
    interactive = sys.stdin.isatty()
    if not interactive:
        piped = sys.stdin.read()  # `ollama run` puts piped input before the arguments
        words = [piped, *words] if piped else words
    if words:
        prompt = " ".join(words)
        return _chat_once(client, base, [{"role": "user", "content": prompt}], args.verbose)
    if not interactive:
        return 0
    client.post("/api/chat", {**base, "messages": [], "stream": False})  # load, as `ollama run`
    return _interactive(client, base, args.verbose)


def _chat_once(
    client: Client, base: dict[str, Any], messages: list[dict[str, Any]], verbose: bool
) -> int:
    reply = _stream_chat(client, base, messages, sys.stdout, verbose)
    return 0 if reply is not None else 1


def _stream_chat(
    client: Client,
    base: dict[str, Any],
    messages: list[dict[str, Any]],
    out: TextIO,
    verbose: bool,
) -> str | None:
    """Print the answer as it streams; returns its text (None after an error)."""
    content: list[str] = []
    thinking = False
    final: dict[str, Any] = {}
    try:
        for event in client.stream("/api/chat", {**base, "messages": messages}):
            message = event.get("message", {})
            if message.get("thinking"):
                if not thinking:
                    out.write("Thinking...\n")
                    thinking = True
                out.write(message["thinking"])
            if message.get("content"):
                if thinking:
                    out.write("\n...done thinking.\n\n")
                    thinking = False
                out.write(message["content"])
                content.append(message["content"])
            out.flush()
            if event.get("done"):
                final = event
    except APIError as e:
        print(f"Error: {e}", file=sys.stderr)
        return None
    out.write("\n")
    if verbose:
        _print_stats(final)
    return "".join(content)


def _print_stats(final: dict[str, Any]) -> None:
    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"

    err = sys.stderr
    print(f"total duration:       {final.get('total_duration', 0) / 1e9:.6f}s", file=err)
    print(f"load duration:        {final.get('load_duration', 0) / 1e9:.6f}s", file=err)
    print(f"prompt eval count:    {final.get('prompt_eval_count', 0)} token(s)", file=err)
    print(f"prompt eval duration: {final.get('prompt_eval_duration', 0) / 1e9:.6f}s", file=err)
    print(
        f"prompt eval rate:     "
        f"{rate(final.get('prompt_eval_count', 0), final.get('prompt_eval_duration', 0))}",
        file=err,
    )
    print(f"eval count:           {final.get('eval_count', 0)} token(s)", file=err)
    print(f"eval duration:        {final.get('eval_duration', 0) / 1e9:.6f}s", file=err)
    print(
        f"eval rate:            {rate(final.get('eval_count', 0), final.get('eval_duration', 0))}",
        file=err,
    )


_HELP = """Available Commands:
  /set parameter  Set a parameter: /set parameter <name> <value>
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""


def _interactive(client: Client, base: dict[str, Any], verbose: bool) -> int:
    history: list[dict[str, Any]] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        if line.startswith('"""'):
            parts = [line[3:]]
            while not parts[-1].rstrip().endswith('"""'):
                try:
                    parts.append(input("... "))
                except EOFError:
                    return 0
            line = "\n".join(parts).rstrip()[:-3]
        elif line.strip() in ("/bye", "/exit"):
            return 0
        elif line.strip() in ("/?", "/help"):
            print(_HELP)
            continue
        elif line.strip() == "/clear":
            history.clear()
            print("Cleared session context")
            continue
        elif line.startswith("/set parameter"):
            parts = line.split(maxsplit=3)
            if len(parts) != 4:
                print("Usage: /set parameter <name> <value>")
                continue
            options = base.setdefault("options", {})
            options[parts[2]] = _parameter_value(parts[3])
            print(f"Set parameter '{parts[2]}' to '{parts[3]}'")
            continue
        elif line.startswith("/"):
            print(f"Unknown command '{line.split()[0]}'. Type /? for help")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = _stream_chat(client, base, history, sys.stdout, verbose)
        if reply is None:
            history.pop()
        else:
            history.append({"role": "assistant", "content": reply})
            print()


def _parameter_value(text: str) -> Any:
    """A `/set parameter` value: a JSON number or boolean when it parses as one, else text
    (`stop` values become a one-element list, as Ollama's CLI sends them)."""
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    return value if isinstance(value, int | float | bool) else [str(value)]


# --------------------------------------------------------------------------------------------
# ps, stop


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}" if n / scale >= 10 else f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _until(expires_at: str) -> str:
    when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    seconds = when.timestamp() - time.time()
    if seconds > 100 * 365 * 86400:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return "Less than a second from now"


def cmd_ps(args: argparse.Namespace) -> int:
    models = Client(server_url().base).get("/api/ps")["models"]
    rows = [("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in models:
        rows.append(
            (
                m["name"],
                m["digest"][:12],
                _human_bytes(m["size"]),
                "100% CPU",
                str(m.get("context_length", "")),
                _until(m["expires_at"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client = Client(server_url().base)
    try:
        client.post("/api/generate", {"model": args.model, "keep_alive": 0, "stream": False})
    except APIError as e:
        if e.status == 404:
            print(f'Error: couldn\'t find model "{args.model}" to stop', file=sys.stderr)
            return 1
        raise
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refllama", description="NumPy LLM server, Ollama API")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="Start the server (address from OLLAMA_HOST)")
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="Run a model: one prompt, or an interactive chat")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--format", help='Response format (e.g. "json")')
    p.add_argument("--keepalive", help="How long to keep the model loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="Show timings")
    p.add_argument(
        "--think", nargs="?", const=True, default=None, help="Enable thinking (or a level)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="List running models")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model")
    p.set_defaults(func=cmd_stop)

    cli_models.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
    except APIError as e:
        print(f"Error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
