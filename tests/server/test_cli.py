"""server/cli/: OLLAMA_HOST parsing, and `refllama serve/create/run/ps/stop` against servers."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import io
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest

from engine.gguf.quantize import quantize_gguf
from server import create
from server.app import create_app
from server.cli import client as cli_client
from server.cli import main as cli
from server.cli import models as cli_models
from server.store import Store
from tests.server.conftest import write_tiny_gguf
from tests.server.live import live_server
from tests.tiny_model import write_tiny_model

REFLLAMA = [sys.executable, "-m", "server.cli.main"]  # the console script's entry point


@pytest.mark.parametrize(
    ("value", "base"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("example.com:8080", "http://example.com:8080"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:8443/ollama", "https://example.com:8443/ollama"),
        ("[::1]:9999", "http://[::1]:9999"),
        ("::1", "http://[::1]:11434"),
        ("localhost:notaport", "http://localhost:11434"),
        (":11500", "http://127.0.0.1:11500"),
    ],
)
def test_ollama_host(value, base):  # §1.1
    assert cli_client.parse_ollama_host(value).base == base


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _main(*argv: str) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    return int(info.value.code)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cli")
    store = Store(root / "models")
    store.create_from_gguf(
        "short", write_tiny_model(root / "tiny.gguf"), parameters={"num_predict": 6, "seed": 1}
    )
    with live_server(create_app(store)) as base:
        yield base


def _answer(url: str, prompt: str) -> str:
    """The server's non-streamed chat answer to `prompt` (what `run` must print, plus "\\n")."""
    body = {"model": "short", "messages": [{"role": "user", "content": prompt}], "stream": False}
    content = httpx.post(f"{url}/api/chat", json=body, timeout=60).json()["message"]["content"]
    assert content, "the seeded tiny model answers with text"
    return content


def test_run_ps_stop(url, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert _main("run", "short", "Say", "hi.") == 0
    assert capsys.readouterr().out == _answer(url, "Say hi.") + "\n"

    assert _main("ps") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert table[1].startswith("short:latest") and "100% CPU" in table[1]
    assert "minutes from now" in table[1]

    assert _main("stop", "short") == 0
    assert _main("ps") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert _main("stop", "nope") == 1
    assert 'couldn\'t find model "nope" to stop' in capsys.readouterr().err


def test_run_piped_and_interactive(url, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", url)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say hi."))
    assert _main("run", "short") == 0
    assert capsys.readouterr().out == _answer(url, "Say hi.") + "\n"

    script = 'Hello!\n/?\n/set parameter num_predict 2\n"""Two\nlines"""\n/bogus\n/bye\n'
    monkeypatch.setattr(sys, "stdin", _TTY(script))
    assert _main("run", "short") == 0
    out = capsys.readouterr().out
    assert "Available Commands:" in out and "Unknown command '/bogus'" in out
    assert "Set parameter 'num_predict' to '2'" in out

    with socket.socket() as s:  # a loopback registry address where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _main("run", f"127.0.0.1:{port}/library/nope", "hi", "--insecure") == 1
    assert "pulling manifest" in capsys.readouterr().err  # `run` pulls a missing model first


