"""engine/models/vision.py and the decoder's image rows against llama.cpp's mtmd.

The tiny Gemma 3 text model and SigLIP mmproj come from tests/tiny_vision.py. llama.cpp encodes
the same decoded pixels (Pillow decodes for both: stb_image has no WebP) with flash attention off.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.models.decoder import load
from engine.models.vision import InvalidImage, decode_image, load_projector, resize
from tests.conftest import needs_oracle
from tests.tiny_vision import (
    D_TEXT,
    IMAGES,
    LOGITS_IMAGE,
    LOGITS_PROMPT,
    N_IMAGE_TOKENS,
    MtmdOracle,
    encoded_image,
    write_tiny_mmproj,
    write_tiny_text,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("vision")
    return write_tiny_text(d / "text.gguf"), write_tiny_mmproj(d / "mmproj.gguf")


@pytest.fixture(scope="module")
def oracle(tiny: tuple[Path, Path]) -> MtmdOracle:
    return MtmdOracle(*tiny)


@pytest.mark.oracle
@needs_oracle
@pytest.mark.parametrize(("fmt", "size", "mode"), IMAGES)
def test_image_embeddings_match_mtmd(
    tiny: tuple[Path, Path], oracle: MtmdOracle, fmt: str, size: tuple[int, int], mode: str
) -> None:
    pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
    assert pixels.shape == (size[1], size[0], 3)
    chunks = oracle.chunks("<__media__>", pixels)
    image = next(c for kind, c in chunks if kind == "image")
    ref = oracle.image_embeddings(image)  # (16, 64)
    ours = load_projector(tiny[1]).encode_pixels(pixels)
    assert ours.shape == ref.shape == (N_IMAGE_TOKENS, D_TEXT)
    scale = np.linalg.norm(ref, axis=1).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale


@pytest.mark.oracle
@needs_oracle
@pytest.mark.parametrize(("fmt", "size", "mode"), IMAGES[1:3])
def test_f16_projector_embeddings_match_mtmd(
    tmp_path: Path, fmt: str, size: tuple[int, int], mode: str
) -> None:
    """F16 weights, as real mmproj files: ggml's F16 activation roundings are ours too."""
    text, mmproj = (
        write_tiny_text(tmp_path / "t.gguf"),
        write_tiny_mmproj(tmp_path / "m.gguf", f16=True),
    )
    oracle = MtmdOracle(text, mmproj)
    pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
    image = next(c for kind, c in oracle.chunks("<__media__>", pixels) if kind == "image")
    ref = oracle.image_embeddings(image)
    ours = load_projector(mmproj).encode_pixels(pixels)
    assert np.abs(ours - ref).max() <= 1e-4 * np.linalg.norm(ref, axis=1).max()


@pytest.mark.oracle
@needs_oracle
def test_prompt_logits_after_image_match_mtmd(tiny: tuple[Path, Path], oracle: MtmdOracle) -> None:
    fmt, size, mode = LOGITS_IMAGE
    pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
    chunks = oracle.chunks(LOGITS_PROMPT, pixels)
    assert [k for k, _ in chunks] == ["text", "image", "text"]
    ref = oracle.prompt_logits(chunks)[0]  # (T, V) after the image
    model = load(tiny[0])
    enc = load_projector(tiny[1])
    tok = model.tokenizer
    before, after = chunks[0][1], chunks[2][1]
    # the marker tokens mtmd places around the image are ours too
    assert before == [tok.bos_id, *tok.encode("<start_of_image>", add_special=False)]
    assert after[0] == tok.encode("<end_of_image>", add_special=False)[0]
    cache = model.new_cache(128)
    model.eval(before, cache)
    emb = enc.encode_pixels(pixels)
    labels = [model.n_vocab + i for i in range(len(emb))]
    model.eval_embeddings(emb, labels, cache, bidirectional=enc.bidirectional)
    ours = model.eval(after, cache)
    assert ours.shape == ref.shape
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    # the image rows really are bidirectional: a causal decode changes the logits
    causal = model.new_cache(128)
    model.eval(before, causal)
    model.eval_embeddings(emb, labels, causal, bidirectional=False)
    assert np.abs(model.eval(after, causal) - ours).max() > 1e-3


GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "vision_tiny.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["images"], ids=lambda c: f"{c['format']}-{c['size']}")
def test_image_embeddings_match_golden(tiny: tuple[Path, Path], case: dict) -> None:
    """mtmd's embeddings recorded by tests/golden/make_vision_golden.py (oracle build inside)."""
    size = tuple(case["size"])
    pixels = decode_image(encoded_image(case["format"], size, seed=sum(size), mode=case["mode"]))
    ref = np.asarray(case["embeddings"], np.float32)
    ours = load_projector(tiny[1]).encode_pixels(pixels)
    assert np.abs(ours - ref).max() <= 1e-4 * np.linalg.norm(ref, axis=1).max()


def test_prompt_logits_after_image_match_golden(tiny: tuple[Path, Path]) -> None:
    rec = GOLDEN["logits"]
    before, _, after = rec["chunks"]
    model, enc = load(tiny[0]), load_projector(tiny[1])
    fmt, size, mode = LOGITS_IMAGE
    pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
    cache = model.new_cache(128)
    model.eval(before, cache)
    emb = enc.encode_pixels(pixels)
    labels = [model.n_vocab + i for i in range(len(emb))]
    model.eval_embeddings(emb, labels, cache, bidirectional=True)
    assert model.eval(after, cache).argmax(-1).tolist() == rec["argmax_after_image"]


def test_resize_matches_pillow() -> None:
    """mtmd-image.cpp's resampler is Pillow's: ours gives Pillow's bytes."""
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    for w, h in ((32, 23), (80, 91), (53, 10)):
        for bilinear, mode in (
            (True, Image.Resampling.BILINEAR),
            (False, Image.Resampling.BICUBIC),
        ):
            want = np.asarray(Image.fromarray(src).resize((w, h), mode))
            np.testing.assert_array_equal(resize(src, w, h, bilinear), want)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    px = decode_image(buf.getvalue())
    assert px.shape == (8, 8, 3) and (px[..., 0] > 200).all() and (px[..., 2] < 50).all()


def test_bad_images_raise_invalid_image() -> None:
    png = encoded_image("PNG", (64, 64), seed=1)
    with pytest.raises(InvalidImage, match="unknown format"):
        decode_image(b"definitely not an image")
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        decode_image(png[: len(png) // 2])
    # a PNG header declaring 20000 x 20000: refused before decoding any pixel
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    with pytest.raises(InvalidImage, match="too large"):
        decode_image(huge.getvalue())
    wide = io.BytesIO()
    Image.new("1", (10000, 5000)).save(wide, format="PNG")  # under Pillow's guard, over ours
    with pytest.raises(InvalidImage, match="10000x5000"):
        decode_image(wide.getvalue())


def test_prompt_split_inside_an_image_is_evaluated_whole(tiny: tuple[Path, Path]) -> None:
    """engine/models/multimodal.py: a prefill resumed in the middle of an image's rows (a
    cancelled prefill, or a cached prefix ending there) gives the logits of one whole pass."""
    from engine.models.multimodal import VisionLanguageModel

    vlm = VisionLanguageModel(load(tiny[0]), load_projector(tiny[1]))
    image = encoded_image("PNG", (40, 30), seed=70)
    ids = vlm.prompt_ids("[img-0]Describe it.", [image])
    tok = vlm.tokenizer
    begin = tok.encode("<start_of_image>", add_special=False)
    assert ids[: len(begin) + 1] == [tok.bos_id, *begin]
    assert ids.count(vlm.n_vocab) == 1 and len(ids) > N_IMAGE_TOKENS + 3
    whole = vlm.eval(ids, vlm.new_cache(128), last_only=True)
    cache = vlm.new_cache(128)
    vlm.eval(ids[:7], cache)  # BOS, <start_of_image>, the first 5 image rows
    split = vlm.eval(ids[7:], cache, last_only=True)
    np.testing.assert_array_equal(split, whole)
    assert vlm.image_labels(image) == ids[2 : 2 + N_IMAGE_TOKENS]  # same bytes, same labels
