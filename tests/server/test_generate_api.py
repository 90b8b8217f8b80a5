"""POST /api/generate over a live server with SmolLM2 (spec/ollama-api.md §4, checklist GE*)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from starlette.applications import Starlette

from engine.generate import generate
from engine.sampling.options import resolve
from server.app import create_app
from tests.server.live import SYSTEM, api_store

pytestmark = pytest.mark.slow

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"temperature": 0, "num_predict": 12}
CHATML_FULL = "registry.ollama.ai/library/smollm2:latest"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path) -> Starlette:
    return create_app(api_store(tmp_path_factory.mktemp("gen"), smollm2_path))


def stream(http: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[dict]]:
    with http.stream("POST", "/api/generate", json=body) as r:
        lines = [line for line in r.iter_lines()]
    return r, [json.loads(line) for line in lines]


def render(http: httpx.Client, **body: Any) -> str:
    r = http.post("/api/generate", json={"_debug_render_only": True, **body})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["done"] is False and out["response"] == ""
    return out["_debug_info"]["rendered_template"]


def test_stream_shape_and_final_event(http):  # GE5, GE6, G7, G10
    r, events = stream(http, {"model": "smollm2", "prompt": "Hi", "options": GREEDY})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    *pieces, final = events
    assert pieces and all(e["done"] is False for e in pieces)
    assert all(e["model"] == "smollm2" for e in events)  # echoed as sent, no ":latest"
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
    assert all(stamp.match(e["created_at"]) for e in events)
    assert final["done"] is True and final["done_reason"] in ("stop", "length")
    assert final["response"] == ""  # Ollama sends the last token in its own chunk
    assert isinstance(final["context"], list) and all(isinstance(t, int) for t in final["context"])
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"):  # fmt: skip
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    assert final["eval_count"] <= 12


def test_stream_false_concatenates_the_stream(http):  # GE7, G7
    body = {
        "model": "smollm2",
        "prompt": "Name a color.",
        "options": {"seed": 7, "num_predict": 16},
    }
    _, events = stream(http, body)
    r = http.post("/api/generate", json={**body, "stream": False})
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    whole = r.json()
    assert whole["response"] == "".join(e["response"] for e in events)
    assert whole["context"] == events[-1]["context"]
    assert whole["eval_count"] == events[-1]["eval_count"]


def test_greedy_raw_generate_is_llama_cpps_greedy(app, http):  # acceptance
    # llama.cpp's greedy continuation of PROMPT: case 2 of tests/golden/forward_smollm2.json
    # (make_forward_golden.py: batched prefill, then one-token decode, as llama-server).
    (case,) = [c for c in _golden_cases() if c["text"] == PROMPT]
    r = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": PROMPT, "raw": True, "stream": False,
              "logprobs": True, "options": GREEDY},
    )  # fmt: skip
    api = r.json()
    assert "context" not in api  # GE9
    (runner,) = app.state.scheduler.loaded()
    tok = runner.model.tokenizer
    assert case["prompt"] == tok.encode(PROMPT, add_special=True, parse_special=True)
    cont = case["continuation"][: GREEDY["num_predict"]]
    end = next(i for i, t in enumerate(cont) if t in tok.eog_ids)  # llama.cpp stops here too
    expected = cont[:end]
    assert [e["token"] for e in api["logprobs"]] == [
        tok.token_bytes(t).decode("utf-8", "replace") for t in cont[: end + 1]
    ]  # the end token has its logprob entry, as in Ollama
    assert api["response"] == b"".join(tok.token_bytes(t) for t in expected).decode()
    assert api["done_reason"] == "stop" and api["eval_count"] == end + 1  # the end token counts


def _golden_cases() -> list[dict]:
    return json.loads((GOLDEN / "forward_smollm2.json").read_text())["cases"]


def test_a_chunk_repeated_more_than_30_times_ends_the_stream(app, http):  # Ollama's guard
    body = {"model": "smollm2", "prompt": "!!!!!!!!!!!!!!!!!!!!!!!!", "raw": True,
            "options": {"temperature": 0, "repeat_penalty": 1, "num_predict": 64}}  # fmt: skip
    _, events = stream(http, body)
    (runner,) = app.state.scheduler.loaded()
    ids = runner.model.tokenizer.encode(body["prompt"], add_special=True, parse_special=True)
    engine = [s.text for s in generate(runner.model, ids, resolve({}, body["options"]))]
    assert len(engine) == 64 and engine[-1] == "0"  # unguarded, "0" runs to num_predict
    texts = [e["response"] for e in events]
    assert all(e["done"] is False for e in events)  # no final chunk, no error: the stream ends
    assert texts == engine[: len(texts)]
    assert texts[-31:] == ["0"] * 31 and texts[-32] != "0"  # the 32nd "0" in a row is dropped
    assert engine[len(texts)] == "0"
    whole = http.post("/api/generate", json={**body, "stream": False}).json()
    assert whole["done"] is False and whole["response"] == "".join(texts)


def test_default_options_sample_like_the_engine_defaults(app, http):  # O1, O3
    body = {"model": "smollm2", "prompt": PROMPT, "raw": True, "stream": False}
    api = http.post("/api/generate", json={**body, "options": {"seed": 3, "num_predict": 10}})
    (runner,) = app.state.scheduler.loaded()
    ids = runner.model.tokenizer.encode(PROMPT, add_special=True, parse_special=True)
    steps = generate(runner.model, ids, resolve({}, {"seed": 3, "num_predict": 10}))
    assert api.json()["response"] == "".join(s.text for s in steps)


def test_length_and_stop_strings(http):  # GE8
    story = "Once upon a time, in a small village by the sea,"
    base = {"model": "smollm2", "prompt": story, "raw": True, "stream": False}
    long = http.post(
        "/api/generate", json={**base, "options": {"temperature": 0, "num_predict": 8}}
    )
    assert long.json()["done_reason"] == "length" and long.json()["eval_count"] == 8
    text = long.json()["response"]
    word = text.split()[2]
    stopped = http.post(
        "/api/generate", json={**base, "options": {"temperature": 0, "num_predict": 8,
                                                   "stop": [word]}}
    ).json()  # fmt: skip
    assert stopped["done_reason"] == "stop"
    assert stopped["response"] == text[: text.index(word)]
    assert word not in stopped["response"]


def test_raw_conflicts(http):  # GE10
    for extra in ({"system": "s"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}):
        r = http.post(
            "/api/generate", json={"model": "smollm2", "prompt": "x", "raw": True, **extra}
        )
        assert (r.status_code, r.json()) == (
            400,
            {"error": "raw mode does not support template, system, or context"},
        )


def test_debug_render_system_and_template_overrides(http):  # GE11, GE18
    default = render(http, model="fim", prompt="Hello")
    assert default == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    other = render(http, model="fim", prompt="Hello", system="Be brief.")
    assert other == default.replace(SYSTEM, "Be brief.")
    assert render(http, model="fim", prompt="Hello", template="[{{ .System }}|{{ .Prompt }}]") == (
        f"[{SYSTEM}|Hello]"
    )
    assert render(http, model="fim", prompt="Hello") == default  # for that request only
    assert render(http, model="fim", prompt="Hello", raw=True) == "Hello"


def test_suffix_fill_in_the_middle(http):  # GE12, GE13
    out = render(http, model="fim", prompt="def add(a, b):", suffix="    return c")
    assert out == "<fim_prefix>def add(a, b):<fim_suffix>    return c<fim_middle>"
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "a", "suffix": "b"})
    assert (r.status_code, r.json()) == (400, {"error": f"{CHATML_FULL} does not support insert"})


def test_embedding_model_does_not_generate(http):  # GE14
    r = http.post("/api/generate", json={"model": "emb", "prompt": "hi"})
    assert (r.status_code, r.json()) == (400, {"error": '"emb" does not support generate'})


def test_context_round_trip(http):  # GE15
    first = http.post(
        "/api/generate",
        json={"model": "chatml", "prompt": "Hi", "stream": False, "options": GREEDY},
    ).json()
    with_history = render(http, model="chatml", prompt="Again")
    assert "The secret word is apple." in with_history  # the model's MESSAGE history
    resent = render(http, model="chatml", prompt="Again", context=first["context"])
    r = http.post("/api/detokenize", json={"model": "chatml", "tokens": first["context"]})
    prefix = r.json()["content"]
    assert prefix.endswith(first["response"])
    assert resent.startswith(prefix)
    assert "apple" not in resent[len(prefix) :]  # history left out when context is sent
    assert SYSTEM in resent[len(prefix) :]  # the system text is rendered again


def test_top_logprobs_bounds_and_entries(http):  # GE16, GE17
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "top_logprobs": 21})
    assert (r.status_code, r.json()) == (400, {"error": "top_logprobs must be between 0 and 20"})
    out = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": PROMPT, "raw": True, "stream": False,
              "logprobs": True, "top_logprobs": 3, "options": {"temperature": 0, "num_predict": 5}},
    ).json()  # fmt: skip
    entries = out["logprobs"]
    assert len(entries) == out["eval_count"]
    for e in entries:
        assert set(e) <= {"token", "logprob", "bytes", "top_logprobs"}
        assert e["logprob"] <= 0
        if e["token"]:
            assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        assert 1 <= len(e["top_logprobs"]) <= 3
        assert e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])  # greedy = top
        lps = [t["logprob"] for t in e["top_logprobs"]]
        assert lps == sorted(lps, reverse=True)


def test_logprobs_only_without_top(http):  # GE17
    out = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": "Hi", "stream": False, "logprobs": True,
              "options": {"num_predict": 3, "seed": 1}},
    ).json()  # fmt: skip
    assert all("top_logprobs" not in e for e in out["logprobs"])


def test_bad_format_and_json_schema(http):  # GE19, §9
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "format": "yaml"})
    assert (r.status_code, r.json()) == (
        500,
        {"error": 'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object'},
    )
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    out = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": "Is the sky blue? Answer in JSON.", "format": schema,
              "stream": False, "options": {"seed": 5, "num_predict": 30}},
    ).json()  # fmt: skip
    assert json.loads(out["response"])["answer"] in ("yes", "no")


def test_think_on_a_model_without_thinking(http):  # GE20
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "think": True})
    assert (r.status_code, r.json()) == (400, {"error": '"smollm2" does not support thinking'})
    ok = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": "x", "think": False, "stream": False,
              "options": {"num_predict": 1}},
    )  # fmt: skip
    assert ok.status_code == 200


def test_thinking_model_fills_thinking(http):  # K8
    out = http.post(
        "/api/generate",
        json={"model": "thinker", "prompt": "Why?", "stream": False,
              "options": {"num_predict": 6, "temperature": 0}},
    ).json()  # fmt: skip
    assert out["thinking"] and out["response"] == ""  # prefilled <think>, never closed


def test_images_on_a_text_only_model_are_refused(http):  # §4.6 images; issue 20
    r = http.post("/api/generate", json={"model": "fim", "prompt": "What?", "images": ["aGk="]})
    assert r.status_code == 400
    assert r.json()["error"].endswith("fim:latest does not support vision")
    r = http.post("/api/generate", json={"model": "fim", "prompt": "x", "images": ["%%%"]})
    assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 0"})


def test_sampling_trace_extension(http):
    out = http.post(
        "/api/generate",
        json={"model": "smollm2", "prompt": "Hi", "stream": False, "trace": True,
              "options": {"num_predict": 2, "seed": 9}},
    ).json()  # fmt: skip
    assert len(out["trace"]) == out["eval_count"]
    step = out["trace"][0]
    assert [s["name"] for s in step["stages"]][:2] == ["top_k", "top_p"]
    assert step["stages"][0]["size"] == 40 and len(step["draws"]) == 1
    assert 0 < step["prob"] <= 1


def test_prompt_too_long_without_truncation(http):  # §4.6 truncate/shift, §19
    long = "word " * 600
    base = {"model": "smollm2", "prompt": long, "raw": True, "options": {"num_ctx": 256}}
    r = http.post("/api/generate", json={**base, "truncate": False})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "the input length exceeds the context length"},
    )
    r = http.post("/api/generate", json={**base, "shift": False})
    assert r.status_code == 400 and r.json()["error"].startswith("the prompt is longer than")


def test_official_client_sync_and_async(url):  # acceptance: the client works unchanged
    with ollama.Client(host=url) as client:
        one = client.generate(model="smollm2", prompt="Hi", options={"num_predict": 4, "seed": 2})
        parts = list(
            client.generate(
                model="smollm2", prompt="Hi", options={"num_predict": 4, "seed": 2}, stream=True
            )
        )
    assert one.done and one.response == "".join(p.response for p in parts)

    async def run() -> str:
        client = ollama.AsyncClient(host=url)
        text = ""
        async for p in await client.generate(
            model="smollm2", prompt="Hi", options={"num_predict": 4, "seed": 2}, stream=True
        ):
            text += p.response
        await client._client.aclose()
        return text

    assert asyncio.run(run()) == one.response


def test_client_disconnect_stops_generation(http):  # disconnect -> generation ends
    body = {"model": "smollm2", "prompt": "Tell a long story.", "keep_alive": 0,
            "options": {"num_predict": 400, "temperature": 0}}  # fmt: skip
    with http.stream("POST", "/api/generate", json=body) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)

    def loaded() -> bool:
        return "smollm2:latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]

    deadline = time.monotonic() + 10  # 400 tokens would take far longer
    while loaded() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not loaded()  # the request was released, and keep_alive 0 unloaded the model


def test_option_layers_and_stop_replacement(http):  # O3, O4, O6, O8
    story = "Once upon a time, in a small village by the sea,"
    base = {"model": "smollm2", "prompt": story, "raw": True, "stream": False}
    text = http.post("/api/generate", json={**base, "options": GREEDY}).json()["response"]
    first, later = text.split()[1], text.split()[4]
    assert text.index(first) < text.index(later)
    r = http.post(
        "/api/create",
        json={"model": "stopper", "from": "smollm2", "stream": False,
              "parameters": {"stop": [first], "top_k": 5, **GREEDY}},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    base = {**base, "model": "stopper"}
    by_model = http.post("/api/generate", json=base).json()
    assert by_model["response"] == text[: text.index(first)]
    by_request = http.post("/api/generate", json={**base, "options": {"stop": [later]}}).json()
    assert by_request["response"] == text[: text.index(later)]  # the model's list is replaced

    def top_k_kept(options: dict) -> int:
        body = {**base, "prompt": "Hi", "trace": True, "options": {"num_predict": 1, **options}}
        out = http.post("/api/generate", json=body).json()
        (stage,) = [s for s in out["trace"][0]["stages"] if s["name"] == "top_k"]
        return stage["size"]

    assert top_k_kept({}) == 5  # model parameter over the default 40
    assert top_k_kept({"top_k": None}) == 5  # null keeps the lower layer
    assert top_k_kept({"top_k": 3.9}) == 3  # numbers are truncated toward zero


def test_client_disconnect_stops_a_non_streamed_generation(url, http):
    body = {"model": "smollm2", "prompt": "Tell a long story.", "keep_alive": 0,
            "stream": False, "options": {"num_predict": 400, "temperature": 0}}  # fmt: skip
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/generate", json=body, timeout=2.0)

    def loaded() -> bool:
        return "smollm2:latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]

    deadline = time.monotonic() + 10
    while loaded() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not loaded()


def test_concurrent_smollm2_streams_equal_their_solo_runs(http, url):  # acceptance, real model
    def body(i: int) -> dict[str, Any]:
        return {"model": "smollm2", "prompt": f"The number {i} is", "raw": True,
                "options": {"seed": i, "num_predict": 6}}  # fmt: skip

    solo = [http.post("/api/generate", json={**body(i), "stream": False}).json() for i in range(4)]

    async def one(client: httpx.AsyncClient, i: int) -> str:
        async with client.stream("POST", "/api/generate", json=body(i)) as r:
            return "".join([json.loads(line)["response"] async for line in r.aiter_lines()])

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(4)))

    assert asyncio.run(together()) == [s["response"] for s in solo]
