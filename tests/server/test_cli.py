"""server/cli/: OLLAMA_HOST parsing, and `refllama serve/create/run/ps/stop` against servers."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import select
import socket
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.cli import client as cli_client
from server.cli import main as cli
from server.store import Store
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
    """In the child: a new session whose controlling terminal is the pty, so Ctrl-C is SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _PTY:
    """`refllama run` on a pseudo-terminal (stdlib pty), read until an expected text."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.fd, child = pty.openpty()
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
        term.send("\x04")  # Ctrl-D ends the session
        assert term.proc.wait(timeout=30) == 0
    finally:
        term.proc.kill()
        term.proc.wait()
        os.close(term.fd)
