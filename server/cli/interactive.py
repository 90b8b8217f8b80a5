"""`refllama run`'s output and its interactive session: streaming an answer, the `>>>` prompt
and its slash commands, as Ollama's cmd/interactive.go.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import unicodedata
from dataclasses import dataclass, field
from typing import Any, TextIO

from server.cli.client import APIError, Client


def chat_once(
    client: Client,
    base: dict[str, Any],
    prompt: str,
    verbose: bool,
    hide_thinking: bool,
    word_wrap: bool = True,
) -> int:
    messages = [{"role": "user", "content": prompt}]
    reply = _stream_chat(client, base, messages, sys.stdout, verbose, hide_thinking, word_wrap)
    return 0 if reply is not None else 1


def _char_width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class WordWrap:
    """Ollama's displayResponse: text streamed to a terminal breaks before the word that would
    pass the width less 5 columns (the word already shown is erased and re-printed on the next
    line); a word longer than the width less 10 is cut instead. Off, or on a pipe, text passes
    through unchanged (Ollama also wraps piped output, at 80 columns: README)."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.width = 0
        if enabled and out.isatty():
            try:
                self.width = os.get_terminal_size(out.fileno()).columns
            except OSError:
                self.width = 80
        self.line_length = 0
        self.word = ""

    def reset(self) -> None:
        self.line_length, self.word = 0, ""

    def write(self, text: str) -> None:
        if self.width < 10:
            self.out.write(text)
            return
        for ch in text:
            if self.line_length + 1 > self.width - 5:
                word_width = sum(_char_width(c) for c in self.word)
                if word_width > self.width - 10:
                    self.out.write(ch)
                    self.reset()
                    continue
                back = f"\x1b[{word_width}D" if word_width else ""
                self.out.write(f"{back}\x1b[K\n{self.word}{ch}")
                self.line_length = word_width + _char_width(ch)
                continue
            self.out.write(ch)
            self.line_length += _char_width(ch)
            if _char_width(ch) >= 2 or ch in " \t":
                self.word = ""
            elif ch in "\r\n":
                self.reset()
            else:
                self.word += ch


