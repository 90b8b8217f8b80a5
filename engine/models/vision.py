"""Image encoder of a llama.cpp mmproj GGUF (general.architecture `clip`): decode, preprocess, ViT,
projector -> one embedding row per image token, in the text model's embedding space.

Follows llama.cpp's tools/mtmd (clip.cpp `build_vit`, models/siglip.cpp, mtmd-image.cpp's
fixed-size preprocessor and Pillow-style resampler) for projector type `gemma3`: SigLIP ViT
(patch conv, learned positions, pre-norm LayerNorm blocks with GELU FFN, post LayerNorm), then
k x k average pooling of the patch grid, RMSNorm and a linear projection to the text width.
The image tokens sit between `<start_of_image>` and `<end_of_image>` and attend to each other
both ways (mtmd_decode_use_non_causal), see engine/models/decoder.py `Segment.bidirectional`.

Weight products go through engine/models/decoder.py `linear` (llama.cpp's activation rounding
per weight type); q.k and p.v are exactly rounded (blockmatmul `rounded_matmul`), so the numbers
do not depend on BLAS. LayerNorm statistics are float64. GELU is ggml's F16 table
(numerics.gelu_f16_table), as ggml's CPU `gelu` uses it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType

from engine.errors import EngineError, GGUFError
from engine.gguf.reader import GGUFFile
from engine.models.blockmatmul import matrix_from_gguf, rounded_matmul
from engine.models.decoder import Linear, linear, rms_norm
from engine.models.numerics import (
    LLAMA_CPP,
    Rounding,
    exp_f32,
    gelu_f16_table,
    round_activations,
    vec_dot_rounding,
)

F32 = np.float32
Array = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]  # (H, W, 3) RGB

# Decoded size limit: 20000 x 20000 RGB would need 1.2 GB before resizing. llama.cpp (stb_image)
# and Ollama would try to allocate it; we refuse images above this many pixels with a 400.
MAX_IMAGE_PIXELS = 40_000_000
SUPPORTED_PROJECTORS = ("gemma3",)
_PRECISION_BITS = 22  # Pillow / mtmd-image.cpp fixed-point filter weights (32 - 8 - 2)


class InvalidImage(EngineError):
    """An image that cannot be decoded, is truncated or is too large."""


@dataclass(frozen=True)
class VisionConfig:
    projector_type: str
    image_size: int
    patch_size: int
    n_embd: int
    n_head: int
    n_layer: int
    eps: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    n_merge: int  # pooling kernel per side (gemma3: 4)

    @classmethod
    def from_gguf(cls, meta: dict[str, object]) -> VisionConfig:
        def get(key: str) -> object:
            if key not in meta:
                raise GGUFError(f"projector metadata key {key!r} is missing")
            return meta[key]

        if not meta.get("clip.has_vision_encoder", False):
            raise GGUFError("the projector has no vision encoder (clip.has_vision_encoder)")
        ptype = str(meta.get("clip.projector_type") or meta.get("clip.vision.projector_type", ""))
        if ptype not in SUPPORTED_PROJECTORS:
            raise GGUFError(
                f"projector type {ptype!r} is not supported; expected {SUPPORTED_PROJECTORS}"
            )
        mean = tuple(float(v) for v in get("clip.vision.image_mean"))  # type: ignore[attr-defined]
        std = tuple(float(v) for v in get("clip.vision.image_std"))  # type: ignore[attr-defined]
        return cls(
            projector_type=ptype,
            image_size=int(get("clip.vision.image_size")),  # type: ignore[call-overload]
            patch_size=int(get("clip.vision.patch_size")),  # type: ignore[call-overload]
            n_embd=int(get("clip.vision.embedding_length")),  # type: ignore[call-overload]
            n_head=int(get("clip.vision.attention.head_count")),  # type: ignore[call-overload]
            n_layer=int(get("clip.vision.block_count")),  # type: ignore[call-overload]
            eps=float(get("clip.vision.attention.layer_norm_epsilon")),  # type: ignore[arg-type]
            image_mean=mean[:3],  # type: ignore[arg-type]
            image_std=std[:3],  # type: ignore[arg-type]
            n_merge=int(meta.get("clip.vision.projector.scale_factor", 4)),  # type: ignore[call-overload]
        )


# ---- decoding ------------------------------------------------------------------------------


def decode_image(data: bytes) -> Pixels:
    """Encoded bytes (PNG, JPEG, WebP, GIF: first frame, ...) -> (H, W, 3) uint8 RGB.

    Alpha is dropped, not composited, as stb_image does for mtmd. Raises InvalidImage for bytes
    Pillow cannot identify, truncated data, and more than MAX_IMAGE_PIXELS declared pixels
    (checked from the header, before any pixel is decoded).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InvalidImage(
                    f"image is too large: {w}x{h} pixels, more than {MAX_IMAGE_PIXELS}"
                )
            im.seek(0)
            rgb = im.convert("RGB")
            rgb.load()
    except InvalidImage:
        raise
    except UnidentifiedImageError as e:
        raise InvalidImage("image: unknown format (not PNG, JPEG, WebP, GIF, ...)") from e
    except Image.DecompressionBombError as e:
        # Pillow's own guard fires first above 2 x Image.MAX_IMAGE_PIXELS (179 MP)
        raise InvalidImage(f"image is too large: more than {MAX_IMAGE_PIXELS} pixels") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"image cannot be decoded: {e}") from e
    return np.asarray(rgb, dtype=np.uint8).copy()


