"""Modelfiles: Ollama's parser (client side), its mapping to /api/create, and the text /api/show
reconstructs.

Follows Ollama `parser/parser.go` (spec/ollama-api.md §15): a rune-by-rune state machine, so the
same inputs are accepted, rejected and quoted the same way. Parameter values are typed as
`api.FormatParams` types them (§15.4) before they are sent.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from enum import Enum, auto
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InvalidRequest, go_quote

log = logging.getLogger(__name__)

COMMANDS = (
    "from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
    "parameter", "message", "requires",
)  # fmt: skip
ROLES = ("system", "user", "assistant")

# The option set of spec §2.1 with its Go types, for typing PARAMETER values (§15.4).
PARAMETER_TYPES: dict[str, type] = {
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float,
    "min_p": float, "typical_p": float, "repeat_last_n": int, "temperature": float,
    "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
    "stop": list, "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int,
    "use_mmap": bool, "num_thread": int, "draft_num_predict": int,
}  # fmt: skip
DEPRECATED_PARAMETERS = (
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta",
)  # fmt: skip
_GO_BOOLS = {s: True for s in ("1", "t", "T", "TRUE", "true", "True")} | {
    s: False for s in ("0", "f", "F", "FALSE", "false", "False")
}

# Files a directory named by FROM contributes (§15.3).
_WEIGHT_GLOBS = ("model*.safetensors", "consolidated*.safetensors", "pytorch_model*.bin",
                 "consolidated*.pth", "*.gguf", "*.bin")  # fmt: skip
_EXTRA_GLOBS = ("*.json", "chat_template.jinja", "tokenizer.model")


class ModelfileError(InvalidRequest):
    """The Modelfile text does not parse (message as Ollama's parser words it)."""


@dataclass(frozen=True)
class Command:
    name: str  # "model" for FROM, the key for PARAMETER, else the lowercase instruction
    args: str  # MESSAGE args are "<role>: <content>", as in Ollama


class _State(Enum):
    NIL = auto()
    NAME = auto()
    VALUE = auto()
    PARAMETER = auto()
    MESSAGE = auto()
    COMMENT = auto()


def _unquote(s: str) -> tuple[str, bool]:
    """(value, complete): strip `\"\"\"…\"\"\"` or `"…"`; an open quote is incomplete."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def _is_space(ch: str) -> bool:
    return ch in " \t"


def _is_newline(ch: str) -> bool:
    return ch in "\r\n"


def _next_state(ch: str, state: _State, line: int) -> tuple[_State, bool]:
    """(state after `ch`, whether `ch` joins the buffer): Ollama's parseRuneForState."""
    if state is _State.NIL:
        if ch == "#":
            return _State.COMMENT, False
        if _is_space(ch) or _is_newline(ch):
            return _State.NIL, False
        return _State.NAME, True
    if state is _State.NAME:
        if ch.isascii() and ch.isalpha():
            return _State.NAME, True
        if _is_space(ch):
            return _State.VALUE, False
        raise _invalid_command(line)
    if state is _State.VALUE:
        return (_State.NIL if _is_space(ch) or _is_newline(ch) else _State.VALUE), True
    if state in (_State.PARAMETER, _State.MESSAGE):
        if state is _State.PARAMETER:
            allowed = ch.isascii() and (ch.isalnum() or ch == "_")
        else:
            allowed = ch.isascii() and ch.isalpha()
        if allowed:
            return state, True
        if _is_space(ch):
            return _State.VALUE, False
        raise ModelfileError("unexpected EOF")
    return (_State.NIL if _is_newline(ch) else _State.COMMENT), False


def _invalid_command(line: int) -> ModelfileError:
    names = ", ".join(f'"{c}"' for c in COMMANDS[:-1])
    return ModelfileError(f'(line {line}): command must be one of {names}, or "{COMMANDS[-1]}"')


def _decode(data: bytes) -> str:
    """UTF-8, unless a byte-order mark selects UTF-8 or UTF-16."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8")


def parse(text: str | bytes) -> list[Command]:
    """Parse Modelfile text into commands; raises ModelfileError with Ollama's messages."""
    if isinstance(text, bytes):
        text = _decode(text)
    commands: list[Command] = []
    buf: list[str] = []
    state = _State.NIL
    name = role = ""
    line = 1
    for ch in text:
        try:
            nxt, keep = _next_state(ch, state, line)
        except ModelfileError as e:
            if str(e) == "unexpected EOF":
                raise ModelfileError(f"unexpected EOF: {''.join(buf)}") from None
            raise
        if nxt is not state:
            word = "".join(buf)
            if state is _State.NAME:
                lowered = word.lower()
                if lowered not in COMMANDS:
                    raise _invalid_command(line)
                if lowered == "from":
                    name = "model"
                elif lowered == "parameter":
                    nxt = _State.PARAMETER
                elif lowered == "message":
                    nxt = _State.MESSAGE
                    name = lowered
                else:
                    name = lowered
            elif state is _State.PARAMETER:
                name = word
            elif state is _State.MESSAGE:
                if word not in ROLES:
                    raise ModelfileError(
                        f'(line {line}): message role must be one of "system", "user", or '
                        '"assistant"'
                    )
                role = word
            elif state is _State.VALUE:
                value, complete = _unquote(word.strip())
                if not complete or _is_space(ch):
                    buf.append(ch)  # inside a value: keep whitespace and line breaks verbatim
                    if ch == "\n":
                        line += 1
                    continue
                commands.append(Command(name, f"{role}: {value}" if role else value))
                role = ""
            buf = []
            state = nxt
        if ch == "\n":
            line += 1
        if keep and ch.isprintable():  # other control characters are dropped, as Go's IsPrint does
            buf.append(ch)
    if state is _State.VALUE:
        value, complete = _unquote("".join(buf).strip())
        if not complete:
            raise ModelfileError("unexpected EOF")
        commands.append(Command(name, f"{role}: {value}" if role else value))
    elif state not in (_State.NIL, _State.COMMENT):
        raise ModelfileError("unexpected EOF")
    if not any(c.name == "model" for c in commands):
        raise ModelfileError("no FROM line")
    return commands


def format_parameter(key: str, raw: str) -> Any:
    """Type one PARAMETER value as Ollama's client does; `stop` gives a one-element list."""
    if key not in PARAMETER_TYPES:
        raise ModelfileError(f"unknown parameter '{key}'")
    kind = PARAMETER_TYPES[key]
    if kind is list:
        return [raw]
    if kind is bool:
        if raw not in _GO_BOOLS:
            raise ModelfileError(f"invalid bool value [{raw}]")
        return _GO_BOOLS[raw]
    if kind is int:
        try:
            return int(raw, 10)
        except ValueError:
            raise ModelfileError(f"invalid int value [{raw}]") from None
    try:
        value = np.float32(float(raw))
    except (ValueError, OverflowError):
        raise ModelfileError(f"invalid float value [{raw}]") from None
    # Go parses into a float32 and sends its shortest decimal, so "0.1" arrives as 0.1.
    return float(str(value)) if math.isfinite(value) else float(value)


def expand_path(path: str, relative_dir: Path) -> Path:
    """Resolve FROM/ADAPTER paths: absolute, `~`, `~user/`, else relative to the Modelfile."""
    if path.startswith("~"):
        return Path(os.path.expanduser(path))
    p = Path(path)
    return p if p.is_absolute() else relative_dir / p


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _model_files(path: Path) -> list[Path]:
    """The files FROM/ADAPTER uploads for `path` (a file, or a model directory)."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    for pattern in _WEIGHT_GLOBS:
        found = sorted(path.glob(pattern))
        if found:
            break
    extras = sorted({p for g in _EXTRA_GLOBS for p in path.glob(g)})
    if not found:
        raise ModelfileError(f"no model files found in {path}")
    return found + extras


@dataclass
class CreatePlan:
    """A /api/create request body plus the local files its digests name (to upload first)."""

    request: dict[str, Any]
    uploads: dict[str, Path] = field(default_factory=dict)  # "sha256:<hex>" -> file


def _digest_map(path: Path, uploads: dict[str, Path]) -> dict[str, str]:
    files = _model_files(path)
    root = path if path.is_dir() else path.parent
    out = {}
    for f in files:
        digest = _digest_file(f)
        uploads[digest] = f
        key = f.name if len(files) == 1 else f.relative_to(root).as_posix()
        out[key] = digest
    return out


def _looks_like_path(text: str) -> bool:
    """A FROM value no model name can be: a path start or a weight file's extension (Ollama
    sends it to the server as a name, which answers a bare "invalid model name")."""
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.lower().endswith(
        (".gguf", ".safetensors", ".bin")
    )


def create_request(commands: list[Command], relative_dir: Path) -> CreatePlan:
    """Map commands to a /api/create body as Ollama's CLI does (§15.2)."""
    plan = CreatePlan({})
    req = plan.request
    params: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    for c in commands:
        if c.name == "model":
            path = expand_path(c.args, relative_dir)
            if not path.exists():
                if _looks_like_path(c.args):
                    raise ModelfileError(
                        f"FROM {c.args}: no such file or directory (FROM takes an existing GGUF "
                        "file, a model directory, or a model name such as llama3.2)"
                    )
                req["from"] = c.args
                continue
            req.setdefault("files", {}).update(_digest_map(path, plan.uploads))
        elif c.name == "adapter":
            path = expand_path(c.args, relative_dir)
            if not path.exists():
                raise ModelfileError(f"open {path}: no such file or directory")
            req["adapters"] = _digest_map(path, plan.uploads)
        elif c.name in ("template", "system"):
            req[c.name] = c.args
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            messages.append({"role": role, "content": content})
        elif c.name == "requires":
            req["requires"] = _requires(c.args)
        elif c.name in ("draft", "renderer", "parser"):
            raise ModelfileError(f"{c.name.upper()} is not supported by refllama")
        elif c.name in DEPRECATED_PARAMETERS:
            log.warning("parameter %s is deprecated", c.name)
        else:
            value = format_parameter(c.name, c.args)
            if isinstance(value, list) and isinstance(params.get(c.name), list):
                params[c.name] = params[c.name] + value
            else:
                params[c.name] = value
    if params:
        req["parameters"] = params
    if messages:
        req["messages"] = messages
    if licenses:
        req["license"] = licenses
    return plan


