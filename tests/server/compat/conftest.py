"""What the /v1 route tests share: a live server with SmolLM2 as "smollm2", the official openai
client on it (test_anthropic.py brings its own app and client), and the native /api/chat call
each translation is checked against."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette

from server.app import create_app
from tests.server.live import api_store

HI = [{"role": "user", "content": "Hi!"}]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path) -> Starlette:
    return create_app(api_store(tmp_path_factory.mktemp("v1"), smollm2_path))


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def native_chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    """The native non-streamed /api/chat answer of SmolLM2 to `body`."""
    r = http.post("/api/chat", json={"model": "smollm2", "stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()
