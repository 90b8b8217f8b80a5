"""`refllama inspect` (server/cli/inspect.py): the table, errors, and the HTML page in Chromium.

The page is opened from disk in Debian's headless `chromium` through Playwright's Python package
(never its own browser download), every network request refused; what it draws is read back from
the DOM and compared with the inspection the CLI ran. Screenshots land in artifacts/inspect/.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engine
from server.cli import main as cli
from server.store import Store
from tests.tiny_model import write_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "inspect"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("cli_inspect") / "tiny.gguf", "llama")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_table_has_a_row_per_layer(tiny_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", str(tiny_path), PROMPT, "--top", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    model = engine.load(tiny_path)
    ids = model.tokenize(PROMPT)
    assert lines[0].startswith(f"position {len(ids) - 1}: ")
    assert [line.split()[0] for line in lines[2:]] == ["emb", "0", "1"]
    # the last layer's lens is the model's own next-token distribution
    logits = model.eval(ids, model.new_cache(len(ids)))[-1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-logits, kind="stable")[:2]
    assert lines[-1].endswith("  ".join(f"{model.detokenize([int(i)])!r} {p[i]:.3f}" for i in top))


def test_store_name_and_errors(
    tmp_path: Path,
    tiny_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Store(tmp_path / "models").create_from_gguf("tiny", tiny_path)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    code, out, _ = run(["inspect", "tiny", PROMPT], capsys)
    assert code == 0 and out.splitlines()[-1].split()[0] == "1"
    code, _, err = run(["inspect", "nothere", PROMPT], capsys)
    assert (code, err) == (1, "Error: model 'nothere' not found\n")
    code, _, err = run(["inspect", "tiny", PROMPT, "--html", "x.html", "--heads", "0-1"], capsys)
    assert code == 1 and "--heads: expected" in err
    code, _, err = run(["inspect", "tiny", PROMPT, "--html", "x.html", "--heads", "5:0"], capsys)
    assert (code, err) == (1, "Error: head (5, 0) does not exist: 2 layers of 4 heads\n")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None,
    reason="Playwright's Python package is not installed (pip install playwright)",
)
def test_html_page_in_chromium(
    tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from playwright.sync_api import sync_playwright

    prompt = "The capital of France is"
    page_path = tmp_path / "inspect.html"
    code, out, _ = run(
        ["inspect", str(smollm2_path), prompt, "--heads", "0:0,29:8", "--html", str(page_path)],
        capsys,
    )
    assert code == 0
    # the table's last row, after the layer and three norms: "' Paris' 0.752  ..."
    last_row_top = out.splitlines()[-1][37:].split("  ")[0].rsplit(" ", 1)[0]
    model = engine.load(smollm2_path, vocab_only=True)
    T = len(model.tokenize(prompt))
    foreign: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page: Any = browser.new_page(viewport={"width": 1440, "height": 900})

        def only_file(route: Any) -> None:
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                foreign.append(route.request.url)
                route.abort()

        page.route("**/*", only_file)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        cells = page.locator("#lens td.cell")
        assert cells.count() == 30 * T
        assert page.locator("#lens th.input").count() == T
        top_cell = page.locator(f'#lens td.cell[data-layer="29"][data-pos="{T - 1}"]')
        assert repr(str(top_cell.text_content()).replace("\u2423", " ")) == last_row_top
        assert top_cell.bounding_box()["width"] > 0
        heads = page.locator("#attention figure.head")
        assert heads.count() == 2
        assert page.locator('figure.head[data-layer="29"][data-head="8"] rect').count() == 1 + T * T
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "inspect_smollm2.png"), full_page=True)
        browser.close()
    assert foreign == [] and errors == []