def test_flags_may_come_before_the_prompt(url, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert _main("run", "short", "--keepalive", "0", "Say", "--verbose", "hi.") == 0
    out = capsys.readouterr()
    assert out.out == _answer(url, "Say hi.") + "\n" and "eval count:" in out.err
    assert _main("run", "short", "--think", "hi") == 1  # "hi" is the prompt, not a level
    assert "does not support thinking" in capsys.readouterr().err
    assert _main("run", "short", "--think=maybe", "hi") == 1
    assert 'invalid value for --think: "maybe"' in capsys.readouterr().err


def test_bare_command_version_and_suggestions(url, monkeypatch, capsys):
    monkeypatch.setenv("OLLAMA_HOST", url)
    assert _main() == 0
    assert "serve" in capsys.readouterr().out  # help, not an error
    assert _main("--version") == 0
    assert capsys.readouterr().out.startswith("refllama version is ")
    assert _main("lst") == 1
    err = capsys.readouterr().err
    assert 'unknown command "lst"' in err and "Did you mean this?\n\tlist" in err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "Environment Variables:" in capsys.readouterr().out


def test_client_commands_do_not_import_the_engine():
    code = "import sys, server.cli.main; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    for heavy in ("engine", "numpy", "starlette", "uvicorn"):
        assert f"'{heavy}'" not in loaded.stdout


def test_broken_pipe_is_quiet(url):  # `refllama show --template x | head -2`
    read, write = os.pipe()
    os.close(read)  # the reader has gone before anything is written
    env = {**os.environ, "OLLAMA_HOST": url}
    done = subprocess.run(
        [*REFLLAMA, "show", "--modelfile", "short"], env=env, stdout=write, stderr=subprocess.PIPE
    )
    os.close(write)
    assert done.returncode == 141 and done.stderr == b""


def test_client_reports_a_missing_server(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    assert _main("ps") == 1
    assert "could not connect" in capsys.readouterr().err


def _wait_up(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"refllama serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("refllama serve did not start")


@contextlib.contextmanager
def _serving(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`refllama serve` in a subprocess on a free port over tmp_path/m; yields its environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "m")}
    server = subprocess.Popen(
        [*REFLLAMA, "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_up(f"http://127.0.0.1:{port}", server)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()


def test_serve_sweeps_stale_temporary_blobs(tmp_path):
    """A crash mid-upload leaves a tmp- file; `serve` removes every one, whatever its age: no
    other process writes the models directory while we serve (README)."""
    blobs = Store(tmp_path / "m").blobs_dir
    stale, fresh = blobs / "tmp-stale", blobs / "tmp-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    with _serving(tmp_path):
        assert not stale.exists()
        assert not fresh.exists()


@pytest.mark.slow
def test_readme_path_serve_create_run(tmp_path, smollm2_path):
    """The README's main command: serve, create from a Modelfile FROM the GGUF, run a prompt."""
    with _serving(tmp_path) as env:
        port = env["OLLAMA_HOST"].rsplit(":", 1)[1]
        # Greedy and bounded, so the answer is the same on every run.
        modelfile = f"FROM {smollm2_path}\nPARAMETER temperature 0\nPARAMETER num_predict 40\n"
        (tmp_path / "Modelfile").write_text(modelfile)
        created = subprocess.run(
            [*REFLLAMA, "create", "smollm2", "-f", str(tmp_path / "Modelfile")],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        ran = subprocess.run(
            [*REFLLAMA, "run", "smollm2", "What is the capital of France?"],
            env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        question = [{"role": "user", "content": "What is the capital of France?"}]
        body = json.dumps({"model": "smollm2", "messages": question, "stream": False}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chat", data=body) as r:
            answer = json.loads(r.read())["message"]["content"]
        assert answer and ran.stdout == answer + "\n"  # the CLI prints the streamed answer


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty, so Ctrl-C is SIGINT,
    with SIGINT at its default and unblocked, as a shell starts a command. A child inherits an
    ignored or blocked SIGINT: in the full suite the test process had one (the Ctrl-C check then
    waited in vain), which a user's terminal never gives the CLI."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _PTY:
    """`refllama run` on a pseudo-terminal (stdlib pty), read until an expected text."""

    def __init__(self, argv: list[str], env: dict[str, str], columns: int = 80) -> None:
        self.fd, child = pty.openpty()
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.proc = subprocess.Popen(
            argv, env=env, stdin=child, stdout=child, stderr=child, preexec_fn=_own_terminal
        )
        os.close(child)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{text!r} not seen in {self.seen!r}")
            self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
        before, _, self.seen = self.seen.partition(text)
        return before

    def read_to_end(self, timeout: float = 60) -> str:
        """Everything the child writes until it closes the terminal (exits)."""
        deadline = time.monotonic() + timeout
        while select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: the child's side is closed
                break
            if not data:
                break
            self.seen += data.decode("utf-8", "replace")
        return self.seen

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())


def test_interactive_session_on_a_terminal(url):
    env = {**os.environ, "OLLAMA_HOST": url}
    term = _PTY([*REFLLAMA, "run", "short"], env)
    try:
        term.expect(">>> ")
        term.send("\x03")  # Ctrl-C at an empty prompt does not quit
        term.expect("Use Ctrl + d or /bye to exit.")
        term.expect(">>> ")
        term.send("/set parameter num_ctx 2\r")
        term.expect("Couldn't set parameter:")
        term.send("/set parameter num_predict 3\r")
        term.expect("Set parameter 'num_predict' to '3'")
        term.send("/set system Answer briefly.\r")
        term.expect("Set system message.")
        term.send("/show system\r")
        term.expect("Answer briefly.")
        term.send("/set verbose\r")
        term.expect("Set 'verbose' mode.")
        term.send("Hello\r")
        term.expect("eval count:           3 token(s)")  # the later message still works
        term.expect(">>> ")
        term.send("/show parameters\r")
        term.expect("User defined parameters:")
        term.expect("num_predict")
        # Ctrl-D at the next prompt ends the session. Sent earlier, while the terminal is still
        # canonical, the line discipline would turn it into a NUL byte (no EOF).
        term.expect(">>> ")
        term.send("\x04")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        term.proc.wait()
        os.close(term.fd)


class _PlainHTTP(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_registry_errors_say_what_to_do(url, monkeypatch, capsys):
    """Plain-http registry without --insecure, an unknown host, a missing FROM file: a message
    naming the cause and the fix, not a raw OpenSSL or resolver error (issue 21, point 8)."""
    monkeypatch.setenv("OLLAMA_HOST", url)
    registry = http.server.HTTPServer(("127.0.0.1", 0), _PlainHTTP)
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    try:
        assert _main("pull", f"127.0.0.1:{registry.server_port}/library/m") == 1
    finally:
        registry.shutdown()
        registry.server_close()
    err = capsys.readouterr().err
    assert "server gave HTTP response to HTTPS client" in err and "--insecure" in err
    assert "SSL" not in err

    assert _main("pull", "nosuch.invalid/library/m") == 1  # .invalid never resolves (RFC 6761)
    err = capsys.readouterr().err
    assert "lookup nosuch.invalid: no such host" in err and "Errno" not in err


def test_from_a_missing_file_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Modelfile").write_text("FROM /no/such/file.gguf\n")
    assert _main("create", "m") == 1
    err = capsys.readouterr().err
    assert "FROM /no/such/file.gguf: no such file or directory" in err
    assert "invalid model name" not in err


def _post(url: str, path: str, body: dict) -> dict:
    data = json.dumps({**body, "stream": False}).encode()
    with urllib.request.urlopen(url + path, data=data) as r:
        return json.loads(r.read())


def _render(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`: cursor-left (ESC[nD), erase-to-end (ESC[K)."""
    lines, line, col = [], [], 0
    for token in re.findall(r"\x1b\[(\d*)([DK])|(\r\n|\n)|(.)", raw, flags=re.S):
        count, code, newline, ch = token
        if newline:
            lines.append("".join(line))
            line, col = [], 0
        elif code == "D":
            col = max(0, col - int(count or 1))
        elif code == "K":
            del line[col:]
        else:
            line[col : col + 1] = [ch]
            col += 1
    return [*lines, "".join(line)]


def test_word_wrap_on_a_narrow_terminal(url):
    """`run` on a 30-column terminal breaks lines before 25 columns without losing a character;
    --nowordwrap prints the answer as the API gives it."""
    _post(url, "/api/create", {"model": "long", "from": "short", "parameters": {"num_predict": 40}})
    question = [{"role": "user", "content": "Say hi."}]
    answer = _post(url, "/api/chat", {"model": "long", "messages": question})["message"]["content"]
    assert len(answer) > 30  # long enough to need a break
    env = {**os.environ, "OLLAMA_HOST": url}
    for flags in ([], ["--nowordwrap"]):
        term = _PTY([*REFLLAMA, "run", "long", *flags, "Say hi."], env, columns=30)
        try:
            raw = term.read_to_end()
            assert term.proc.wait(timeout=60) == 0
        finally:
            os.close(term.fd)
        if flags:
            assert raw == answer.replace("\n", "\r\n") + "\r\n"
            continue
        shown = _render(raw)
        assert len(shown) > 2 and all(len(line) <= 25 for line in shown)
        assert "".join("".join(shown).split()) == "".join(answer.split())


def test_save_and_load_a_session(url):
    env = {**os.environ, "OLLAMA_HOST": url}
    term = _PTY([*REFLLAMA, "run", "short"], env)
    try:
        term.expect(">>> ")
        term.send("/set system Be brief.\r")
        term.expect("Set system message.")
        term.send("Hello\r")
        term.expect(">>> ")
        term.send("/save bad name!\r")
        term.expect("Usage:")
        term.send("/save Bad:na:me\r")
        term.expect("error: The model name 'Bad:na:me' is invalid")
        term.send("/save kept\r")
        term.expect("Created new model 'kept'")
        term.send("/load nope\r")
        term.expect("Couldn't find model 'nope'")
        term.send("/load kept\r")
        term.expect("Loading model 'kept'")
        term.send("/set nowordwrap\r")
        term.expect("Set 'nowordwrap' mode.")
        term.expect(">>> ")  # Ctrl-D typed ahead of the prompt is lost (see above)
        term.send("\x04")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        term.proc.wait()
        os.close(term.fd)
    shown = _post(url, "/api/show", {"model": "kept"})
    assert shown["system"] == "Be brief."
    roles = [m["role"] for m in shown["messages"]]
    assert roles == ["system", "user", "assistant"] and shown["messages"][1]["content"] == "Hello"

    term = _PTY([*REFLLAMA, "run", "kept"], env)  # a saved session shows where it left off
    try:
        term.expect(">>> Hello")
        term.expect(">>> ")
        term.send("\x04")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        term.proc.wait()
        os.close(term.fd)


def test_quantize_reports_progress_per_tensor(tmp_path):
    """`create -q` progress: `completed` grows tensor by tensor (the quantizer's callback), stays
    below the file size until the end, then equals it. Each tensor is slowed by 0.3 s so the
    half-second progress lines fall between tensors."""
    f16 = write_tiny_gguf(tmp_path / "f16.gguf", file_type=1, dtype=np.float16, width=256)
    tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(f16).tensors)  # gguf-py's view

    def slow_quantizer(src, dst, target, progress):
        def tensor_done(n: int) -> None:
            progress(n)
            time.sleep(0.3)

        quantize_gguf(src, dst, target, progress=tensor_done)

    total = f16.stat().st_size
    line = {"status": "quantizing F16 model to Q8_0", "digest": "0" * 19}
    events = list(
        create._run_quantizer(slow_quantizer, f16, tmp_path / "q.gguf", "Q8_0", line, total)
    )
    done = [e.get("completed", 0) for e in events]
    assert done == sorted(done) and done[-1] == total
    partial = [d for d in done[:-1] if d]
    assert len(set(partial)) >= 2 and all(d <= tensor_bytes < total for d in partial)


def test_progress_bar_layout():
    """Ollama's bar layout, by hand for 80 columns (one left free): 11 status + 1 + 4 percent
    + 5 (` ▕`, `▏ `) + 13 sizes + 18 (no rate yet) leaves 27 bar columns, a quarter filled."""
    progress = cli_models.Progress(io.StringIO(), columns=80)
    line = progress.bar_line("pulling abc", 250_000, 1_000_000, "d")
    assert line == "pulling abc  25% ▕" + "█" * 6 + " " * 21 + "▏ 250 KB/1.0 MB" + " " * 18
    narrow = cli_models.Progress(io.StringIO(), columns=40)
    line = narrow.bar_line("copying file sha256:" + "ab" * 32, 1_000_000, 1_000_000, "d")
    assert len(line) <= 39 and "100% ▕██████████▏ 1.0 MB" in line


def test_create_progress_fits_the_terminal(url, tmp_path):
    """`create -q` on a 60-column terminal: no drawn line is wider than 59 columns, so nothing
    wraps and every \\r redraw lands on its own line (issue 21, point 9)."""
    f16 = write_tiny_gguf(tmp_path / "f16.gguf", file_type=1, dtype=np.float16, width=256)
    (tmp_path / "Modelfile").write_text(f"FROM {f16}\n")
    env = {**os.environ, "OLLAMA_HOST": url}
    argv = [*REFLLAMA, "create", "q8", "-q", "q8_0", "-f", str(tmp_path / "Modelfile")]
    term = _PTY(argv, env, columns=60)
    try:
        raw = term.read_to_end()
        assert term.proc.wait(timeout=120) == 0
    finally:
        os.close(term.fd)
    drawn = re.split(r"\r\x1b\[K|\r?\n", raw)
    assert any("copying file sha256:" in d for d in drawn)
    assert any("100% ▕" in d for d in drawn) and drawn[-2] == "success"
    assert max(len(d) for d in drawn) <= 59


def test_prompt_placeholder_and_line_editing(url):
    """The grey "Send a message (/? for help)" placeholder, erased by the first key, which
    starts the line readline goes on editing; Up recalls the last line; `...` lines have
    "Press Enter to send"."""
    env = {**os.environ, "OLLAMA_HOST": url}
    term = _PTY([*REFLLAMA, "run", "short"], env)
    try:
        term.expect(">>> \x1b[90mSend a message (/? for help)\x1b[0m")
        term.send("/set sys")  # the first key(s) alone, then the rest through readline
        term.expect("\r\x1b[K")  # placeholder erased
        time.sleep(0.3)
        term.send("tem Two parts.\r")
        term.expect("Set system message.")
        term.expect("Send a message (/? for help)")
        term.send("/show system\r")
        term.expect("Two parts.")
        term.expect("Send a message (/? for help)")
        term.send("\x1b[A")  # Up: the last line again
        time.sleep(0.3)
        term.send("\r")
        term.expect("/show system")
        term.expect("Two parts.")
        term.send('"""\r')
        term.expect("Press Enter to send")
        term.send('/set"""\r')
        term.expect(">>> ")
        term.send("\x04")
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        term.proc.wait()
        os.close(term.fd)
