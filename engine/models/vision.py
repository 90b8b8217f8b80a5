"""Image encoder of a llama.cpp mmproj GGUF (general.architecture `clip`): decode, preprocess, ViT,
projector -> one embedding row per image token, in the text model's embedding space.

Follows llama.cpp 0.3.36's tools/mtmd (mtmd-image.cpp's fixed-size preprocessor and Pillow-style
resampler; clip.cpp `build_vit` with models/siglip.cpp, and models/llava.cpp) for two projector
types:

- `gemma3`: bilinear resize into a black square; SigLIP ViT (patch conv with bias, learned
  positions, pre-norm LayerNorm blocks, post LayerNorm), every block run; k x k average pooling of
  the patch grid, RMSNorm and a linear projection to the text width.
- `mlp` (LLaVA 1.5): Pillow-bicubic resize into a square of colour (122, 116, 104); CLIP ViT (patch
  conv, usually without bias; the class embedding; learned positions over patches plus class;
  pre LayerNorm; the same blocks), run up to the deepest `clip.vision.feature_layer` or, without
  that key, all but the last block ("skip last layer"); post LayerNorm only if the file has one
  (LLaVA's has not); then mm.0 -> GELU -> mm.2, one row per patch. llava.cpp concatenates the
  class embedding *after* the patch rows and then keeps rows 1..N (patch_offset 1), so the first
  patch's row is dropped and the class row is the last image token: we do the same.

Both use the FFN activation of clip.use_gelu (GELU) or neither flag (quick GELU, CLIP's). The
image token placement and attention (markers, causal or not) are engine/models/multimodal.py's.

Weight products go through engine/models/decoder.py `linear` (llama.cpp's activation rounding
per weight type); q.k and p.v are exactly rounded (blockmatmul `rounded_matmul`), so the numbers
do not depend on BLAS. LayerNorm statistics are float64. GELU and quick GELU are ggml's F16 tables
(numerics.gelu_f16_table, gelu_quick_f16_table), as ggml's CPU ops use them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
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
    gelu_quick_f16_table,
    round_activations,
    vec_dot_rounding,
)

F32 = np.float32
Array = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]  # (H, W, 3) RGB

# Decoded size limit: 20000 x 20000 RGB would need 1.2 GB before resizing. llama.cpp (stb_image)
# and Ollama would try to allocate it; we refuse images above this many pixels with a 400.
MAX_IMAGE_PIXELS = 40_000_000
SUPPORTED_PROJECTORS = ("gemma3", "mlp")
_PRECISION_BITS = 22  # Pillow / mtmd-image.cpp fixed-point filter weights (32 - 8 - 2)

# clip.cpp load_hparams per projector type: the resampling filter of the aspect-preserving
# resize (bilinear, else Pillow's bicubic) and the colour of the square around it
_RESIZE: dict[str, tuple[bool, tuple[int, int, int]]] = {
    "gemma3": (True, (0, 0, 0)),
    "mlp": (False, (122, 116, 104)),
}
# clip.use_gelu -> ggml_gelu; neither it nor clip.use_silu -> ggml_gelu_quick (clip.cpp)
_FFN_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu_f16_table,
    "gelu_quick": gelu_quick_f16_table,
}


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
    ffn_op: str  # a key of _FFN_ACTIVATIONS
    n_merge: int  # pooling kernel per side (gemma3: 4; mlp: 1, no pooling)
    feature_layers: tuple[int, ...]  # mlp: ViT states stacked as features (0: the ViT input)

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
        if ptype == "mlp" and meta.get("clip.vision.image_grid_pinpoints"):
            raise GGUFError(
                "projector type 'mlp' with clip.vision.image_grid_pinpoints (LLaVA 1.6 image "
                "slicing) is not supported; only fixed-size LLaVA 1.5 projectors are"
            )
        if meta.get("clip.use_silu", False):
            raise GGUFError("clip.use_silu (a SiLU ViT FFN) is not supported")
        mean = tuple(float(v) for v in get("clip.vision.image_mean"))  # type: ignore[attr-defined]
        std = tuple(float(v) for v in get("clip.vision.image_std"))  # type: ignore[attr-defined]
        n_layer = int(get("clip.vision.block_count"))  # type: ignore[call-overload]
        features = tuple(int(v) for v in meta.get("clip.vision.feature_layer", ()))  # type: ignore[attr-defined]
        if ptype != "mlp":
            features = ()  # build_vit (gemma3) never reads them
        if any(f > n_layer for f in features):  # clip.cpp's check; negative ones never match
            raise GGUFError(f"clip.vision.feature_layer {features} has a layer above {n_layer}")
        return cls(
            projector_type=ptype,
            image_size=int(get("clip.vision.image_size")),  # type: ignore[call-overload]
            patch_size=int(get("clip.vision.patch_size")),  # type: ignore[call-overload]
            n_embd=int(get("clip.vision.embedding_length")),  # type: ignore[call-overload]
            n_head=int(get("clip.vision.attention.head_count")),  # type: ignore[call-overload]
            n_layer=n_layer,
            eps=float(get("clip.vision.attention.layer_norm_epsilon")),  # type: ignore[arg-type]
            image_mean=mean[:3],  # type: ignore[arg-type]
            image_std=std[:3],  # type: ignore[arg-type]
            ffn_op="gelu" if meta.get("clip.use_gelu", False) else "gelu_quick",
            n_merge=(
                int(meta.get("clip.vision.projector.scale_factor", 4))  # type: ignore[call-overload]
                if ptype == "gemma3"
                else 1
            ),
            feature_layers=features,
        )

    @property
    def n_layer_run(self) -> int:
        """ViT blocks evaluated: all for gemma3; for mlp up to the deepest feature layer, or
        n_layer - 1 without feature layers (llava.cpp's max_feature_layer)."""
        if self.projector_type != "mlp":
            return self.n_layer
        deepest = max(self.feature_layers, default=-1)
        return deepest if deepest >= 0 else self.n_layer - 1


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

    mtmd's fixed-size preprocessor with PAD_CEIL: an image of size S x S is kept as it is; any
    other is scaled to fit (float32 scale, ceil), resized (gemma3: bilinear; mlp: bicubic) and
    centred on a square of the projector's pad colour (gemma3: black; mlp: (122, 116, 104)).
    Then (x / 255 - mean) / std per channel.
    """
    S = cfg.image_size
    h, w = pixels.shape[:2]
    if (w, h) == (S, S):
        square = pixels
    else:
        bilinear, pad = _RESIZE[cfg.projector_type]
        scale = min(F32(S) / F32(w), F32(S) / F32(h))
        new_w = min(int(np.ceil(F32(w) * scale)), S)
        new_h = min(int(np.ceil(F32(h) * scale)), S)
        resized = resize(pixels, new_w, new_h, bilinear=bilinear)
        square = np.empty((S, S, 3), np.uint8)
        square[:] = pad
        ox, oy = (S - new_w) // 2, (S - new_h) // 2
        square[oy : oy + new_h, ox : ox + new_w] = resized
    x = square.astype(F32) / F32(255.0)
    x = (x - np.asarray(cfg.image_mean, F32)) / np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, S, S)


# ---- the encoder ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNormWeights:
    w: Array  # (D,)
    b: Array  # (D,)


@dataclass(frozen=True)
class VitLayer:
    ln1: LayerNormWeights
    wq: Linear
    bq: Array
    wk: Linear
    bk: Array
    wv: Linear
    bv: Array
    wo: Linear
    bo: Array
    ln2: LayerNormWeights
    w_up: Linear
    b_up: Array
    w_down: Linear
    b_down: Array


@dataclass(frozen=True)
class VitWeights:
    patch: npt.NDArray[np.float64]  # (3*P*P, D) the patch conv as a matrix
    patch_f16: bool  # ggml_conv_2d's im2col is F16 (unless the kernel is BF16)
    patch_bias: Array | None  # (D,)
    class_embedding: Array | None  # (D,) mlp (CLIP) only
    position: Array  # (N_pos, D): N patches, plus the class row if any
    pre_ln: LayerNormWeights | None
    layers: tuple[VitLayer, ...]
    post_ln: LayerNormWeights | None


@dataclass(frozen=True)
class Gemma3Projector:
    soft_emb_norm: Array  # (D,)
    input_projection: Array  # (D, D_text)
    rounding: Rounding  # ggml rounds the activations to the projection's type


@dataclass(frozen=True)
class MlpProjector:
    w0: Linear  # mm.0: (D * n_features, F_mm)
    b0: Array
    w2: Linear  # mm.2: (F_mm, D_text)
    b2: Array  # (D_text,)


def layer_norm(x: Array, w: LayerNormWeights, eps: float) -> Array:
    """LayerNorm over the last axis, statistics in float64 (ggml_norm sums in double)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = np.square(x64 - mean).mean(axis=-1, keepdims=True)
    return ((x64 - mean) / np.sqrt(var + eps)).astype(F32) * w.w + w.b


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


def embed_patches(image: Array, w: VitWeights, cfg: VisionConfig) -> Array:
    """(3, S, S) -> (N_pos, D): patch conv (+ bias), the class row after the patches (llava.cpp's
    ggml_concat order), plus the learned positions. Patch rows are y * side + x."""
    P = cfg.patch_size
    side = cfg.image_size // P
    patches = image.reshape(3, side, P, side, P).transpose(1, 3, 0, 2, 4)
    patches = patches.reshape(side * side, 3 * P * P)  # (N, 3*P*P)
    # ggml_conv_2d: im2col to F16, so pixels and kernel meet as F16 (F32 for a BF16 kernel)
    p64 = (patches.astype(np.float16) if w.patch_f16 else patches).astype(np.float64)
    x = rounded_matmul(p64, w.patch, _row_norm(p64), _row_norm(w.patch.T))  # (N, D)
    if w.patch_bias is not None:
        x = x + w.patch_bias
    if w.class_embedding is not None:
        x = np.concatenate([x, w.class_embedding[None]])  # (N + 1, D)
    return x + w.position


def vit_block(x: Array, lw: VitLayer, cfg: VisionConfig) -> Array:
    """One pre-norm ViT block (LayerNorm, biased attention, LayerNorm, FFN): (N, D) -> (N, D)."""
    N, D = x.shape
    H = cfg.n_head
    scale = 1.0 / float(np.sqrt(F32(D // H)))
    h = layer_norm(x, lw.ln1, cfg.eps)
    q = (linear(h, lw.wq, LLAMA_CPP) + lw.bq).reshape(N, H, D // H)
    k = (linear(h, lw.wk, LLAMA_CPP) + lw.bk).reshape(N, H, D // H)
    v = (linear(h, lw.wv, LLAMA_CPP) + lw.bv).reshape(N, H, D // H)
    x = x + linear(_attention(q, k, v, scale), lw.wo, LLAMA_CPP) + lw.bo
    h = layer_norm(x, lw.ln2, cfg.eps)
    u = _FFN_ACTIVATIONS[cfg.ffn_op](linear(h, lw.w_up, LLAMA_CPP) + lw.b_up)  # (N, F)
    return x + linear(u, lw.w_down, LLAMA_CPP) + lw.b_down


def vit_features(x: Array, w: VitWeights, cfg: VisionConfig) -> Array:
    """(N_pos, D) embedded patches -> (N_pos, D * n_features): pre LayerNorm, the first
    cfg.n_layer_run blocks, post LayerNorm; with feature layers, the listed states (0: the
    blocks' input; n_layer_run: the output) concatenated along D, as llava.cpp stacks them."""
    if w.pre_ln is not None:
        x = layer_norm(x, w.pre_ln, cfg.eps)
    stack = []
    for il in range(cfg.n_layer_run):
        if il in cfg.feature_layers:
            stack.append(x)
        x = vit_block(x, w.layers[il], cfg)
    if w.post_ln is not None:
        x = layer_norm(x, w.post_ln, cfg.eps)
    if cfg.n_layer_run in cfg.feature_layers:
        stack.append(x)
    return np.concatenate(stack, axis=-1) if stack else x


def project_gemma3(x: Array, p: Gemma3Projector, cfg: VisionConfig) -> Array:
    """(N, D) -> (N / k^2, D_text): average k x k blocks of the patch grid (row-major), RMSNorm,
    linear projection (models/siglip.cpp)."""
    D = x.shape[1]
    side, k = cfg.image_size // cfg.patch_size, cfg.n_merge
    pooled = x.reshape(side // k, k, side // k, k, D).mean(axis=(1, 3), dtype=np.float64)
    pooled = pooled.astype(F32).reshape(-1, D)  # (n_tokens, D)
    normed = round_activations(rms_norm(pooled, p.soft_emb_norm, cfg.eps), p.rounding)
    n64, proj = normed.astype(np.float64), p.input_projection.astype(np.float64)
    return rounded_matmul(n64, proj, _row_norm(n64), np.sqrt(np.square(proj).sum(0)))


def project_mlp(x: Array, p: MlpProjector, has_class: bool) -> Array:
    """(N_pos, D') -> (N, D_text): rows 1..N with a class row (0..N-1 without), then
    mm.0 -> GELU -> mm.2 (llava.cpp's `patches` get_rows and PROJECTOR_TYPE_MLP)."""
    rows = x[1:] if has_class else x  # (N, D'): with a class row, patch 0 is dropped
    h = gelu_f16_table(linear(rows, p.w0, LLAMA_CPP) + p.b0)  # (N, F_mm)
    return linear(h, p.w2, LLAMA_CPP) + p.b2


class VisionEncoder:
    """A loaded projector: `encode(image_bytes)` -> (n_tokens, D_text) embeddings."""

    def __init__(
        self,
        path: Path,
        config: VisionConfig,
        vit: VitWeights,
        projector: Gemma3Projector | MlpProjector,
    ) -> None:
        self.path = path
        self.config = config
        self.vit = vit
        self.projector = projector

    @property
    def n_tokens(self) -> int:
        """Image tokens per image: (image_size / patch_size / n_merge)^2."""
        side = self.config.image_size // self.config.patch_size // self.config.n_merge
        return side * side

    @property
    def n_embd_text(self) -> int:
        if isinstance(self.projector, Gemma3Projector):
            return int(self.projector.input_projection.shape[1])
        return int(self.projector.b2.shape[0])

    def encode(self, data: bytes) -> Array:
        """Encoded image bytes -> (n_tokens, D_text). Raises InvalidImage."""
        return self.encode_pixels(decode_image(data))

    def encode_pixels(self, pixels: Pixels) -> Array:
        """(H, W, 3) uint8 RGB -> (n_tokens, D_text)."""
        return self.forward(preprocess(pixels, self.config))

    def forward(self, image: Array) -> Array:
        """(3, S, S) normalized float32 -> (n_tokens, D_text)."""
        x = vit_features(embed_patches(image, self.vit, self.config), self.vit, self.config)
        if isinstance(self.projector, Gemma3Projector):
            return project_gemma3(x, self.projector, self.config)
        return project_mlp(x, self.projector, self.vit.class_embedding is not None)


def load_projector(path: str | Path) -> VisionEncoder:
    """Load a llama.cpp mmproj GGUF (projector type gemma3 or mlp). Raises GGUFError when the
    file is not a supported projector."""
    path = Path(path)
    gguf = GGUFFile(path)
    if gguf.metadata.get("general.architecture") != "clip":
        raise GGUFError(f"{path.name} is not a projector (general.architecture is not 'clip')")
    cfg = VisionConfig.from_gguf(gguf.metadata)
    tensors = gguf.tensors

    def need(name: str) -> str:
        if name not in tensors:
            raise GGUFError(f"projector tensor {name!r} is missing")
        return name

    def vec(name: str) -> Array:
        return np.ascontiguousarray(gguf.tensor(need(name)), dtype=F32)

    def opt_vec(name: str) -> Array | None:
        return vec(name) if name in tensors else None

    def norm(prefix: str) -> LayerNormWeights:
        return LayerNormWeights(vec(prefix + ".weight"), vec(prefix + ".bias"))

    def opt_norm(prefix: str) -> LayerNormWeights | None:
        return norm(prefix) if prefix + ".weight" in tensors else None

    def lin(name: str) -> Linear:
        t = tensors[need(name)]
        return Linear((matrix_from_gguf([(gguf.raw(name), t.ggml_type, t.shape)]),))  # type: ignore[list-item]

    name = need("v.patch_embd.weight")
    D, P = cfg.n_embd, cfg.patch_size
    f16 = tensors[name].ggml_type != GGMLType.BF16
    kernel = vec(name).reshape(D, 3 * P * P)  # (D, 3, P, P) flattened
    if f16:
        kernel = kernel.astype(np.float16).astype(F32)
    layers = []
    for il in range(cfg.n_layer):
        p = f"v.blk.{il}."
        up, down = p + "ffn_up", p + "ffn_down"
        if tensors[need(down + ".weight")].shape[-1] == D:
            # clip.cpp is_ffn_swapped: some old conversions named the up projection
            # ffn_down; llama.cpp swaps by shape (ffn_down taking n_embd inputs), and so do we
            up, down = down, up
        layers.append(
            VitLayer(
                ln1=norm(p + "ln1"),
                wq=lin(p + "attn_q.weight"), bq=vec(p + "attn_q.bias"),
                wk=lin(p + "attn_k.weight"), bk=vec(p + "attn_k.bias"),
                wv=lin(p + "attn_v.weight"), bv=vec(p + "attn_v.bias"),
                wo=lin(p + "attn_out.weight"), bo=vec(p + "attn_out.bias"),
                ln2=norm(p + "ln2"),
                w_up=lin(up + ".weight"), b_up=vec(up + ".bias"),
                w_down=lin(down + ".weight"), b_down=vec(down + ".bias"),
            )
        )  # fmt: skip
    mlp = cfg.projector_type == "mlp"
    vit = VitWeights(
        patch=np.ascontiguousarray(kernel.T, dtype=np.float64),
        patch_f16=f16,
        patch_bias=opt_vec("v.patch_embd.bias"),
        class_embedding=opt_vec("v.class_embd") if mlp else None,
        position=vec("v.position_embd.weight"),
        pre_ln=opt_norm("v.pre_ln"),
        layers=tuple(layers),
        post_ln=opt_norm("v.post_ln"),
    )
    n_pos = (cfg.image_size // P) ** 2 + (vit.class_embedding is not None)
    if vit.position.shape != (n_pos, D):
        raise GGUFError(f"v.position_embd.weight is {vit.position.shape}, expected {(n_pos, D)}")
    projector: Gemma3Projector | MlpProjector
    if mlp:
        if "mm.3.weight" in tensors:
            raise GGUFError("an mlp projector with mm.3 (Yi-style mlp_norm) is not supported")
        projector = MlpProjector(
            lin("mm.0.weight"), vec("mm.0.bias"), lin("mm.2.weight"), vec("mm.2.bias")
        )
    else:
        projector = Gemma3Projector(
            soft_emb_norm=vec("mm.soft_emb_norm.weight"),
            input_projection=vec("mm.input_projection.weight"),
            rounding=vec_dot_rounding(tensors["mm.input_projection.weight"].ggml_type),
        )
    return VisionEncoder(path, cfg, vit, projector)