def _requires(version: str) -> str:
    v = version.removeprefix("v")
    core = v.split("-", 1)[0].split("+", 1)[0].split(".")
    if not 1 <= len(core) <= 3 or not all(p.isdigit() for p in core):
        raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")
    return v


# ---- values as Go's fmt prints them, and the Modelfile /api/show reconstructs ---------------


def go_format_float(x: float) -> str:
    """Go's `%v` for a float64: shortest digits, exponent below 1e-4 and from 1e6 (`1e+06`)."""
    if not math.isfinite(x):
        return "+Inf" if x > 0 else ("-Inf" if x < 0 else "NaN")
    if x == 0:
        return "0"
    sci = np.format_float_scientific(x, unique=True, trim="-", exp_digits=2)
    exp = int(sci.rsplit("e", 1)[1])
    if exp < -4 or exp >= 6:
        return sci
    return np.format_float_positional(x, unique=True, trim="-")


def go_format_value(value: Any, syntax: bool = False) -> str:
    """`%v` (or `%#v` with syntax=True: strings Go-quoted) of a JSON-decoded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_format_float(float(value))
    if isinstance(value, str):
        return go_quote(value) if syntax else value
    return str(value)


def parameter_values(parameters: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, value) pairs, one per list element, as show prints them."""
    out = []
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            out.append((key, v))
    return out


