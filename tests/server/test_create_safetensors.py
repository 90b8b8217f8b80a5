"""`/api/create` from a Safetensors directory, through the official client on a live server.

The directory's files are uploaded as blobs and named in `files`, as `ollama create` with
`FROM ./dir` and the client's `create(files=...)` send them. The stored GGUF must hold what
llama.cpp's converter writes (tests/golden/convert_golden.json), generate llama.cpp's greedy
tokens, and bad directories must answer 400 leaving the store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest

from server.app import create_app
from server.store import Store
from tests.conftest import needs_oracle
from tests.golden.make_convert_golden import CASES, summarize
from tests.server.conftest import live_server
from tests.tiny_hf import damage_directory, write_tiny_hf


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Store, str, ollama.Client]]:
    store = Store(tmp_path / "models")
    with live_server(create_app(store)) as url, ollama.Client(host=url) as client:
        yield store, url, client


def upload(client: ollama.Client, directory: Path) -> dict[str, str]:
    """Every file of `directory` (recursively) as a blob, keyed by its relative path."""
    return {
        p.relative_to(directory).as_posix(): client.create_blob(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_create_tiny_llama_streams_progress_and_stores_the_converters_tensors(
    served: tuple[Store, str, ollama.Client], tmp_path: Path
) -> None:
    store, url, client = served
    files = upload(client, write_tiny_hf(tmp_path / "llama", "llama"))
    events = [
        e.model_dump(exclude_none=True) for e in client.create("tiny", files=files, stream=True)
    ]
    statuses = [e["status"] for e in events]
    assert statuses[0] == "converting model" and statuses[-1] == "success"
    assert "parsing GGUF" in statuses and "writing manifest" in statuses
    progress = [e for e in events if "completed" in e]
    total = sum(f.stat().st_size for f in (tmp_path / "llama").glob("*.safetensors"))
    assert len(progress) == len(CASES["llama"]["tensors"])  # one line per source tensor
    assert all(e["total"] < total for e in progress)  # tensor bytes, without the header
    done = [e["completed"] for e in progress]
    assert done == sorted(done) and done[-1] == progress[-1]["total"]
    ours = summarize(store.resolve("tiny").gguf_path)
    assert ours["tensors"] == CASES["llama"]["tensors"]
    assert ours["metadata"] == CASES["llama"]["metadata"]
    shown = client.show("tiny")
    assert shown.details.family == "llama" and shown.details.quantization_level == "F16"


def test_create_with_quantize(served: tuple[Store, str, ollama.Client], tmp_path: Path) -> None:
    store, url, client = served
    files = upload(client, write_tiny_hf(tmp_path / "qwen3", "qwen3"))
    last = client.create("q", files=files, quantize="q8_0")
    assert last.status == "success"
    assert client.show("q").details.quantization_level == "Q8_0"


def _greedy_llama_cpp(path: Path, prompt: list[int], n: int) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False
    )
    llm.eval(prompt)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


@needs_oracle
@pytest.mark.oracle
def test_tiny_llama_generates_llama_cpps_greedy_tokens(
    served: tuple[Store, str, ollama.Client], tmp_path: Path
) -> None:
    """llama.cpp runs the stored file, whose tensors and metadata equal the converter's."""
    import llama_cpp

    store, url, client = served
    client.create("tiny", files=upload(client, write_tiny_hf(tmp_path / "llama", "llama")))
    body = {"model": "tiny", "prompt": "abc de", "stream": False,
            "logprobs": True, "options": {"temperature": 0, "num_predict": 12}}  # fmt: skip
    answer = httpx.post(f"{url}/api/generate", json=body, timeout=120).json()
    path = store.resolve("tiny").gguf_path
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    prompt = vocab.tokenize(b"abc de", add_bos=True, special=True)
    assert answer["prompt_eval_count"] == len(prompt) and answer["eval_count"] == 12
    tokens = _greedy_llama_cpp(path, prompt, 12)
    ours = b"".join(bytes(e["bytes"]) for e in answer["logprobs"])
    assert len(answer["logprobs"]) == 12
    assert ours == vocab.detokenize(tokens, prev_tokens=prompt)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_config", "config.json is missing"),
        ("unknown_arch", "unsupported architecture 'MambaForCausalLM'"),
        ("shape", "has shape [64, 96], but config.json implies [64, 80]"),
        ("truncated", "model.safetensors is not a valid safetensors file"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_bad_directory_is_a_400_and_leaves_the_store_unchanged(
    served: tuple[Store, str, ollama.Client],
    tmp_path: Path,
    damage: str,
    message: str,
    stream: bool,
) -> None:
    store, url, client = served
    files = upload(client, damage_directory(write_tiny_hf(tmp_path / "d", "llama"), damage))
    blobs = sorted(p.name for p in store.blobs_dir.iterdir())
    body = {"model": "broken", "files": files, "stream": stream}
    response = httpx.post(f"{url}/api/create", json=body, timeout=60)
    assert response.status_code == 400
    error = json.loads(response.text)["error"]
    assert error.startswith("convert safetensors: ") and message in error
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == blobs
    assert list(store.names()) == []
    with pytest.raises(ollama.ResponseError) as raised:
        client.create("broken", files=files)
    assert raised.value.status_code == 400
    assert httpx.get(f"{url}/api/tags", timeout=10).json() == {"models": []}


def _held_out_texts(n: int) -> list[str]:
    """Sentences of seeded random words, none from the tests' other fixtures."""
    rng = np.random.default_rng(1616)
    words = ("river", "quantum", "bread", "silent", "engine", "violet", "harbor", "mosaic",
             "ledger", "orbit", "walnut", "canyon", "lantern", "fossil", "meadow", "cipher",
             "tundra", "velvet", "anchor", "pixel", "glacier", "sonnet", "ember",
             "atlas")  # fmt: skip
    out = []
    for i in range(n):
        picked = rng.choice(words, size=3 + i % 9)
        out.append(" ".join(picked).capitalize() + ("?" if i % 4 == 0 else "."))
    return out


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_minilm_created_from_its_directory_embeds_as_llama_cpp(
    served: tuple[Store, str, ollama.Client], tmp_path: Path
) -> None:
    """Cosine ≥ 0.99999 on 50 texts against llama.cpp on the converter's GGUF (or, without the
    converter's venv, on the stored GGUF, whose tensors the golden record shows equal)."""
    import llama_cpp

    from engine.gguf.fetch import directory_path
    from tests.golden.make_convert_golden import CONVERTER_PYTHON, run_converter

    store, url, client = served
    source = directory_path("minilm")
    assert client.create("minilm", files=upload(client, source)).status == "success"
    reference = store.resolve("minilm").gguf_path
    if CONVERTER_PYTHON.is_file():
        reference = tmp_path / "converter.gguf"
        run_converter(source, reference)
    texts = _held_out_texts(50)
    ours = client.embed(model="minilm", input=texts).embeddings
    llm = llama_cpp.Llama(
        model_path=str(reference), embedding=True, n_ctx=512, n_threads=1, verbose=False
    )
    for text, mine in zip(texts, ours, strict=True):
        theirs = np.asarray(llm.embed(text), dtype=np.float64)
        mine = np.asarray(mine, dtype=np.float64)
        cosine = mine @ theirs / (np.linalg.norm(mine) * np.linalg.norm(theirs))
        assert cosine >= 0.99999, (text, cosine)


def test_cli_create_from_a_directory(
    served: tuple[Store, str, ollama.Client], tmp_path: Path
) -> None:
    """`refllama create NAME -f Modelfile` with `FROM ./dir` uploads the directory and converts."""
    import os
    import subprocess
    import sys

    store, url, client = served
    write_tiny_hf(tmp_path / "gemma", "gemma3")
    (tmp_path / "Modelfile").write_text("FROM ./gemma\nPARAMETER temperature 0\n")
    cli = [
        sys.executable,
        "-m",
        "server.cli.main",
        "create",
        "g",
        "-f",
        str(tmp_path / "Modelfile"),
    ]
    done = subprocess.run(
        cli, env={**os.environ, "OLLAMA_HOST": url}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert summarize(store.resolve("g").gguf_path)["tensors"] == CASES["gemma3"]["tensors"]
    assert client.show("g").parameters == "temperature                    0"
