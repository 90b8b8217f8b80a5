"""Tiny seeded Gemma 3 vision models: the text model of tests/tiny_model.py (variant gemma3, plus
`<start_of_image>` and `<end_of_image>` control tokens) and a SigLIP mmproj GGUF written in
llama.cpp's tensor layout (tools/mtmd/clip-impl.h names, projector type `gemma3`).

The mmproj: 32x32 images, 4x4 patches (an 8x8 grid), 2 ViT blocks of width 32 (2 heads, FFN 48),
2x2 average pooling (clip.vision.projector.scale_factor) -> 16 image tokens of width 64.
Float32 weights, so llama.cpp computes it in float32 and is a tight oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from tests.tiny_model import write_tiny_model

IMAGE_MARKERS = ("<start_of_image>", "<end_of_image>")
IMAGE_SIZE, PATCH, D_V, F_V, H_V, L_V, MERGE, D_TEXT = 32, 4, 32, 48, 2, 2, 2, 64
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH // MERGE) ** 2


def write_tiny_text(path: str | Path, seed: int = 0) -> Path:
    """The tiny gemma3 text model with the two image marker tokens."""
    return write_tiny_model(path, "gemma3", seed=seed, extra_control=IMAGE_MARKERS)


def write_tiny_mmproj(path: str | Path, seed: int = 1) -> Path:
    """A seeded SigLIP + gemma3-projector mmproj (general.architecture `clip`)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-gemma3-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_string("clip.projector_type", "gemma3")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", D_V)
    w.add_uint32("clip.vision.feed_forward_length", F_V)
    w.add_uint32("clip.vision.block_count", L_V)
    w.add_uint32("clip.vision.projection_dim", D_TEXT)
    w.add_uint32("clip.vision.attention.head_count", H_V)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", MERGE)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_file_type(0)

    def add(name: str, shape: tuple[int, ...], kind: str = "matrix", scale: float = 1.0) -> None:
        if kind == "norm":
            data = 1.0 + 0.1 * rng.standard_normal(shape)
        elif kind == "bias":
            data = 0.1 * rng.standard_normal(shape)
        else:
            data = scale * rng.standard_normal(shape) / np.sqrt(shape[-1])
        w.add_tensor(name, data.astype(np.float32))

    n_patches = (IMAGE_SIZE // PATCH) ** 2
    add("v.patch_embd.weight", (D_V, 3, PATCH, PATCH))  # ggml conv kernel, ne (P, P, 3, D)
    add("v.patch_embd.bias", (D_V,), "bias")
    add("v.position_embd.weight", (n_patches, D_V), scale=0.5)
    for il in range(L_V):
        p = f"v.blk.{il}."
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            add(
                p + part + ".weight",
                (D_V, D_V),
            )
            add(p + part + ".bias", (D_V,), "bias")
        add(p + "ln1.weight", (D_V,), "norm")
        add(p + "ln1.bias", (D_V,), "bias")
        add(p + "ln2.weight", (D_V,), "norm")
        add(p + "ln2.bias", (D_V,), "bias")
        add(p + "ffn_up.weight", (F_V, D_V))
        add(p + "ffn_up.bias", (F_V,), "bias")
        add(p + "ffn_down.weight", (D_V, F_V))
        add(p + "ffn_down.bias", (D_V,), "bias")
    add("v.post_ln.weight", (D_V,), "norm")
    add("v.post_ln.bias", (D_V,), "bias")
    add("mm.soft_emb_norm.weight", (D_V,), "norm")
    add("mm.input_projection.weight", (D_V, D_TEXT))  # ggml ne (D_TEXT, D_V)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
