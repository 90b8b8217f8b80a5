"""Fixtures for the model-store tests: a tiny GGUF, a store, a live server over the model routes,
a subprocess server that tests may kill, and Debian's docker-registry on a loopback port.

For the API tests: `url` serves the module's own `app` fixture live, and `http` is a client on it.

The registry fixture starts `/usr/bin/docker-registry` (Debian package `docker-registry`) with a
temporary config and storage directory; tests that need it skip only when the binary is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter
from starlette.applications import Starlette

from engine.gguf.reader import GGUFFile
from server.routes_models import model_routes
from server.store import Store
from tests.server.live import live_server

REPO = Path(__file__).resolve().parents[2]
REGISTRY_BIN = shutil.which("docker-registry")
needs_registry = pytest.mark.skipif(
    REGISTRY_BIN is None,
    reason="docker-registry is not installed (Debian package docker-registry)",
)


def write_tiny_gguf(
    path: Path,
    file_type: int = 0,
    dtype: type = np.float32,
    width: int = 8,
    extra: dict[str, str | int] | None = None,
) -> Path:
    """A small llama-shaped GGUF (`width` = d_model) with seeded random weights and a toy
    vocabulary; its 2-D weights are stored as `dtype`; `extra` adds string/uint32 keys."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(width)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(file_type)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "a", "b"])
    w.add_token_types([3, 3, 1, 1])
    w.add_chat_template("{{ messages }}")
    for key, value in (extra or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, value)
    for name, shape in (
        ("token_embd.weight", (4, width)),
        ("blk.0.attn_norm.weight", (width,)),
        ("blk.0.attn_q.weight", (width, width)),
        ("output_norm.weight", (width,)),
    ):
        data = rng.standard_normal(shape).astype(np.float32)
        w.add_tensor(name, data.astype(dtype) if len(shape) > 1 else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_consistent(store: Store) -> None:
    """Every blob holds its digest's bytes; every manifest parses, its blobs exist, it loads."""
    for path in store.blobs_dir.iterdir():
        if path.name.startswith("sha256-") and len(path.name) == 71:
            assert sha256(path.read_bytes()).hexdigest() == path.name[7:], path
    for name in store.names():
        found = store.read_manifest(name)
        assert found is not None
        for layer in found[1].blobs:
            assert store.has_blob(layer.digest), (name, layer)
        GGUFFile(store.resolve(name).gguf_path)


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def server_url(store: Store) -> Iterator[str]:
    """A live uvicorn server whose app is exactly the model routes over `store`."""
    with live_server(Starlette(routes=model_routes(store))) as url:
        yield url


@pytest.fixture(scope="module")
def url(app: Starlette) -> Iterator[str]:
    with live_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=300) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Poll `url` until it answers; fail at once if the process serving it has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_SERVE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import uvicorn
    from starlette.applications import Starlette
    from server.routes_models import model_routes
    from server.store import Store
    app = Starlette(routes=model_routes(Store(Path(sys.argv[1]))))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


class ServerProcess:
    """The model routes served by a separate Python process, so a test can SIGKILL it."""

    def __init__(self, models: Path, serve: str = _SERVE, blas_threads: int = 1) -> None:
        """`serve`: a script taking the models directory and the port as its arguments."""
        self.models = models
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": str(blas_threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", serve, str(models), str(self.port)], cwd=REPO, env=env
        )
        wait_http(f"{self.url}/api/tags", self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "models")
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on a loopback port with temporary storage; yields `127.0.0.1:<port>`."""
    if REGISTRY_BIN is None:
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    # YAML is a superset of JSON, so the config can be written without a YAML library.
    (root / "config.yml").write_text(json.dumps(config))
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=log
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/", proc)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