# ---- preprocessing (mtmd-image.cpp) ---------------------------------------------------------


def _filter_weights(
    n_in: int, n_out: int, support_unit: float, bilinear: bool
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pillow's fixed-point resampling taps: (first input index (n_out,), weights (n_out, K))."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = support_unit * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    first = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, ksize), np.int64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        d = (np.arange(xmax) + xmin - center + 0.5) / filterscale
        d = np.abs(d)
        if bilinear:
            w = np.where(d < 1.0, 1.0 - d, 0.0)
        else:  # bicubic, a = -0.5 as Pillow
            a = -0.5
            w = np.where(
                d < 1.0,
                ((a + 2.0) * d - (a + 3.0)) * d * d + 1,
                np.where(d < 2.0, (((d - 5) * d + 8) * d - 4) * a, 0.0),
            )
        total = w.sum()
        if total != 0.0:
            w = w / total
        # Pillow adds +-0.5 then truncates toward zero
        fixed = np.trunc(w * (1 << _PRECISION_BITS) + np.where(w < 0, -0.5, 0.5))
        first[xx] = xmin
        weights[xx, :xmax] = fixed.astype(np.int64)
    return first, weights


def _resample_axis(src: Pixels, n_out: int, axis: int, bilinear: bool) -> Pixels:
    """One separable pass along `axis` (1: width, 0: height) with Pillow's integer arithmetic."""
    n_in = src.shape[axis]
    first, weights = _filter_weights(n_in, n_out, 1.0 if bilinear else 2.0, bilinear)
    acc = np.full(
        (n_out,) + tuple(np.delete(src.shape, axis)), 1 << (_PRECISION_BITS - 1), np.int64
    )
    moved = np.moveaxis(src, axis, 0)  # (n_in, other, 3)
    for k in range(weights.shape[1]):
        idx = np.minimum(first + k, n_in - 1)
        w = weights[:, k].reshape((n_out,) + (1,) * (moved.ndim - 1))
        acc += moved[idx].astype(np.int64) * w
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize(src: Pixels, width: int, height: int, bilinear: bool) -> Pixels:
    """Pillow-compatible resize (mtmd-image.cpp `resize_pillow`): horizontal pass, then vertical."""
    out = src
    if width != src.shape[1]:
        out = _resample_axis(out, width, 1, bilinear)
    if height != src.shape[0]:
        out = _resample_axis(out, height, 0, bilinear)
    return out


def preprocess(pixels: Pixels, cfg: VisionConfig) -> Array:
    """(H, W, 3) uint8 -> (3, S, S) float32 normalized, S = image_size.

    mtmd's fixed-size preprocessor with PAD_CEIL: scale to fit (float32 scale, ceil), resize
    (gemma3: bilinear), centre on a black square, then (x / 255 - mean) / std per channel.
    """
    S = cfg.image_size
    h, w = pixels.shape[:2]
    if (w, h) == (S, S):
        square = pixels
    else:
        scale = min(F32(S) / F32(w), F32(S) / F32(h))
        new_w = min(int(np.ceil(F32(w) * scale)), S)
        new_h = min(int(np.ceil(F32(h) * scale)), S)
        resized = resize(pixels, new_w, new_h, bilinear=cfg.projector_type == "gemma3")
        square = np.zeros((S, S, 3), np.uint8)
        ox, oy = (S - new_w) // 2, (S - new_h) // 2
        square[oy : oy + new_h, ox : ox + new_w] = resized
    x = square.astype(F32) / F32(255.0)
    x = (x - np.asarray(cfg.image_mean, F32)) / np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, S, S)


