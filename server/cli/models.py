"""Model-management subcommands of `refllama`: create, pull, push, list, show, cp, rm.

Like Ollama's CLI these are HTTP clients of a running server (server/cli/client.py, address
from OLLAMA_HOST). `create -f Modelfile` parses the Modelfile locally (server/modelfile.py),
uploads the files it names as blobs, then sends the JSON request (spec §15). Progress goes to
stderr; tables and show's text go to stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from server.cli.client import APIError, Client, server_url


def add_subcommands(sub: Any, env: tuple[tuple[str, str], ...]) -> None:
    """Register the model commands on `build_parser()`'s subparsers (`env`: for their help)."""
    p = sub.add_parser("create", help="Create a model from a Modelfile", env=env)
    p.add_argument("model")
    p.add_argument("-f", "--file", default="Modelfile", help="Modelfile path (default Modelfile)")
    p.add_argument("-q", "--quantize", help="Quantize the model to this type (e.g. q4_K_M)")
    p.set_defaults(func=cmd_create)

    for verb, text in (("pull", "Pull a model from a registry"), ("push", "Push a model")):
        p = sub.add_parser(verb, help=text, env=env)
        p.add_argument("model")
        p.add_argument("--insecure", action="store_true", help="Use plain http for the registry")
        p.set_defaults(func=cmd_pull if verb == "pull" else cmd_push)

    p = sub.add_parser("list", aliases=["ls"], help="List models", env=env)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="Show information for a model", env=env)
    p.add_argument("model")
    for flag in ("license", "modelfile", "parameters", "system", "template"):
        p.add_argument(f"--{flag}", action="store_true", help=f"Show the model's {flag}")
    p.add_argument("-v", "--verbose", action="store_true", help="Show all model_info values")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cp", help="Copy a model", env=env)
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("rm", help="Remove models", env=env)
    p.add_argument("models", nargs="+")
    p.set_defaults(func=cmd_rm)


def _client() -> Client:
    return Client(server_url().base)


# ---- progress output -----------------------------------------------------------------------


