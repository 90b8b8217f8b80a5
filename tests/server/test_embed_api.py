"""POST /api/embed and /api/embeddings over a live server with SmolLM2 (spec §10, checklist E*)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import ollama
import pytest
from starlette.applications import Starlette

from server.app import create_app
from server.embeddings import normalize, pool
from tests.server.live import api_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path) -> Starlette:
    return create_app(api_store(tmp_path_factory.mktemp("embed"), smollm2_path))


def embed(http: httpx.Client, **body) -> dict:
    r = http.post("/api/embed", json={"model": "smollm2", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_one_vector_of_unit_norm(app, http):  # E1, E8
    out = embed(http, input="The sky is blue.")
    assert list(out) == ["model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"]  # fmt: skip
    (vector,) = out["embeddings"]
    assert len(vector) == 576
    assert np.linalg.norm(np.array(vector, dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
    (runner,) = app.state.scheduler.loaded()
    tok = runner.model.tokenizer
    ids = tok.encode("The sky is blue.", add_special=True, parse_special=False)
    assert out["prompt_eval_count"] == len(ids)
    expected = normalize(pool(runner.model.embed(ids), 0))
    assert np.array_equal(np.array(vector, dtype=np.float32), expected)


def test_inputs_keep_their_order(http):  # E2, E8
    a = embed(http, input="alpha")["embeddings"][0]
    b = embed(http, input="beta")
    both = embed(http, input=["alpha", "beta"])
    assert both["embeddings"] == [a, b["embeddings"][0]]
    single = embed(http, input="alpha")["prompt_eval_count"]
    assert both["prompt_eval_count"] == single + b["prompt_eval_count"]


def test_errors_and_empty_input(http):  # E3, E4, E9
    r = http.post("/api/embed", json={"model": "smollm2", "input": [1]})
    assert (r.status_code, r.json()) == (400, {"error": "invalid input type"})
    assert embed(http, input=[]) == {"model": "smollm2", "embeddings": []}
    assert embed(http) == {"model": "smollm2", "embeddings": []}
    r = http.post("/api/embed", json={"model": "", "input": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = http.post("/api/embed", json={"model": "nope", "input": "x"})
    assert r.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_dimensions_renormalise(http):  # E5
    full = np.array(embed(http, input="hello")["embeddings"][0], dtype=np.float32)
    cut = np.array(embed(http, input="hello", dimensions=8)["embeddings"][0], dtype=np.float32)
    assert cut.shape == (8,)
    assert np.linalg.norm(cut.astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(cut, full[:8] / np.linalg.norm(full[:8]), rtol=1e-5)
    same = embed(http, input="hello", dimensions=10_000)["embeddings"][0]
    assert len(same) == 576  # out of range: ignored


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


def test_legacy_embeddings(app, http):  # E10
    r = http.post("/api/embeddings", json={"model": "smollm2", "prompt": "hello"})
    assert list(r.json()) == ["embedding"]
    vector = np.array(r.json()["embedding"])
    (runner,) = app.state.scheduler.loaded()
    ids = runner.model.tokenizer.encode("hello", add_special=True, parse_special=False)
    raw = pool(runner.model.embed(ids), 0).astype(np.float64)
    np.testing.assert_array_equal(vector, raw)  # not normalised, float32 widened
    r = http.post("/api/embeddings", json={"model": "smollm2", "prompt": ""})
    assert r.json() == {"embedding": []}
    r = http.post("/api/embeddings", json={"model": "", "prompt": "x"})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


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
