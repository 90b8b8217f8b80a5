"""A real uvicorn server on a free loopback port, for tests that talk HTTP.

    with live_server(create_app(store)) as url:
        ollama.Client(host=url).generate(...)

The server runs in a daemon thread with its own event loop; leaving the block asks it to exit
and waits for it (in-flight streams are closed, which releases their models).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
from gguf import GGUFWriter
from starlette.types import ASGIApp

from server.store import Store
from tests.tiny_model import write_tiny_model


@contextmanager
def live_server(app: ASGIApp, startup_timeout: float = 20.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL `http://127.0.0.1:<port>`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# --------------------------------------------------------------------------------------------
# Models for the API tests: SmolLM2 under several templates, and an embedding-only header.

# A ChatML Go template with tools, in the style of Ollama's qwen2.5 template. Its ToolCalls
# block starts with `{`, so the tool-call tag is `{` (spec §7.4).
CHATML_TOOLS = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}
You can call these functions:
{{- range .Tools }}
{{ . }}
{{- end }}
Answer with a JSON object {"name": <function name>, "arguments": <arguments object>}.
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": \
{{ .Function.Arguments }}}{{ end }}
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>{{ .Content }}</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Thinking tags come from the text around `.Thinking` inside `range .Messages` (spec §8.1);
# the generation prompt ends with the opening tag, so the parser starts prefilled (§8.3).
THINKING = """\
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}"""

# Legacy-mode template (no .Messages) with fill-in-the-middle support (`insert`).
FIM = """\
{{- if .Suffix }}<fim_prefix>{{ .Prompt }}<fim_suffix>{{ .Suffix }}<fim_middle>
{{- else }}{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}<|im_start|>user
{{ .Prompt }}<|im_end|>
<|im_start|>assistant
{{ end }}"""

SYSTEM = "You are a concise assistant."
HISTORY = [
    {"role": "user", "content": "The secret word is apple."},
    {"role": "assistant", "content": "Noted."},
]


def write_embedding_header(path: Path) -> Path:
    """A GGUF that declares `bert.pooling_type`: an embedding-only model (never loaded)."""
    w = GGUFWriter(str(path), "bert")
    w.add_uint32("bert.pooling_type", 1)
    w.add_context_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def api_store(root: Path, smollm2: Path) -> Store:
    """A store with SmolLM2 as `smollm2` (its GGUF Jinja template), `chatml` (Go template with
    tools, SYSTEM and MESSAGE history), `thinker`, `fim`, and the embedding-only `emb`."""
    store = Store(root / "models")
    store.create_from_gguf("smollm2", smollm2)
    store.create_from_gguf(
        "chatml", smollm2, template=CHATML_TOOLS, system=SYSTEM, messages=HISTORY
    )
    store.create_from_gguf("thinker", smollm2, template=THINKING)
    store.create_from_gguf("fim", smollm2, template=FIM, system=SYSTEM)
    store.create_from_gguf("emb", write_embedding_header(root / "emb.gguf"))
    return store


def tiny_store(root: Path) -> Store:
    """A store with the tiny random-weight llama of tests/tiny_model.py as `tiny` (fast to load:
    for tests of HTTP behaviour, not of text) and the embedding-only `emb`."""
    store = Store(root / "models")
    store.create_from_gguf("tiny", write_tiny_model(root / "tiny.gguf"))
    store.create_from_gguf("emb", write_embedding_header(root / "emb.gguf"))
    return store


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc), where a live server's models live."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