def _stream_chat(
    client: Client,
    base: dict[str, Any],
    messages: list[dict[str, Any]],
    out: TextIO,
    verbose: bool,
    hide_thinking: bool = False,
    word_wrap: bool = True,
) -> str | None:
    """Print the answer as it streams; returns its text (None after an error).

    Ctrl-C stops the answer (closing the stream cancels it on the server), as in Ollama."""
    content: list[str] = []
    thinking = False
    final: dict[str, Any] = {}
    wrap = WordWrap(out, word_wrap)
    try:
        for event in client.stream("/api/chat", {**base, "messages": messages}):
            message = event.get("message", {})
            if message.get("thinking") and not hide_thinking:
                if not thinking:
                    out.write("Thinking...\n")
                    thinking = True
                wrap.write(message["thinking"])
            if message.get("content"):
                if thinking:
                    out.write("\n...done thinking.\n\n")
                    thinking = False
                    wrap.reset()
                wrap.write(message["content"])
                content.append(message["content"])
            out.flush()
            if event.get("done"):
                final = event
    except APIError as e:
        print(f"Error: {e}", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        out.write("\n")
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
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""

_SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

_SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


PLACEHOLDER = "Send a message (/? for help)"
ALT_PLACEHOLDER = "Press Enter to send"


def _read_keys(fd: int) -> bytes:
    """os.read of what the next key sends, waiting in short selects: Python runs a pending
    SIGINT handler (Ctrl-C's KeyboardInterrupt) between them. A Ctrl-C landing after Python's
    last signal check but before a blocking read() began would otherwise be handled without
    interrupting the read, and the session would hang until the next key."""
    while not select.select([fd], [], [], 0.1)[0]:
        pass
    return os.read(fd, 4096)


class LineReader:
    """input() with GNU readline (editing, in-memory history) and Ollama's placeholder.

    On a terminal the prompt is shown with the placeholder in grey; the first key read in
    cbreak mode erases it and is handed to readline as the line's start (an Up arrow recalls
    the last line; other editing keys do nothing on an empty line). Keys typed ahead or pasted
    with newlines are kept and read as lines, in order. Off a terminal it is plain input().
    """

    def __init__(self) -> None:
        try:
            import readline
        except ImportError:  # no GNU readline: plain input(), still with the placeholder
            readline = None  # type: ignore[assignment]
        self.readline = readline
        self.pending = ""
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.history = True

    def set_history(self, on: bool) -> None:
        self.history = on
        if self.readline is not None:
            self.readline.set_auto_history(on)

    def read(self, prompt: str, placeholder: str) -> str:
        if not self.tty:
            return input(prompt)
        if not self.pending:
            self.pending = self._first_keys(prompt, placeholder)
        line, newline, rest = self.pending.partition("\n")
        if newline:
            self.pending = rest
            sys.stdout.write(f"{prompt}{line}\n")
            if self.history and self.readline is not None and line.strip():
                self.readline.add_history(line)  # as if typed through readline
            return line
        self.pending = ""
        return self._input(prompt, line)

    def _first_keys(self, prompt: str, placeholder: str) -> str:
        """Show prompt and placeholder, read what the first key sends, erase the line."""
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        raw = termios.tcgetattr(fd)
        raw[3] &= ~(termios.ICANON | termios.ECHO)  # lflags; ISIG stays: Ctrl-C is SIGINT
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
        try:
            termios.tcsetattr(fd, termios.TCSANOW, raw)  # before the prompt: no key echoes
            sys.stdout.write(f"{prompt}\x1b[90m{placeholder}\x1b[0m\x1b[{len(placeholder)}D")
            sys.stdout.flush()
            data = _read_keys(fd)
            while True:
                try:
                    keys = data.decode("utf-8").replace("\r", "\n")
                    break
                except UnicodeDecodeError:  # a character split across reads
                    data += _read_keys(fd)
        finally:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
        if keys == "\x04":
            raise EOFError
        if keys in ("\x1b[A", "\x1bOA"):
            return self._last_history()
        if keys.startswith("\x1b") or (len(keys) == 1 and keys < " " and keys != "\n"):
            return ""
        return keys

    def _last_history(self) -> str:
        if self.readline is None or not self.readline.get_current_history_length():
            return ""
        return self.readline.get_history_item(self.readline.get_current_history_length()) or ""

    def _input(self, prompt: str, start: str) -> str:
        if not start or self.readline is None:
            return (start + input(prompt + start)) if start else input(prompt)
        readline = self.readline
        readline.set_startup_hook(lambda: readline.insert_text(start))
        try:
            return input(prompt)
        finally:
            readline.set_startup_hook(None)


@dataclass
class Session:
    """What `/set` changes: the request fields, the system message and the display modes."""

    client: Client
    base: dict[str, Any]
    verbose: bool
    hide_thinking: bool
    word_wrap: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    system: str = ""
    loaded: list[dict[str, Any]] = field(default_factory=list)  # the model's own MESSAGEs
    reader: LineReader = field(default_factory=LineReader)


def interactive(
    client: Client,
    base: dict[str, Any],
    verbose: bool,
    hide_thinking: bool,
    word_wrap: bool = True,
) -> int:
    """Ollama's generateInteractive over input(): `>>>` lines until /bye or Ctrl-D."""
    session = Session(client, base, verbose, hide_thinking, word_wrap)
    session.loaded = _model_messages(client, base["model"])
    for message in session.loaded:  # a `/save`d session shows where it left off, as in Ollama
        if message["role"] == "user":
            print(f">>> {message['content']}")
        elif message["role"] == "assistant":
            print(f"{message['content']}\n")
    while True:
        try:
            line = session.reader.read(">>> ", PLACEHOLDER)
            if line.startswith('"""'):
                line = _multiline(session.reader, line)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        words = line.split()
        if words and words[0] in ("/bye", "/exit"):
            return 0
        if words and line.startswith("/"):
            _command(session, line, words)
            continue
        if not line.strip():
            continue
        session.history.append({"role": "user", "content": line})
        reply = _stream_chat(
            client, session.base, session.history, sys.stdout, session.verbose,
            session.hide_thinking, session.word_wrap,
        )  # fmt: skip
        if reply is not None:
            session.history.append({"role": "assistant", "content": reply})
        print()


def _multiline(reader: LineReader, first: str) -> str:
    parts = [first[3:]]
    while not parts[-1].rstrip().endswith('"""'):
        parts.append(reader.read("... ", ALT_PLACEHOLDER))
    return "\n".join(parts).rstrip()[:-3]


def _command(session: Session, line: str, words: list[str]) -> None:
    verb = words[0]
    if verb in ("/?", "/help"):
        topic = words[1] if len(words) > 1 else ""
        print({"set": _SET_HELP, "/set": _SET_HELP, "show": _SHOW_HELP, "/show": _SHOW_HELP}
              .get(topic, _HELP))  # fmt: skip
    elif verb == "/clear":
        session.history = [m for m in session.history if m["role"] == "system"]
        print("Cleared session context")
    elif verb == "/set" and len(words) > 1:
        _set(session, line, words)
    elif verb == "/set":
        print(_SET_HELP)
    elif verb == "/show" and len(words) > 1:
        _show(session, words[1])
    elif verb == "/show":
        print(_SHOW_HELP)
    elif verb == "/load":
        _load(session, words)
    elif verb == "/save":
        _save(session, words)
    else:
        print(f"Unknown command '{verb}'. Type /? for help")


_MODES = {
    "wordwrap": "Set 'wordwrap' mode.",
    "nowordwrap": "Set 'nowordwrap' mode.",
    "verbose": "Set 'verbose' mode.",
    "quiet": "Set 'quiet' mode.",
    "nothink": "Set 'nothink' mode.",
}


def _set(session: Session, line: str, words: list[str]) -> None:
    what = words[1]
    base = session.base
    if what in ("history", "nohistory"):
        session.reader.set_history(what == "history")  # Ollama prints nothing for these either
        return
    if what in _MODES:
        if what in ("verbose", "quiet"):
            session.verbose = what == "verbose"
        elif what in ("wordwrap", "nowordwrap"):
            session.word_wrap = what == "wordwrap"
        elif what == "nothink":
            base["think"] = False
        print(_MODES[what])
    elif what == "think":
        base["think"] = words[2] if len(words) > 2 else True
        print(f"Set 'think' mode to '{words[2]}'." if len(words) > 2 else "Set 'think' mode.")
    elif what == "format":
        if len(words) < 3 or words[2] != "json":
            print("Invalid or missing format. For 'json' mode use '/set format json'")
        else:
            base["format"] = "json"
            print("Set format to 'json' mode.")
    elif what == "noformat":
        base.pop("format", None)
        print("Disabled format.")
    elif what == "parameter":
        _set_parameter(session, words)
    elif what == "system" and len(words) > 2:
        text = line.split(None, 2)[2].strip()
        if text.startswith('"""') and text.endswith('"""') and len(text) >= 6:
            text = text[3:-3]
        session.system = text
        message = {"role": "system", "content": text}
        if session.history and session.history[-1]["role"] == "system":
            session.history[-1] = message
        else:
            session.history.append(message)
        print("Set system message.")
    elif what == "system":
        print(_SET_HELP)
    else:
        print(f"Unknown command '/set {what}'. Type /? for help")


def _set_parameter(session: Session, words: list[str]) -> None:
    """`/set parameter NAME VALUE...`; the server checks the value with a load request, so a
    bad name or value is refused here instead of failing every later message."""
    if len(words) < 4:
        print("Usage: /set parameter <name> <value>")
        return
    name, values = words[2], words[3:]
    value = [_parameter_value(v) for v in values] if name == "stop" else _parameter_value(values[0])
    options = {**session.base.get("options", {}), name: value}
    try:
        session.client.post(
            "/api/chat", {**session.base, "options": options, "messages": [], "stream": False}
        )
    except APIError as e:
        print(f"Couldn't set parameter: {json.dumps(str(e))}")
        return
    session.base["options"] = options
    print(f"Set parameter '{name}' to '{', '.join(values)}'")


def _model_messages(client: Client, model: str) -> list[dict[str, Any]]:
    """The MESSAGE history a model was created with (what `/save` stored)."""
    try:
        return list(client.post("/api/show", {"model": model}).get("messages") or [])
    except APIError:
        return []


def _load(session: Session, words: list[str]) -> None:
    """`/load MODEL`: switch to another model (or a `/save`d session) with a fresh history;
    an unknown model leaves the session as it was."""
    if len(words) != 2:
        print("Usage:\n  /load <modelname>")
        return
    model = words[1]
    print(f"Loading model '{model}'")
    try:
        info = session.client.post("/api/show", {"model": model})
        session.client.post("/api/chat", {**session.base, "model": model, "messages": [],
                                          "stream": False})  # fmt: skip
    except APIError as e:
        if "not found" in str(e):
            print(f"Couldn't find model '{model}'")
        else:
            print(f"error: {e}")
        return
    session.base["model"] = model
    session.history = []
    session.system = ""
    session.loaded = list(info.get("messages") or [])


def _save(session: Session, words: list[str]) -> None:
    """`/save NAME`: a new model from this one with the session's system message, parameters
    and messages (Ollama's NewCreateRequest)."""
    if len(words) != 2:
        print("Usage:\n  /save <modelname>")
        return
    body: dict[str, Any] = {"model": words[1], "from": session.base["model"], "stream": False}
    if session.system:
        body["system"] = session.system
    if session.base.get("options"):
        body["parameters"] = session.base["options"]
    messages = [*session.loaded, *session.history]
    if messages:
        body["messages"] = messages
    try:
        session.client.post("/api/create", body)
    except APIError as e:
        if "invalid model name" in str(e):
            print(f"error: The model name '{words[1]}' is invalid")
        else:
            print(f"error: {e}")
        return
    print(f"Created new model '{words[1]}'")


def _show(session: Session, what: str) -> None:
    try:
        info = session.client.post("/api/show", {"model": session.base["model"]})
    except APIError:
        print("error: couldn't get model")
        return
    if what == "info":
        details = info.get("details", {})
        for key in ("family", "parameter_size", "quantization_level"):
            print(f"  {key:<20}{details.get(key, '')}")
    elif what == "license":
        print(info.get("license") or "No license was specified for this model.")
    elif what == "modelfile":
        print(info.get("modelfile", ""))
    elif what == "parameters":
        print("Model defined parameters:")
        lines = (info.get("parameters") or "").splitlines()
        for text in lines or ["No additional parameters were specified for this model."]:
            print(f"  {text}")
        print()
        if session.base.get("options"):
            print("User defined parameters:")
            for key, value in session.base["options"].items():
                print(f"  {key:<30} {value}")
            print()
    elif what == "system":
        text = session.system or info.get("system", "")
        print(f"{text}\n" if text else "No system message was specified for this model.")
    elif what == "template":
        print(info.get("template") or "No prompt template was specified for this model.")
    else:
        print(f"Unknown command '/show {what}'. Type /? for help")


def _parameter_value(text: str) -> Any:
    """A `/set parameter` value: a JSON number or boolean when it parses as one, else text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) else text
