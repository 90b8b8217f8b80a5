"""POST /api/embed and /api/embeddings over a live server (spec §10, checklist E*): SmolLM2, the
real embedding model nomic-embed-text (expected vectors: llama.cpp's, tests/golden/embed_nomic.json)
and a tiny random bert checked against llama.cpp live."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest
from starlette.applications import Starlette

from engine.gguf.fetch import model_path
from server.app import create_app
from tests.conftest import needs_oracle
from tests.server.live import api_store
from tests.tiny_bert import write_tiny_bert

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "embed_nomic.json"
MIN_COSINE = 0.99999  # measured: worst 0.99999948 over the 50 golden texts (test_bert.py)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "bert.gguf", "bert")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path, tiny_bert) -> Starlette:
    store = api_store(tmp_path_factory.mktemp("embed"), smollm2_path)
    store.create_from_gguf("nomic", model_path("nomic-embed-text"))
    store.create_from_gguf("tinybert", tiny_bert)
    return create_app(store)


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN) as f:
        case = json.load(f)["cases"][0]  # "search_query: How do I bake sourdough bread at home?"
    return case


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def embed(http: httpx.Client, **body) -> dict:
    r = http.post("/api/embed", json={"model": "smollm2"} | body)
    assert r.status_code == 200, r.text
    return r.json()


def test_one_vector_of_unit_norm(http, golden):  # E1, E8
    out = embed(http, model="nomic", input=golden["text"])
    assert list(out) == ["model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"]  # fmt: skip
    (vector,) = out["embeddings"]
    assert len(vector) == 768
    assert np.linalg.norm(np.array(vector, dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert out["prompt_eval_count"] == len(golden["ids"])
    assert cosine(vector, golden["embedding"]) >= MIN_COSINE


def test_smollm2_vector_is_unit_norm(http):  # E8 on a generative model (last-token pooling)
    (vector,) = embed(http, input="The sky is blue.")["embeddings"]
    assert len(vector) == 576
    assert np.linalg.norm(np.array(vector, dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)


def test_inputs_keep_their_order(http):  # E2, E8
    a = embed(http, input="alpha")["embeddings"][0]
    b = embed(http, input="beta")
    both = embed(http, input=["alpha", "beta"])
    assert both["embeddings"] == [a, b["embeddings"][0]]
    single = embed(http, input="alpha")["prompt_eval_count"]
    assert both["prompt_eval_count"] == single + b["prompt_eval_count"]


def test_encoder_batch_equals_single_inputs(http):  # one forward pass over every input
    a = embed(http, model="nomic", input="alpha")["embeddings"][0]
    b = embed(http, model="nomic", input="a longer second input")["embeddings"][0]
    both = embed(http, model="nomic", input=["alpha", "a longer second input"])
    assert both["embeddings"] == [a, b]


def test_errors_and_empty_input(http):  # E3, E4, E9
    r = http.post("/api/embed", json={"model": "smollm2", "input": [1]})
    assert (r.status_code, r.json()) == (400, {"error": "invalid input type"})
    assert embed(http, input=[]) == {"model": "smollm2", "embeddings": []}
    assert embed(http) == {"model": "smollm2", "embeddings": []}
    r = http.post("/api/embed", json={"model": "", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = http.post("/api/embed", json={"model": "nope", "input": "x"})
    assert r.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_dimensions_renormalise(http, golden):  # E5
    cut = embed(http, model="nomic", input=golden["text"], dimensions=64)["embeddings"][0]
    assert len(cut) == 64
    assert np.linalg.norm(np.array(cut, dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    # Ollama: normalize, keep the first `dimensions`, normalize again (= llama.cpp's first 64)
    assert cosine(cut, golden["embedding"][:64]) >= MIN_COSINE
    same = embed(http, model="nomic", input=golden["text"], dimensions=10_000)["embeddings"][0]
    assert len(same) == 768  # out of range: ignored


def test_truncation(http):  # E6, E7
    text = "word " * 100
    r = http.post(
        "/api/embed",
        json={"model": "smollm2", "input": text, "truncate": False, "options": {"num_ctx": 32}},
    )
    assert (r.status_code, r.json()) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    out = embed(http, input=text, options={"num_ctx": 32})
    assert out["prompt_eval_count"] <= 32 and len(out["embeddings"]) == 1


def test_legacy_embeddings(http, golden):  # E10
    r = http.post("/api/embeddings", json={"model": "nomic", "prompt": golden["text"]})
    assert list(r.json()) == ["embedding"]
    vector = np.array(r.json()["embedding"])
    expected = np.array(golden["embedding"])  # llama.cpp's mean pooling, not normalised
    assert cosine(vector, expected) >= MIN_COSINE
    assert np.linalg.norm(vector) == pytest.approx(np.linalg.norm(expected), rel=1e-4)
    assert abs(np.linalg.norm(vector) - 1.0) > 0.1  # raw, so not of unit norm
    r = http.post("/api/embeddings", json={"model": "smollm2", "prompt": ""})
    assert r.json() == {"embedding": []}
    r = http.post("/api/embeddings", json={"model": "", "prompt": "x"})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_embedding_model_does_not_generate(http):
    r = http.post("/api/generate", json={"model": "nomic", "prompt": "hi"})
    assert (r.status_code, r.json()) == (400, {"error": '"nomic" does not support generate'})
    r = http.post(
        "/api/chat", json={"model": "nomic", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert (r.status_code, r.json()) == (400, {"error": '"nomic" does not support chat'})
    assert len(embed(http, model="nomic", input="still serving")["embeddings"]) == 1


def test_nomic_truncation(http):  # E6, E7 on an encoder: [CLS] ... [SEP] kept within num_ctx
    text = "word " * 100
    body = {"model": "nomic", "input": text, "options": {"num_ctx": 16}}
    r = http.post("/api/embed", json=body | {"truncate": False})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    out = embed(http, **body)
    assert out["prompt_eval_count"] == 16  # [CLS] + 14 words + [SEP]
    short = embed(http, model="nomic", input="word " * 14)
    assert out["embeddings"] == short["embeddings"]


@pytest.mark.oracle
@needs_oracle
def test_tiny_bert_matches_llama_cpp(http, tiny_bert):
    import llama_cpp

    llm = llama_cpp.Llama(str(tiny_bert), embedding=True, n_ctx=64, verbose=False)
    texts = ["the quick brown fox", "hello, world!", "a tiny test"]
    out = embed(http, model="tinybert", input=texts)["embeddings"]
    for text, vector in zip(texts, out, strict=True):
        expected = np.array(llm.embed(text, normalize=True), dtype=np.float32)
        np.testing.assert_allclose(vector, expected, atol=5e-5, rtol=0)  # measured 1.1e-5


def test_official_client_embed(url):  # acceptance
    with ollama.Client(host=url) as client:
        out = client.embed(model="smollm2", input=["a", "b"])
        legacy = client.embeddings(model="smollm2", prompt="a")
    assert len(out.embeddings) == 2 and len(legacy.embedding) == 576

    async def run() -> int:
        client = ollama.AsyncClient(host=url)
        resp = await client.embed(model="smollm2", input="a")
        await client._client.aclose()
        return len(resp.embeddings)

    assert asyncio.run(run()) == 1
