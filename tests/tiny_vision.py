"""Tiny seeded vision models, each a text model of tests/tiny_model.py plus an mmproj GGUF written
in llama.cpp's tensor layout (tools/mtmd/clip-impl.h names). Float32 weights, so llama.cpp
computes them in float32 and is a tight oracle.

- Gemma 3: the gemma3 text variant (plus `<start_of_image>` and `<end_of_image>` control tokens)
  and a SigLIP mmproj (projector type `gemma3`): 32x32 images, 4x4 patches (an 8x8 grid), 2 ViT
  blocks of width 32 (2 heads, FFN 48), 2x2 average pooling (clip.vision.projector.scale_factor)
  -> 16 image tokens of width 64.
- LLaVA 1.5 style: the llama text variant with F32 weights and a CLIP mmproj (projector type
  `mlp`): 24x24 images, 4x4 patches (a 6x6 grid) plus the class embedding, no patch bias, pre
  LayerNorm, 3 blocks of width 32 with quick GELU of which llama.cpp runs 2 (all but the last),
  no post LayerNorm, then mm.0 (32 -> 256), GELU, mm.2 (256 -> 64) -> 36 image tokens of
  width 64.
"""

from __future__ import annotations

import ctypes
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from PIL import Image

from tests.tiny_model import write_tiny_model

