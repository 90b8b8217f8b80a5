"""engine/models/vision.py and the decoder's image rows against llama.cpp's mtmd.

The tiny Gemma 3 text model and SigLIP mmproj come from tests/tiny_vision.py. llama.cpp encodes
the same decoded pixels (Pillow decodes for both: stb_image has no WebP) with flash attention off.
"""

from __future__ import annotations

import ctypes
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.models.decoder import load
from engine.models.vision import InvalidImage, decode_image, load_projector, resize
from tests.conftest import needs_oracle
from tests.tiny_vision import D_TEXT, N_IMAGE_TOKENS, write_tiny_mmproj, write_tiny_text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("vision")
    return write_tiny_text(d / "text.gguf"), write_tiny_mmproj(d / "mmproj.gguf")


def _encoded(fmt: str, size: tuple[int, int], seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth gradients plus noise: resampling filters see real structure
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    px = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(px)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(rng.integers(0, 256, (h, w)).astype(np.uint8)))
    if fmt == "GIF":
        im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = [  # 5 sizes and formats: exact size, up/down scaling, extreme aspect ratios, alpha
    ("PNG", (32, 32), "RGB"),
    ("JPEG", (50, 40), "RGB"),
    ("WEBP", (91, 17), "RGB"),
    ("GIF", (200, 300), "RGB"),
    ("PNG", (64, 48), "RGBA"),
]


class _Mtmd:
    """llama.cpp's text model plus mtmd context over the tiny files."""

    def __init__(self, text: Path, mmproj: Path) -> None:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self.llama_cpp, self.mtmd = llama_cpp, mtmd
        self.llm = llama_cpp.Llama(
            str(text), n_ctx=128, n_batch=128, n_ubatch=128, logits_all=True, verbose=False
        )
        p = mtmd.mtmd_context_params_default()
        p.use_gpu, p.print_timings, p.n_threads, p.warmup = False, False, 1, False
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, p)
        assert self.ctx is not None

    def chunks(self, text: str, pixels: np.ndarray) -> list[tuple[str, object]]:
        m = self.mtmd
        h, w = pixels.shape[:2]
        buf = (ctypes.c_uint8 * pixels.size).from_buffer_copy(
            np.ascontiguousarray(pixels).tobytes()
        )
        self._bitmap = m.mtmd_bitmap_init(w, h, buf)
        self._chunks = m.mtmd_input_chunks_init()
        t = m.mtmd_input_text()
        self._text = text.encode()
        t.text, t.text_len, t.add_special, t.parse_special = self._text, len(self._text), True, True
        arr = (m.mtmd_bitmap_p_ctypes * 1)(self._bitmap)
        assert m.mtmd_tokenize(self.ctx, self._chunks, ctypes.byref(t), arr, 1) == 0
        out: list[tuple[str, object]] = []
        for i in range(m.mtmd_input_chunks_size(self._chunks)):
            c = m.mtmd_input_chunks_get(self._chunks, i)
            if m.mtmd_input_chunk_get_type(c) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                out.append(("text", [ptr[j] for j in range(n.value)]))
            else:
                out.append(("image", c))
        return out

    def image_embeddings(self, chunk: object) -> np.ndarray:
        m = self.mtmd
        n = m.mtmd_input_chunk_get_n_tokens(chunk)
        assert m.mtmd_encode_chunk(self.ctx, chunk) == 0
        out = m.mtmd_get_output_embd(self.ctx)
        return np.ctypeslib.as_array(out, shape=(n * D_TEXT,)).reshape(n, D_TEXT).copy()

    def prompt_logits(self, chunks: list[tuple[str, object]]) -> list[np.ndarray]:
        """Evaluate every chunk; logits (T, V) of each text chunk after the image."""
        llm, m = self.llm, self.mtmd
        llm.reset()
        llm._ctx.kv_cache_clear()
        after, seen_image = [], False
        for kind, value in chunks:
            if kind == "text":
                start = llm.n_tokens
                llm.eval(value)
                if seen_image:
                    after.append(np.array(llm.scores[start : llm.n_tokens]))
            else:
                seen_image = True
                new_past = self.llama_cpp.llama_pos(0)
                rc = m.mtmd_helper_eval_chunk_single(
                    self.ctx, llm._ctx.ctx, value, llm.n_tokens, 0, 128, False,
                    ctypes.byref(new_past),
                )  # fmt: skip
                assert rc == 0
                llm.n_tokens = new_past.value
        return after


@pytest.fixture(scope="module")
def oracle(tiny: tuple[Path, Path]) -> _Mtmd:
    return _Mtmd(*tiny)


@pytest.mark.oracle
@needs_oracle
@pytest.mark.parametrize(("fmt", "size", "mode"), IMAGES)
def test_image_embeddings_match_mtmd(
    tiny: tuple[Path, Path], oracle: _Mtmd, fmt: str, size: tuple[int, int], mode: str
) -> None:
    pixels = decode_image(_encoded(fmt, size, seed=sum(size), mode=mode))
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
def test_prompt_logits_after_image_match_mtmd(tiny: tuple[Path, Path], oracle: _Mtmd) -> None:
    pixels = decode_image(_encoded("PNG", (45, 30), seed=7))
    text = "<__media__>What is in the picture? The quick brown fox."
    chunks = oracle.chunks(text, pixels)
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
    png = _encoded("PNG", (64, 64), seed=1)
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