def human_bytes(n: float) -> str:
    """Ollama's format.HumanBytes: decimal units, no decimals from 10 up (`98 MB`, `1.2 GB`)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def _duration(seconds: float) -> str:
    """Go's Duration.String rounded to seconds, capped at two units, as Ollama's bar shows it."""
    s = int(round(seconds))
    if s >= 100 * 3600:
        return "99h+"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class Progress:
    """Renders a progress stream: a bar per digest (redrawn in place), one line per status.

    A bar line is laid out as Ollama's progress.Bar: `status  42% ▕███   ▏ 1.2 MB/2.9 MB
    3.1 MB/s  1s`, the bar taking what the terminal width leaves; a status too long for the
    width is cut so the line never wraps (a wrapped line could not be redrawn with \\r); so are
    status lines without a bar.
    `columns` fixes the width (else the terminal's, or 80 when `out` is no terminal).
    """

    def __init__(self, out: TextIO, columns: int | None = None) -> None:
        self.out = out
        self.current = ""
        self.columns = columns
        self.started: dict[str, tuple[float, int]] = {}  # digest -> (time, completed) first seen

    def width(self) -> int:
        if self.columns is not None:
            return self.columns
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return 80

    def bar_line(self, status: str, done: int, total: int, digest: str = "") -> str:
        done = min(done, total)
        now = time.monotonic()
        t0, v0 = self.started.setdefault(digest, (now, done))
        rate = (done - v0) / (now - t0) if now - t0 >= 1 else 0.0
        if done < total:
            sizes = f"{human_bytes(done):>6}/{human_bytes(total):>6}"
        else:
            sizes = f"{human_bytes(total):>6}" + " " * 7
        if done < total and rate > 0:
            tail = f"  {human_bytes(rate):>6}/s  {_duration((total - done) / rate):>6}"
        else:
            tail = " " * 18
        width = self.width() - 1  # the last column would make some terminals wrap
        pct = f"{100 * done // total:3d}%"
        if width - len(pct) - len(sizes + tail) - 6 < 20:  # narrow: rate and time go first
            tail = ""
        room = width - len(pct) - len(sizes + tail) - 6
        status = status.strip()[: max(0, room - 10)].rstrip()  # keep 10 columns of bar
        bar_width = max(0, width - len(status) - 1 - len(pct) - len(sizes + tail) - 5)
        filled = bar_width * done // total
        pre = f"{status} {pct}" if status else pct
        return f"{pre} ▕{'█' * filled}{' ' * (bar_width - filled)}▏ {sizes}{tail}"[:width]

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status", ""))
        total = int(event.get("total") or 0)
        if total and event.get("digest"):
            done = int(event.get("completed") or 0)
            line = self.bar_line(status, done, total, str(event["digest"]))
            start = "\r\x1b[K" if self.current == status else self._newline()
            self.out.write(start + line)
        else:
            self.out.write(self._newline() + status[: self.width() - 1])
        self.current = status
        self.out.flush()

    def _newline(self) -> str:
        return "\n" if self.current else ""

    def close(self) -> None:
        if self.current:
            self.out.write("\n")
            self.out.flush()


def follow(events: Any) -> None:
    progress = Progress(sys.stderr)
    try:
        for event in events:
            progress.update(event)
    finally:
        progress.close()


# ---- create ----------------------------------------------------------------------------------


def _upload(base: str, digest: str, path: Path, progress: Progress) -> None:
    """HEAD, then POST the file if the server lacks it (spec §11.6)."""
    url = f"{base}/api/blobs/{digest}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD")).close()
        return
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise APIError(e.code, f"checking blob {digest}: HTTP {e.code}") from None
    size = path.stat().st_size
    status = f"copying file {digest}"
    progress.update({"status": status, "digest": digest, "total": size})
    with open(path, "rb") as f:
        request = urllib.request.Request(
            url, data=f, method="POST", headers={"Content-Length": str(size)}
        )
        try:
            urllib.request.urlopen(request).close()
        except urllib.error.HTTPError as e:
            raise APIError(e.code, _error_text(e.read())) from None
    progress.update({"status": status, "digest": digest, "total": size, "completed": size})


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace").strip()


def cmd_create(args: argparse.Namespace) -> int:
    # The Modelfile parser shares server.errors (and so the engine package) with the server;
    # only `create` pays for that import, so `list`, `show`... start fast.
    from server.modelfile import ModelfileError, create_request, parse

    modelfile = Path(args.file)
    try:
        text = modelfile.read_bytes()
    except OSError as e:
        print(f"Error: {e.strerror}: {modelfile}", file=sys.stderr)
        return 1
    try:
        plan = create_request(parse(text), modelfile.resolve().parent)
    except ModelfileError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    client = _client()
    progress = Progress(sys.stderr)
    progress.update({"status": "gathering model components"})
    try:
        for digest, path in plan.uploads.items():
            _upload(client.base, digest, path, progress)
        body = {"model": args.model, **plan.request}
        if args.quantize:
            body["quantize"] = args.quantize
        for event in client.stream("/api/create", body):
            progress.update(event)
    finally:
        progress.close()
    return 0


# ---- pull, push --------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    follow(_client().stream("/api/pull", {"model": args.model, "insecure": args.insecure}))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    follow(_client().stream("/api/push", {"model": args.model, "insecure": args.insecure}))
    return 0


# ---- list, show, cp, rm ---------------------------------------------------------------------


def _ago(timestamp: str) -> str:
    """`2 hours ago`, as Ollama's format.HumanTime."""
    seconds = time.time() - datetime.fromisoformat(timestamp).timestamp()
    if seconds < 1:
        return "Less than a second ago"
    for unit, size in (("year", 31536000), ("month", 2592000), ("week", 604800),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):  # fmt: skip
        if seconds >= size:
            n = int(seconds // size)
            return (
                f"{'About a' if n == 1 and unit == 'hour' else n} {unit}{'s' if n > 1 else ''} ago"
            )
    return "Less than a second ago"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    models = _client().get("/api/tags")["models"]
    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    rows += [
        (m["name"], m["digest"][:12], human_bytes(m["size"]), _ago(_iso(m["modified_at"])))
        for m in models
    ]
    _table(rows)
    return 0


def _iso(timestamp: str) -> str:
    """RFC 3339 with up to 9 fraction digits -> what datetime.fromisoformat accepts (6)."""
    head, dot, rest = timestamp.partition(".")
    if not dot:
        return timestamp
    digits = "".join(c for c in rest if c.isdigit())
    return f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"


def cmd_show(args: argparse.Namespace) -> int:
    info = _client().post("/api/show", {"model": args.model, "verbose": args.verbose})
    for flag in ("license", "modelfile", "parameters", "system", "template"):
        if getattr(args, flag):
            print(info.get(flag, ""))
            return 0
    details = info.get("details", {})
    meta = info.get("model_info", {})
    arch = meta.get("general.architecture", details.get("family", ""))
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "Model",
            [
                ("architecture", str(arch)),
                ("parameters", str(details.get("parameter_size", ""))),
                ("context length", str(meta.get(f"{arch}.context_length", ""))),
                ("embedding length", str(meta.get(f"{arch}.embedding_length", ""))),
                ("quantization", str(details.get("quantization_level", ""))),
            ],
        ),
        ("Capabilities", [(c, "") for c in info.get("capabilities", [])]),
    ]
    if info.get("parameters"):
        pairs = [tuple(line.split(None, 1)) for line in info["parameters"].splitlines()]
        sections.append(("Parameters", [(p[0], p[1] if len(p) > 1 else "") for p in pairs]))
    if info.get("system"):
        sections.append(("System", [(info["system"].strip().splitlines()[0], "")]))
    if info.get("license"):
        sections.append(("License", [(info["license"].strip().splitlines()[0], "")]))
    if args.verbose:
        sections.append(("Metadata", [(k, json.dumps(v)) for k, v in meta.items()]))
    for title, rows in sections:
        print(f"  {title}")
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            print(f"    {key.ljust(width)}    {value}".rstrip())
        print()
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    _client().post("/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = _client()
    for model in args.models:
        client.delete("/api/delete", {"model": model})
        print(f"deleted '{model}'")
    return 0
