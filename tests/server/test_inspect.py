"""The sampling inspector (server/inspect/, GET /inspect/) in a real headless Chromium.

Debian's `chromium` driven by Playwright's Python package (never its own browser download)
against a live server with SmolLM2. What the page draws is read back from its DOM and compared
with the `trace` that /api/generate or /api/chat returns for the very request the page sent.
Screenshots land in artifacts/inspector/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from server.app import INSPECTOR_DIR, create_app
from tests.server.live import api_store

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "inspector"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="Playwright's Python package is not installed (pip install playwright)",
    ),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Starlette:
    return create_app(api_store(tmp_path_factory.mktemp("inspect"), smollm2_path))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, url: str) -> Iterator[Any]:
    """The inspector, loaded with every request that leaves the server's origin refused."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    foreign: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/inspect")
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert foreign == [] and errors == []


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def set_options(page: Any, set_: str, **options: str) -> None:
    for name, value in options.items():
        field = f".opts[data-set={set_}] [name={name}]"
        if name == "format":
            page.select_option(field, value)
        else:
            page.fill(field, value)


def generate(page: Any, button: str = "#generate") -> str:
    page.click(button)
    page.wait_for_function(
        "() => !document.querySelector('#generate').disabled"
        " && /tokens|error/.test(document.querySelector('#status').textContent)",
        timeout=600_000,
    )
    return str(page.text_content("#status"))


def sent_request(page: Any, set_: str) -> tuple[str, dict[str, Any]]:
    pre = page.locator(f".run[data-set={set_}] .request pre")
    return str(pre.get_attribute("data-path")), json.loads(str(pre.text_content()))


def warm(http: httpx.Client, path: str, **body: Any) -> None:
    """Run this prompt once so the page's request finds it in the prompt cache, as the API
    request that checks it will. (Found with this test: the last prompt token's logits differ
    between a cold prefill and a cached-prefix re-evaluation, ~0.016 on SmolLM2, so a cold
    first run and a warm re-run of one seeded request can choose different tokens.)"""
    r = http.post(path, json={"model": "smollm2", "stream": False, **body,
                              "options": {"num_predict": 1}})  # fmt: skip
    assert r.status_code == 200, r.text


def api_answer(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(path, json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def shown_stages(page: Any) -> list[dict[str, Any]]:
    """The stage cards of the inspector as trace_json's stage shape (survivor rows only)."""
    return list(
        page.eval_on_selector_all(
            "#inspector .stage:not(.dist)",
            """cards => cards.map(card => ({
                name: card.dataset.name,
                size: Number(card.dataset.size),
                top: [...card.querySelectorAll('.cand[data-kept="1"]')].map(row => ({
                    id: Number(row.dataset.id),
                    piece: row.querySelector('.piece').textContent,
                    logit: Number(row.dataset.logit),
                    prob: Number(row.dataset.prob)})),
            }))""",
        )
    )


def shown_piece(piece: str) -> str:
    return "∅" if piece == "" else piece.replace("\n", "↵").replace("\t", "⇥")


def as_shown(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**s, "top": [{**c, "piece": shown_piece(c["piece"])} for c in s["top"]]} for s in stages
    ]


def shown_dist(page: Any) -> dict[str, float]:
    card = page.locator("#inspector .stage.dist")
    return {k: float(str(card.get_attribute(f"data-{k}"))) for k in ("u", "start", "end")}


def strip_ids(page: Any, set_: str) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all(
        f".run[data-set={set_}] .tok", "toks => toks.map(t => t.dataset.id)")]  # fmt: skip


def check_token(page: Any, step: dict[str, Any], logprob: dict[str, Any]) -> None:
    """The inspector shows exactly this trace step and logprob entry."""
    assert shown_stages(page) == as_shown(step["stages"])
    assert shown_dist(page) == {
        "u": step["draws"][-1],
        "start": step["dist"]["start"],
        "end": step["dist"]["end"],
    }
    assert step["dist"]["start"] < step["draws"][-1] <= step["dist"]["end"]
    facts = page.text_content("#inspector .facts")
    assert f"{step['dist']['rank']} of {step['dist']['size']} (by logit)" in facts
    assert f"{logprob['logprob']:.4f}" in facts
    chosen = page.eval_on_selector_all(
        "#inspector .cand.chosen", "rows => rows.map(r => Number(r.dataset.id))"
    )
    assert set(chosen) <= {step["token"]}
    rejected = page.eval_on_selector_all(
        "#inspector .cand.rejected", "rows => rows.map(r => Number(r.dataset.id))"
    )
    assert set(rejected) <= ({step["rejected"]["id"]} if step["resampled"] else set())


def test_page_and_assets_are_local_files() -> None:
    text = "".join(p.read_text() for p in sorted(INSPECTOR_DIR.iterdir()))
    assert {p.name for p in INSPECTOR_DIR.iterdir()} == {"index.html", "inspect.css", "inspect.js"}
    assert not re.search(r"https?://|//[a-z]|@import|url\(", text)  # no CDN, font or remote asset


