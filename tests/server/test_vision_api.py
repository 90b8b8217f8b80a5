"""Images through the live server and the official client: tiny Gemma 3 and LLaVA-style text
models created with their SigLIP / CLIP mmproj (`files` with both: a projector layer),
generate(images=[path]) and chat with images, a text-only model's error, and bad images as 400s
(issue 20)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest
from PIL import Image

from server.app import create_app
from server.manifest import MEDIA_PROJECTOR
from server.store import Store
from tests.server.live import live_server
from tests.tiny_vision import N_IMAGE_TOKENS, VARIANTS, write_tiny_mmproj, write_tiny_text

GREEDY = {"temperature": 0, "num_predict": 6, "seed": 1}
# model name -> (tests/tiny_vision.py variant, projector type)
VISION_MODELS = {"tinyvision": ("gemma3", "gemma3"), "tinyllava": ("llava", "mlp")}


def _image_rows(model: str) -> int:
    """Prompt tokens one image adds: its rows plus mtmd's markers around them."""
    v = VARIANTS[VISION_MODELS[model][0]]
    return v.n_image_tokens + v.markers


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("vision") / "models")


@pytest.fixture(scope="module")
def url(store: Store) -> Iterator[str]:
    with live_server(create_app(store)) as base:
        yield base


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def client(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ollama.Client]:
    d = tmp_path_factory.mktemp("files")
    with ollama.Client(host=url, timeout=300) as c:
        for model, (variant, _) in VISION_MODELS.items():
            v = VARIANTS[variant]
            text, mmproj = v.write_text(d / f"{model}.gguf"), v.write_mmproj(d / f"{model}-mm.gguf")
            files = {"text.gguf": c.create_blob(text), "mmproj.gguf": c.create_blob(mmproj)}
            assert c.create(model, files=files).status == "success"
        gemma_text = {"text.gguf": c.create_blob(d / "tinyvision.gguf")}
        assert c.create("tinytext", files=gemma_text).status == "success"
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("images")
    return _png(d / "a.png", 1), _png(d / "b.png", 2, (64, 20))


@pytest.mark.parametrize("model", VISION_MODELS)
def test_create_stores_a_projector_layer_and_show_says_vision(
    client: ollama.Client, store: Store, url: str, model: str
) -> None:
    record = store.resolve(model)
    assert [x.media_type for x in record.manifest.layers].count(MEDIA_PROJECTOR) == 1
    assert len(record.projectors) == 1
    shown = client.show(model)
    assert "vision" in (shown.capabilities or [])
    # the official client's ShowResponse has no projector_info field: read the JSON
    info = httpx.post(f"{url}/api/show", json={"model": model}).json()["projector_info"]
    assert info["general.architecture"] == "clip"
    assert info["clip.projector_type"] == VISION_MODELS[model][1]
    assert "vision" not in (client.show("tinytext").capabilities or [])


@pytest.mark.parametrize("model", VISION_MODELS)
def test_generate_with_an_image_path(
    client: ollama.Client, images: tuple[Path, Path], model: str
) -> None:
    a, b = images
    plain = client.generate(model, "What is this?", options=GREEDY)
    with_a = client.generate(model, "What is this?", images=[a], options=GREEDY)
    again = client.generate(model, "What is this?", images=[a], options=GREEDY)
    with_b = client.generate(model, "What is this?", images=[b], options=GREEDY)
    # each image adds its rows (Gemma 3: between <start_of_image> and <end_of_image>)
    assert with_a.prompt_eval_count == plain.prompt_eval_count + _image_rows(model)
    assert with_a.response == again.response  # deterministic, and the cached image is reused
    assert with_a.eval_count == GREEDY["num_predict"]
    assert with_b.prompt_eval_count == with_a.prompt_eval_count