# ---- the encoder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VitLayer:
    ln1_w: Array
    ln1_b: Array
    wq: Linear
    bq: Array
    wk: Linear
    bk: Array
    wv: Linear
    bv: Array
    wo: Linear
    bo: Array
    ln2_w: Array
    ln2_b: Array
    w_up: Linear
    b_up: Array
    w_down: Linear
    b_down: Array


@dataclass(frozen=True)
class VisionWeights:
    patch: npt.NDArray[np.float64]  # (3*P*P, D) the patch conv as a matrix
    patch_f16: bool  # ggml_conv_2d's im2col is F16 (unless the kernel is BF16)
    patch_bias: Array  # (D,)
    position: Array  # (N, D)
    layers: tuple[VitLayer, ...]
    post_ln_w: Array
    post_ln_b: Array
    soft_emb_norm: Array  # (D,)
    input_projection: Array  # (D, D_text)
    projection_rounding: Rounding  # ggml rounds the activations to the projection's type


def layer_norm(x: Array, w: Array, b: Array, eps: float) -> Array:
    """LayerNorm over the last axis, statistics in float64 (ggml_norm sums in double)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = np.square(x64 - mean).mean(axis=-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps)).astype(F32) * w + b


def _row_norm(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.sqrt(np.square(x).sum(axis=-1))


def _attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    """Full (bidirectional) attention, one head at a time to bound memory at (N, N):
    (N, H, Dh) x3 -> (N, H*Dh)."""
    N, H, Dh = q.shape
    out = np.empty((N, H, Dh), F32)
    for h in range(H):
        q64 = q[:, h].astype(np.float64)  # (N, Dh)
        k64 = k[:, h].astype(np.float64)
        v64 = v[:, h].astype(np.float64)
        scores = rounded_matmul(q64, k64.T, _row_norm(q64), _row_norm(k64)) * F32(scale)
        e = exp_f32(scores - scores.max(axis=-1, keepdims=True))  # (N, N)
        p = e * (1.0 / e.sum(axis=-1, dtype=np.float64)).astype(F32)[:, None]
        p64 = p.astype(np.float64)
        out[:, h] = rounded_matmul(p64, v64, p64.sum(-1), np.abs(v64).max(axis=0))
    return out.reshape(N, H * Dh)


class VisionEncoder:
    """A loaded projector: `encode(image_bytes)` -> (n_tokens, D_text) embeddings."""

    def __init__(self, path: Path, config: VisionConfig, weights: VisionWeights) -> None:
        self.path = path
        self.config = config
        self.weights = weights

    @property
    def n_tokens(self) -> int:
        """Image tokens per image: (image_size / patch_size / n_merge)^2."""
        side = self.config.image_size // self.config.patch_size // self.config.n_merge
        return side * side

    @property
    def bidirectional(self) -> bool:
        """Image tokens attend to each other both ways in the text model (gemma3)."""
        return self.config.projector_type == "gemma3"

    @property
    def n_embd_text(self) -> int:
        return int(self.weights.input_projection.shape[1])

    def encode(self, data: bytes) -> Array:
        """Encoded image bytes -> (n_tokens, D_text). Raises InvalidImage."""
        return self.encode_pixels(decode_image(data))

    def encode_pixels(self, pixels: Pixels) -> Array:
        """(H, W, 3) uint8 RGB -> (n_tokens, D_text)."""
        return self.forward(preprocess(pixels, self.config))

    def forward(self, image: Array) -> Array:
        """(3, S, S) normalized float32 -> (n_tokens, D_text)."""
        cfg, w = self.config, self.weights
        P, D, H = cfg.patch_size, cfg.n_embd, cfg.n_head
        side = cfg.image_size // P
        patches = image.reshape(3, side, P, side, P).transpose(1, 3, 0, 2, 4)
        patches = patches.reshape(side * side, 3 * P * P)  # (N, 3*P*P), row y*side + x
        # ggml_conv_2d: im2col to F16, so pixels and kernel meet as F16 (F32 for a BF16 kernel)
        p64 = (patches.astype(np.float16) if w.patch_f16 else patches).astype(np.float64)
        conv = rounded_matmul(p64, w.patch, _row_norm(p64), _row_norm(w.patch.T))
        x = conv + w.patch_bias + w.position  # (N, D)
        N = x.shape[0]
        scale = 1.0 / float(np.sqrt(F32(D // H)))
        for lw in w.layers:
            h = layer_norm(x, lw.ln1_w, lw.ln1_b, cfg.eps)
            q = (linear(h, lw.wq, LLAMA_CPP) + lw.bq).reshape(N, H, D // H)
            k = (linear(h, lw.wk, LLAMA_CPP) + lw.bk).reshape(N, H, D // H)
            v = (linear(h, lw.wv, LLAMA_CPP) + lw.bv).reshape(N, H, D // H)
            x = x + linear(_attention(q, k, v, scale), lw.wo, LLAMA_CPP) + lw.bo
            h = layer_norm(x, lw.ln2_w, lw.ln2_b, cfg.eps)
            u = gelu_f16_table(linear(h, lw.w_up, LLAMA_CPP) + lw.b_up)  # (N, F)
            x = x + linear(u, lw.w_down, LLAMA_CPP) + lw.b_down
        x = layer_norm(x, w.post_ln_w, w.post_ln_b, cfg.eps)
        # gemma3: average k x k blocks of the (side, side) patch grid, row-major
        k = cfg.n_merge
        pooled = x.reshape(side // k, k, side // k, k, D).mean(axis=(1, 3), dtype=np.float64)
        pooled = pooled.astype(F32).reshape(-1, D)  # (n_tokens, D)
        normed = round_activations(
            rms_norm(pooled, w.soft_emb_norm, cfg.eps), w.projection_rounding
        )
        proj = w.input_projection.astype(np.float64)
        return rounded_matmul(
            normed.astype(np.float64),
            proj,
            np.sqrt(np.square(normed.astype(np.float64)).sum(-1)),
            np.sqrt(np.square(proj).sum(0)),
        )


def load_projector(path: str | Path) -> VisionEncoder:
    """Load a llama.cpp mmproj GGUF (projector type gemma3). Raises GGUFError when unsupported."""
    path = Path(path)
    gguf = GGUFFile(path)
    if gguf.metadata.get("general.architecture") != "clip":
        raise GGUFError(f"{path.name} is not a projector (general.architecture is not 'clip')")
    cfg = VisionConfig.from_gguf(gguf.metadata)
    tensors = gguf.tensors

    def vec(name: str) -> Array:
        if name not in tensors:
            raise GGUFError(f"projector tensor {name!r} is missing")
        return np.ascontiguousarray(gguf.tensor(name), dtype=F32)

    def lin(name: str) -> Linear:
        if name not in tensors:
            raise GGUFError(f"projector tensor {name!r} is missing")
        t = tensors[name]
        return Linear((matrix_from_gguf([(gguf.raw(name), t.ggml_type, t.shape)]),))  # type: ignore[list-item]

    name = "v.patch_embd.weight"
    if name not in tensors:
        raise GGUFError(f"projector tensor {name!r} is missing")
    D, P = cfg.n_embd, cfg.patch_size
    f16 = tensors[name].ggml_type != GGMLType.BF16
    kernel = vec(name).reshape(D, 3 * P * P)  # (D, 3, P, P) flattened
    if f16:
        kernel = kernel.astype(np.float16).astype(F32)
    layers = []
    for il in range(cfg.n_layer):
        p = f"v.blk.{il}."
        layers.append(
            VitLayer(
                ln1_w=vec(p + "ln1.weight"), ln1_b=vec(p + "ln1.bias"),
                wq=lin(p + "attn_q.weight"), bq=vec(p + "attn_q.bias"),
                wk=lin(p + "attn_k.weight"), bk=vec(p + "attn_k.bias"),
                wv=lin(p + "attn_v.weight"), bv=vec(p + "attn_v.bias"),
                wo=lin(p + "attn_out.weight"), bo=vec(p + "attn_out.bias"),
                ln2_w=vec(p + "ln2.weight"), ln2_b=vec(p + "ln2.bias"),
                w_up=lin(p + "ffn_up.weight"), b_up=vec(p + "ffn_up.bias"),
                w_down=lin(p + "ffn_down.weight"), b_down=vec(p + "ffn_down.bias"),
            )
        )  # fmt: skip
    weights = VisionWeights(
        patch=np.ascontiguousarray(kernel.T, dtype=np.float64),
        patch_f16=f16,
        patch_bias=vec("v.patch_embd.bias"),
        position=vec("v.position_embd.weight"),
        layers=tuple(layers),
        post_ln_w=vec("v.post_ln.weight"),
        post_ln_b=vec("v.post_ln.bias"),
        soft_emb_norm=vec("mm.soft_emb_norm.weight"),
        input_projection=vec("mm.input_projection.weight"),
        projection_rounding=vec_dot_rounding(tensors["mm.input_projection.weight"].ggml_type),
    )
    return VisionEncoder(path, cfg, weights)