def test_served_at_inspect(http: httpx.Client) -> None:
    r = http.get("/inspect", follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/inspect/"
    assert r.headers["content-type"].startswith("text/html")
    assert "refllama sampling inspector" in r.text
    assert http.get("/inspect/inspect.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/inspect/nope.js").status_code == 404


def test_clicked_token_shows_the_api_trace(page: Any, http: httpx.Client) -> None:
    assert "smollm2:latest" in page.eval_on_selector_all(
        "#model option", "opts => opts.map(o => o.value)"
    )
    page.select_option("#model", "smollm2:latest")
    page.fill("#prompt", "The capital of France is")
    warm(http, "/api/generate", prompt="The capital of France is")
    set_options(page, "A", seed="42", num_predict="8", top_k="20", top_p="0.9", min_p="0.05",
                typical_p="0.95", repeat_penalty="1.1", temperature="0.9")  # fmt: skip
    assert "A: 8 tokens" in generate(page)
    path, body = sent_request(page, "A")
    assert path == "/api/generate" and body["trace"] and body["options"]["top_k"] == 20
    answer = api_answer(http, path, body)
    assert strip_ids(page, "A") == [s["token"] for s in answer["trace"]]

    page.click('.run[data-set=A] .tok[data-index="2"]')
    names = [s["name"] for s in answer["trace"][2]["stages"]]
    assert names == ["penalties", "top_k", "typical_p", "top_p", "min_p", "temperature"]
    check_token(page, answer["trace"][2], answer["logprobs"][2])
    shot(page, "01-clicked-token.png")

    page.focus(".run[data-set=A] .tokens")  # keyboard: the arrows walk the tokens
    page.keyboard.press("ArrowRight")
    check_token(page, answer["trace"][3], answer["logprobs"][3])
    page.keyboard.press("End")
    check_token(page, answer["trace"][7], answer["logprobs"][7])
    page.keyboard.press("Home")
    check_token(page, answer["trace"][0], answer["logprobs"][0])
    assert page.get_attribute('.run[data-set=A] .tok[data-index="0"]', "aria-selected") == "true"


def test_json_format_shows_the_grammar_resample(page: Any, http: httpx.Client) -> None:
    page.select_option("#model", "smollm2:latest")
    page.check("input[name=mode][value=chat]")
    page.fill("#user", "Name three colours.")
    warm(http, "/api/chat", messages=[{"role": "user", "content": "Name three colours."}])
    set_options(page, "A", seed="7", num_predict="6", format="json")
    assert "A: 6 tokens" in generate(page)
    path, body = sent_request(page, "A")
    assert path == "/api/chat" and body["format"] == "json"
    answer = api_answer(http, path, body)
    resampled = [i for i, s in enumerate(answer["trace"]) if s["resampled"]]
    assert resampled, "the grammar never rejected a pick; choose a prompt where it does"
    i = resampled[0]
    step = answer["trace"][i]
    page.click(f'.run[data-set=A] .tok[data-index="{i}"]')
    check_token(page, step, answer["logprobs"][i])
    note = page.text_content("#inspector .grammar.rejected")
    assert shown_piece(step["rejected"]["piece"]) in note and str(step["rejected"]["id"]) in note
    groups = page.eval_on_selector_all(
        "#inspector .stage:not(.dist)",
        "cards => cards.map(c => c.querySelector('.group')?.textContent ?? c.dataset.name)",
    )
    g = [s["name"] for s in step["stages"]].index("grammar")
    assert groups == ["first run"] * g + ["grammar"] + ["resample"] * (len(groups) - g - 1)
    shot(page, "02-grammar-resample.png")


def test_errors_are_shown_and_the_page_keeps_working(page: Any, http: httpx.Client) -> None:
    page.select_option("#model", "smollm2:latest")
    set_options(page, "A", min_p="2")
    assert "min_p" in generate(page)  # the server's 400 message, in the status line
    assert page.get_attribute("#status", "class") == "bad"
    answer = http.post("/api/generate", json={"model": "smollm2", "options": {"min_p": 2}})
    assert answer.status_code == 400 and answer.json()["error"] in page.text_content("#status")
    set_options(page, "A", min_p="", format="schema")
    page.fill(".opts[data-set=A] [name=schema]", "{not json")
    page.click("#generate")
    assert "options A: the schema is not JSON" in page.text_content("#status")
    set_options(page, "A", format="", num_predict="2")
    assert "A: 2 tokens" in generate(page)


def test_compare_highlights_divergence_and_rerun_is_identical(
    page: Any, http: httpx.Client
) -> None:
    page.select_option("#model", "smollm2:latest")
    page.fill("#prompt", "Once upon a time")
    warm(http, "/api/generate", prompt="Once upon a time")
    page.check("#compare")
    set_options(page, "A", seed="3", num_predict="10")
    set_options(page, "B", seed="3", num_predict="10", temperature="1.5")
    status = generate(page)
    ids = {}
    for set_ in ("A", "B"):
        path, body = sent_request(page, set_)
        ids[set_] = [s["token"] for s in api_answer(http, path, body)["trace"]]
        assert strip_ids(page, set_) == ids[set_]
    differ = [i for i, (a, b) in enumerate(zip(ids["A"], ids["B"], strict=True)) if a != b]
    assert differ, "temperature 1.5 chose the same tokens; pick options that diverge"
    assert f"first diverge at token {differ[0] + 1}" in status
    for set_ in ("A", "B"):
        marked = page.eval_on_selector_all(
            f".run[data-set={set_}] .tok.diverge", "toks => toks.map(t => Number(t.dataset.index))"
        )
        assert marked == differ
    page.click(f'.run[data-set=B] .tok[data-index="{differ[0]}"]')
    shot(page, "03-compare.png")

    status = generate(page, "#rerun")
    assert status.count("identical to the previous run (seed 3)") == 2
    assert strip_ids(page, "A") == ids["A"] and strip_ids(page, "B") == ids["B"]
    shot(page, "04-rerun-identical.png")