def show_parameters(parameters: dict[str, Any]) -> str:
    """/api/show `parameters`: key padded to 30, a space, the Go-syntax value (§11.2.2)."""
    return "\n".join(
        f"{key:<30} {go_format_value(v, syntax=True)}" for key, v in parameter_values(parameters)
    )


def quote(s: str) -> str:
    """Ollama's Modelfile quoting: only multi-line or space-edged values get quotes."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def render_modelfile(
    short_name: str,
    model_path: Path,
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    licenses: tuple[str, ...] = (),
    messages: tuple[dict[str, Any], ...] = (),
    adapters: tuple[Path, ...] = (),
    projectors: tuple[Path, ...] = (),
) -> str:
    """The Modelfile text of /api/show (§15.5)."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {short_name}",
        "",
        f"FROM {model_path}",
    ]
    lines += [f"ADAPTER {quote(str(p))}" for p in adapters]
    lines += [f"FROM {p}" for p in projectors]
    lines.append(f"TEMPLATE {quote(template if template is not None else '{{ .Prompt }}')}")
    if system:
        lines.append(f"SYSTEM {quote(system)}")
    lines += [f"PARAMETER {k} {quote(go_format_value(v))}" for k, v in parameter_values(parameters)]
    lines += [f"LICENSE {quote(text)}" for text in licenses]
    lines += [f"MESSAGE {m.get('role', '')} {quote(str(m.get('content', '')))}" for m in messages]
    return "\n".join(lines) + "\n"