@pytest.mark.parametrize("model", VISION_MODELS)
def test_chat_with_images(client: ollama.Client, images: tuple[Path, Path], model: str) -> None:
    a, b = images
    text = [{"role": "user", "content": "Compare these."}]
    plain = client.chat(model, messages=text, options=GREEDY)
    msgs = [{"role": "user", "content": "Compare these.", "images": [a, b]}]
    both = client.chat(model, messages=msgs, options=GREEDY)
    assert both.prompt_eval_count == plain.prompt_eval_count + 2 * _image_rows(model)
    assert both.message.role == "assistant"


def test_text_only_model_refuses_images(client: ollama.Client, images: tuple[Path, Path]) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("tinytext", "What is this?", images=[images[0]])
    assert e.value.status_code == 400
    assert "does not support vision" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("tinytext", messages=[{"role": "user", "content": "hi", "images": [images[0]]}])
    assert e.value.status_code == 400


def _bad_images() -> dict[str, bytes]:
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, format="PNG")
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    return {
        "not an image": b"hello, I am text",
        "truncated PNG": good.getvalue()[:100],
        "20000x20000": huge.getvalue(),
    }


@pytest.mark.parametrize("kind", ["not an image", "truncated PNG", "20000x20000"])
def test_bad_images_are_400_and_the_server_keeps_serving(
    client: ollama.Client, url: str, kind: str
) -> None:
    import base64

    data = base64.b64encode(_bad_images()[kind]).decode()
    r = httpx.post(
        f"{url}/api/generate",
        json={"model": "tinyvision", "prompt": "hi", "images": [data], "stream": False},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("invalid image input: ")
    assert client.generate("tinyvision", "hi", options=GREEDY).done


def test_animated_gif_uses_its_first_frame(client: ollama.Client, tmp_path: Path) -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    first = tmp_path / "first.png"
    frames[0].save(first)
    from_gif = client.generate("tinyvision", "Colour?", images=[gif], options=GREEDY)
    from_png = client.generate("tinyvision", "Colour?", images=[first], options=GREEDY)
    assert from_gif.response == from_png.response


def test_openai_image_url_data_url(
    client: ollama.Client, url: str, images: tuple[Path, Path]
) -> None:
    import base64

    import openai

    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    a = images[0]
    data = base64.b64encode(a.read_bytes()).decode()
    text = {"type": "text", "text": "What is this?"}
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
    kwargs = {"model": "tinyvision", "max_tokens": 4, "temperature": 0, "seed": 1}
    both = oa.chat.completions.create(
        messages=[{"role": "user", "content": [text, image]}], **kwargs
    )
    assert both.usage is not None
    # Each part becomes its own user message; an image counts 768 tokens in history truncation
    # (spec 6.4), so only the image's message fits the tiny model's context.
    alone = client.chat(
        "tinyvision", messages=[{"role": "user", "content": "", "images": [a]}], options=GREEDY
    )
    empty = client.chat("tinyvision", messages=[{"role": "user", "content": ""}], options=GREEDY)
    assert both.usage.prompt_tokens == alone.prompt_eval_count
    assert alone.prompt_eval_count == empty.prompt_eval_count + N_IMAGE_TOKENS + 2


def test_modelfile_with_two_from_lines(client: ollama.Client, url: str, tmp_path: Path) -> None:
    """The CLI's Modelfile mapping (server/modelfile.py): FROM text.gguf + FROM mmproj.gguf give
    one `files` map, and the created model has the projector layer."""
    from server.modelfile import create_request, parse

    write_tiny_text(tmp_path / "text.gguf")
    write_tiny_mmproj(tmp_path / "mmproj.gguf")
    plan = create_request(parse("FROM ./text.gguf\nFROM ./mmproj.gguf\n"), tmp_path)
    assert sorted(plan.request["files"]) == ["mmproj.gguf", "text.gguf"]
    for digest, path in plan.uploads.items():
        assert client.create_blob(path) == digest
    r = httpx.post(f"{url}/api/create", json={"model": "fromtwo", **plan.request, "stream": False})
    assert r.status_code == 200, r.text
    assert "vision" in (client.show("fromtwo").capabilities or [])