IMAGE_MARKERS = ("<start_of_image>", "<end_of_image>")
IMAGE_SIZE, PATCH, D_V, F_V, H_V, L_V, MERGE, D_TEXT = 32, 4, 32, 48, 2, 2, 2, 64
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH // MERGE) ** 2
LLAVA_IMAGE_SIZE, LLAVA_L_V, LLAVA_F_MM = 24, 3, 256
LLAVA_N_IMAGE_TOKENS = (LLAVA_IMAGE_SIZE // PATCH) ** 2
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def write_tiny_text(path: str | Path, seed: int = 0) -> Path:
    """The tiny gemma3 text model with the two image marker tokens."""
    return write_tiny_model(path, "gemma3", seed=seed, extra_control=IMAGE_MARKERS)


def write_tiny_mmproj(path: str | Path, seed: int = 1, f16: bool = False) -> Path:
    """A seeded SigLIP + gemma3-projector mmproj (general.architecture `clip`).

    f16: matrices (patch kernel, ViT and projection weights) stored as F16, as real mmproj files
    are, so llama.cpp rounds the activations that meet them to F16.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = _clip_writer(
        path, "tiny-gemma3-mmproj", "gemma3", gelu=True, image_size=IMAGE_SIZE,
        block_count=L_V, eps=1e-6, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), f16=f16,
    )  # fmt: skip
    w.add_uint32("clip.vision.projector.scale_factor", MERGE)
    add = _tensor_adder(w, rng, f16)
    n_patches = (IMAGE_SIZE // PATCH) ** 2
    add("v.patch_embd.weight", (D_V, 3, PATCH, PATCH))  # ggml conv kernel, ne (P, P, 3, D)
    add("v.patch_embd.bias", (D_V,), "bias")
    add("v.position_embd.weight", (n_patches, D_V), scale=0.5)
    for il in range(L_V):
        _add_vit_block(add, il)
    add("v.post_ln.weight", (D_V,), "norm")
    add("v.post_ln.bias", (D_V,), "bias")
    add("mm.soft_emb_norm.weight", (D_V,), "norm")
    add("mm.input_projection.weight", (D_V, D_TEXT))  # ggml ne (D_TEXT, D_V)
    _finish(w)
    return path


def write_tiny_llava_text(path: str | Path, seed: int = 0) -> Path:
    """The tiny llama text model with F32 weights (no BOS): LLaVA needs no marker tokens."""
    return write_tiny_model(path, "llama", seed=seed, float32=True)


def write_tiny_llava_mmproj(
    path: str | Path,
    seed: int = 2,
    *,
    feature_layers: tuple[int, ...] = (),
    gelu: bool = False,
    legacy_ffn_names: bool = False,
    f16: bool = False,
) -> Path:
    """A seeded CLIP + mlp-projector mmproj (LLaVA 1.5 layout, general.architecture `clip`).

    feature_layers: written as clip.vision.feature_layer (llama.cpp then runs blocks up to the
    deepest one and stacks the listed states along the width, which mm.0 then takes).
    gelu: clip.use_gelu (GELU in the ViT FFN) instead of CLIP's quick GELU.
    legacy_ffn_names: fc1 stored as ffn_down and fc2 as ffn_up, as some old conversions did.
    f16: matrices (patch kernel, ViT and projector weights) stored as F16, as real files are.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = _clip_writer(
        path, "tiny-llava-mmproj", "mlp", gelu=gelu, image_size=LLAVA_IMAGE_SIZE,
        block_count=LLAVA_L_V, eps=1e-5, mean=CLIP_MEAN, std=CLIP_STD, f16=f16,
    )  # fmt: skip
    w.add_bool("clip.has_llava_projector", True)
    if feature_layers:
        w.add_array("clip.vision.feature_layer", list(feature_layers))
    add = _tensor_adder(w, rng, f16)
    n_pos = (LLAVA_IMAGE_SIZE // PATCH) ** 2 + 1
    add("v.class_embd", (D_V,), "bias", scale=10.0)
    add("v.patch_embd.weight", (D_V, 3, PATCH, PATCH))
    add("v.position_embd.weight", (n_pos, D_V), scale=0.5)
    add("v.pre_ln.weight", (D_V,), "norm")
    add("v.pre_ln.bias", (D_V,), "bias")
    for il in range(LLAVA_L_V):
        _add_vit_block(add, il, legacy_ffn_names)
    n_features = max(len(feature_layers), 1)
    add("mm.0.weight", (LLAVA_F_MM, D_V * n_features), scale=2.0)
    add("mm.0.bias", (LLAVA_F_MM,), "bias")
    add("mm.2.weight", (D_TEXT, LLAVA_F_MM), scale=0.5)
    add("mm.2.bias", (D_TEXT,), "bias")
    _finish(w)
    return path


def _clip_writer(
    path: Path,
    name: str,
    projector: str,
    *,
    gelu: bool,
    image_size: int,
    block_count: int,
    eps: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    f16: bool,
) -> GGUFWriter:
    """A GGUFWriter for an mmproj with the clip.* keys both tiny projectors have."""
    w = GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_string("clip.projector_type", projector)
    w.add_bool("clip.use_gelu", gelu)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", D_V)
    w.add_uint32("clip.vision.feed_forward_length", F_V)
    w.add_uint32("clip.vision.block_count", block_count)
    w.add_uint32("clip.vision.projection_dim", D_TEXT)
    w.add_uint32("clip.vision.attention.head_count", H_V)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
    w.add_array("clip.vision.image_mean", list(mean))
    w.add_array("clip.vision.image_std", list(std))
    w.add_file_type(1 if f16 else 0)
    return w


def _tensor_adder(w: GGUFWriter, rng: np.random.Generator, f16: bool) -> Callable[..., None]:
    """add(name, numpy shape, kind, scale): norms near 1, small biases, 1/sqrt(fan-in) matrices.

    f16: matrices but the position table stored as F16."""

    def add(name: str, shape: tuple[int, ...], kind: str = "matrix", scale: float = 1.0) -> None:
        if kind == "norm":
            data = 1.0 + 0.1 * rng.standard_normal(shape)
        elif kind == "bias":
            data = scale * 0.1 * rng.standard_normal(shape)
        else:
            data = scale * rng.standard_normal(shape) / np.sqrt(shape[-1])
        matrix = kind == "matrix" and name != "v.position_embd.weight"
        w.add_tensor(name, data.astype(np.float16 if f16 and matrix else np.float32))

    return add


def _add_vit_block(add: Callable[..., None], il: int, legacy_ffn_names: bool = False) -> None:
    p = f"v.blk.{il}."
    for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
        add(p + part + ".weight", (D_V, D_V))
        add(p + part + ".bias", (D_V,), "bias")
    add(p + "ln1.weight", (D_V,), "norm")
    add(p + "ln1.bias", (D_V,), "bias")
    add(p + "ln2.weight", (D_V,), "norm")
    add(p + "ln2.bias", (D_V,), "bias")
    up, down = ("ffn_down", "ffn_up") if legacy_ffn_names else ("ffn_up", "ffn_down")
    add(p + up + ".weight", (F_V, D_V))
    add(p + up + ".bias", (F_V,), "bias")
    add(p + down + ".weight", (D_V, F_V))
    add(p + down + ".bias", (D_V,), "bias")


def _finish(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def encoded_image(fmt: str, size: tuple[int, int], seed: int, mode: str = "RGB") -> bytes:
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


class MtmdOracle:
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


LOGITS_IMAGE = ("PNG", (45, 30), "RGB")


@dataclass(frozen=True)
class Variant:
    """A tiny text + mmproj pair and what the tests know of it."""

    write_text: Callable[[Path], Path]
    write_mmproj: Callable[[Path], Path]
    n_image_tokens: int
    markers: int  # marker tokens mtmd puts around each image's rows
    logits_prompt: str | None  # a prompt with <__media__> for the post-image logits check
    images: tuple[int, ...]  # indices into IMAGES checked against mtmd


VARIANTS = {
    "gemma3": Variant(
        write_tiny_text,
        write_tiny_mmproj,
        N_IMAGE_TOKENS,
        markers=2,
        logits_prompt="<__media__>What is in the picture? The quick brown fox.",
        images=(0, 1, 2, 3, 4),
    ),
    # F16 matrices as in real mmproj files: ggml rounds the activations that meet them to F16
    "gemma3_f16": Variant(
        write_tiny_text,
        partial(write_tiny_mmproj, f16=True),
        N_IMAGE_TOKENS,
        markers=2,
        logits_prompt=None,
        images=(1, 2),
    ),
    "llava": Variant(
        write_tiny_llava_text,
        write_tiny_llava_mmproj,
        LLAVA_N_IMAGE_TOKENS,
        markers=0,
        logits_prompt="USER: <__media__>\nWhat is in the picture? The quick brown fox.",
        images=(0, 1, 2, 3, 4),
    ),
    # clip.vision.feature_layer (llama.cpp stacks the ViT input, block 2's and block 3's
    # output) and GELU in the ViT FFN
    "llava_features_gelu": Variant(
        write_tiny_llava_text,
        partial(write_tiny_llava_mmproj, feature_layers=(0, 2, 3), gelu=True),
        LLAVA_N_IMAGE_TOKENS,
        markers=0,
        logits_prompt=None,
        images=(1, 2),
    ),
    "llava_f16": Variant(
        write_tiny_llava_text,
        partial(write_tiny_llava_mmproj, f16=True),
        LLAVA_N_IMAGE_TOKENS,
        markers=0,
        logits_prompt=None,
        images=(1, 2),
    ),
    # fc1/fc2 under swapped names, as some old conversions wrote them
    "llava_legacy_ffn": Variant(
        write_tiny_llava_text,
        partial(write_tiny_llava_mmproj, legacy_ffn_names=True),
        LLAVA_N_IMAGE_TOKENS,
        markers=0,
        logits_prompt=None,
        images=(1, 2),
    ),
}
