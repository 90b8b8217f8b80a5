"""The `refllama` command: an Ollama-shaped CLI (Ollama's cmd/cmd.go).

`serve` runs the HTTP server (address from OLLAMA_HOST, default 127.0.0.1:11434, parsed as
Ollama's envconfig.Host does, spec/ollama-api.md §1.1). Every other subcommand is an HTTP client
of that server, as `ollama` is: `run`, `ps`, `stop` here, and the model commands of
server/cli/models.py (`create`, `pull`, `push`, `list`, `show`, `cp`, `rm`).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import logging
import os
import sys
import time
from datetime import datetime
from typing import Any, NoReturn

from server.cli import inspect as inspect_command
from server.cli import models
from server.cli.client import APIError, Client, server_url
from server.cli.interactive import chat_once, interactive
from server.golden import command as golden_command

log = logging.getLogger(__name__)

THINK_VALUES = ("true", "false", "high", "medium", "low", "max")

# Ollama's `serve --help` lists the environment variables it reads; these are the ones the
# refllama server reads, with Ollama's descriptions.
SERVE_ENV = (
    ("OLLAMA_HOST", "IP Address for the ollama server (default 127.0.0.1:11434)"),
    ("OLLAMA_CONTEXT_LENGTH", "Context length to use unless otherwise specified (default: 4096)"),
    ("OLLAMA_KEEP_ALIVE", 'The duration that models stay loaded in memory (default "5m")'),
    ("OLLAMA_MAX_QUEUE", "Maximum number of queued requests"),
    ("OLLAMA_MODELS", "The path to the models directory"),
    ("OLLAMA_NOPRUNE", "Do not prune model blobs on startup"),
    ("OLLAMA_ORIGINS", "A comma separated list of allowed origins"),
)
CLIENT_ENV = (SERVE_ENV[0],)


def client_version() -> str:
    # importlib.metadata pulls in the email package (~0.1 s): only --version pays for it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refllama")
    except PackageNotFoundError:
        return "0.0.0"


# --------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    # Only `serve` needs the server and the engine behind it; importing them here keeps every
    # client verb (list, ps, show...) free of NumPy and the engine at start-up.
    import uvicorn

    from server.app import create_app
    from server.store import Store
    from server.transport import HeaderTimeoutProtocol

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
        if args.think not in THINK_VALUES:
            raise APIError(
                0,
                f'invalid value for --think: "{args.think}" '
                "(must be true, false, high, medium, low, or max)",
            )
        base["think"] = {"true": True, "false": False}.get(args.think, args.think)
    _show_or_pull(client, args.model, args.insecure)
    words = list(args.prompt)
    is_tty = sys.stdin.isatty()
    if not is_tty:
        piped = sys.stdin.read()  # `ollama run` puts piped input before the arguments
        words = [piped, *words] if piped else words
    if words:
        prompt = " ".join(words)
        return chat_once(client, base, prompt, args.verbose, args.hidethinking, not args.nowordwrap)
    if not is_tty:
        return 0
    client.post("/api/chat", {**base, "messages": [], "stream": False})  # load, as `ollama run`
    return interactive(client, base, args.verbose, args.hidethinking, not args.nowordwrap)


def _show_or_pull(client: Client, model: str, insecure: bool) -> None:
    """Ollama's showOrPullModel: a model the server lacks (404) is pulled first."""
    try:
        client.post("/api/show", {"model": model})
    except APIError as e:
        if e.status != 404:
            raise
        models.follow(client.stream("/api/pull", {"model": model, "insecure": insecure}))


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


# --------------------------------------------------------------------------------------------
# arguments


class Parser(argparse.ArgumentParser):
    """argparse with Ollama's (cobra's) manners: `Error: ...` messages, a suggestion for a
    misspelled subcommand, and an `Environment Variables:` section after the help."""

    def __init__(self, *args: Any, env: tuple[tuple[str, str], ...] = (), **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if env:
            lines = [f"      {name:<27}   {text}" for name, text in env]
            kwargs["epilog"] = "Environment Variables:\n" + "\n".join(lines)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}", file=sys.stderr)
        print(f"\nRun '{self.prog} --help' for usage.", file=sys.stderr)
        raise SystemExit(1)


def build_parser() -> Parser:
    parser = Parser(prog="refllama", description="Large language model runner (NumPy, Ollama API)")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("serve", help="Start the server (address from OLLAMA_HOST)", env=SERVE_ENV)
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="Run a model (one prompt, or a chat)", env=CLIENT_ENV)
    p.add_argument("model")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--format", help='Response format (e.g. "json")')
    p.add_argument("--keepalive", help="Duration to keep a model loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="Show timings for response")
    p.add_argument(
        "--think",
        help="Enable thinking mode: true/false or high/medium/low for supported models "
        "(a value only as --think=VALUE)",
    )
    p.add_argument("--hidethinking", action="store_true", help="Hide thinking output")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.add_argument(
        "--nowordwrap", action="store_true", help="Don't wrap words to the next line automatically"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="List running models", env=CLIENT_ENV)
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="Stop a running model", env=CLIENT_ENV)
    p.add_argument("model")
    p.set_defaults(func=cmd_stop)

    models.add_subcommands(sub, CLIENT_ENV)
    golden_command.add_parser(sub)
    inspect_command.add_parser(sub)
    return parser


def _pflag_think(argv: list[str]) -> list[str]:
    """pflag's NoOptDefVal for `run --think`: a bare `--think` means true and never takes the
    next word, so `run m --think "hi"` sends the prompt "hi" with thinking on."""
    if argv[:1] != ["run"]:
        return argv
    return ["--think=true" if a == "--think" else a for a in argv]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Flags may come before, between or after `run`'s prompt words, as with cobra."""
    parser = build_parser()
    if argv and not argv[0].startswith("-"):
        verbs = list(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
        if argv[0] not in verbs:
            close = difflib.get_close_matches(argv[0], verbs, n=1, cutoff=0.6)
            hint = f"\n\nDid you mean this?\n\t{close[0]}" if close else ""
            parser.error(f'unknown command "{argv[0]}" for "refllama"{hint}')
    args, extra = parser.parse_known_args(_pflag_think(argv))
    if args.command == "run" and not any(e.startswith("-") for e in extra):
        args.prompt = [*args.prompt, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def cmd_version() -> int:
    """Ollama's versionHandler: the server's version, and the client's when they differ."""
    ours = client_version()
    try:
        theirs = str(Client(server_url().base).get("/api/version").get("version", ""))
    except APIError:
        print("Warning: could not connect to a running refllama server")
        theirs = ""
    if theirs:
        print(f"refllama version is {theirs}")
    if theirs != ours:
        print(f"Warning: client version is {ours}")
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.version:
            code = cmd_version()
        elif args.command is None:
            build_parser().print_help()
            code = 0
        else:
            code = args.func(args)
    except APIError as e:
        print(f"Error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # `refllama show --template x | head -2`: the reader left; say nothing, as Go does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        code = 141
    raise SystemExit(code)


if __name__ == "__main__":
    main()
