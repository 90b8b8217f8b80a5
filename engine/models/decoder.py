"""Decoder-only transformer forward pass (llama, qwen2, qwen3, gemma3) with a KV cache.

Follows llama.cpp's `src/models/{llama,qwen2,qwen3,gemma3}.cpp` (spec: gguf-and-models.md
section 4). Weights are dequantized once at load into float32, QKV and gate/up fused.

Weight orientation: every matrix is held (in, out), so a layer is `y = x @ W` (the transpose of
GGUF's NumPy shape (out, in), done once at load), as engine/models/blockmatmul.py's `QuantMatrix`
(integers and block scales) or `FloatMatrix`. When the output matrix is tied to `token_embd`,
token lookup reads its columns.

Determinism: a request's numbers are a function of the model file and the tokens only, never of
the BLAS kernel, thread count, SIMD dispatch, CPU, batch shape or prompt chunking:
* weight products are engine/models/blockmatmul.py's: exact integer block sums from BLAS, scales and
  block order applied by NumPy elementwise in a fixed order (float weights: exactly rounded);
* attention's q.k and p.v are exactly rounded dot products (engine/models/attention.py);
* exp/tanh are engine/models/numerics.py's IEEE-only versions, RoPE tables engine/models/rope.py's;
* norms and softmax sums reduce along a fixed-length axis (NumPy's pairwise sum, the same code
  on every CPU);
* every function is row-wise, so a row is computed the same in a prefill of any chunking and in
  one-token decode: cached rows can be reused whichever way they were computed.
tests/engine/test_determinism.py checks this across OPENBLAS_CORETYPE, OPENBLAS_NUM_THREADS and
NPY_DISABLE_CPU_FEATURES in subprocesses.

Precision: float32 throughout, except the RMSNorm sum of squares (float64, as ggml), RoPE angles
(float64, see engine/models/rope.py) and the exactly rounded dot products. By default
(numerics=LLAMA_CPP) activations are rounded to the weight type's llama.cpp dot-product type and k,
v, q and attention probabilities to F16, as llama.cpp does; numerics=FLOAT32 keeps plain float32
(spec section 4.9). The order in which block sums are combined is ours, not llama.cpp's (which
differs between its AVX2 and AVX512 builds), so logits agree with llama.cpp as closely as llama.cpp
agrees with itself across batch regimes, not bit for bit (engine/exact/llama.py is the bit-exact,
slow emulation).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.errors import Cancelled, GGUFError, ModelTooLarge
from engine.gguf.reader import GGUFFile
from engine.models import parallel
from engine.models.attention import attention, attention_steps
from engine.models.base import LoadedModel
from engine.models.blockmatmul import (
    FloatMatrix,
    Matrix,
    matmul,
    matrix_from_gguf,
    output_columns,
    rounded_matmul,
)
from engine.models.config import ModelConfig
from engine.models.kvcache import KEY_BLOCK, KVCache, cache_bytes
from engine.models.numerics import (
    LLAMA_CPP,
    Numerics,
    exp_f32,
    gelu_f16_table,
    gelu_tanh,
    round_f16,
    tanh_f32,
)
from engine.models.rope import Rope
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

F32 = np.float32
Array = npt.NDArray[np.float32]

DEFAULT_MEMORY_FRACTION = 0.8  # of MemAvailable, when no explicit budget is given
DEFAULT_NUM_BATCH = 512


@dataclass(frozen=True)
class Linear:
    """y = x @ W, W (in, out) stored as column parts, one per GGML weight type (each has its own
    activation rounding and block layout; engine/models/blockmatmul.py)."""

    parts: tuple[Matrix, ...]  # outputs concatenated


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: Array  # (D,)
    wqkv: Linear  # (D, H*Dh + Hkv*Dh + Hkv*Dv): q, k, v columns
    bqkv: Array | None  # (H*Dh + Hkv*Dh + Hkv*Dv,)
    q_norm: Array | None  # (Dh,)
    k_norm: Array | None  # (Dh,)
    wo: Linear  # (H*Dv, D)
    bo: Array | None  # (D,)
    post_attn_norm: Array | None  # (D,)
    ffn_norm: Array  # (D,)
    w_gate_up: Linear  # (D, 2F): gate columns, then up
    w_down: Linear  # (F, D)
    post_ffn_norm: Array | None  # (D,)


@dataclass(frozen=True)
class Weights:
    token_embd: Array | None  # (V, D) lookup table; None when tied to `output`
    output_norm: Array  # (D,)
    output: Matrix  # (D, V)
    output_bias: Array | None  # (V,)
    layers: tuple[LayerWeights, ...]
    rope_factors: tuple[float, ...] | None  # (n_rot/2,) from rope_freqs.weight


def memory_needed(
    gguf: GGUFFile, config: ModelConfig, num_ctx: int, numerics: Numerics = LLAMA_CPP
) -> int:
    """Bytes to hold the float32 weights, a `num_ctx` KV cache (`cache_bytes`: float16 elements
    with llama.cpp's numerics, float32 otherwise, as KVCache stores them, and their KeyStats)
    and the load-time scratch."""
    weights = sum(t.n_elements for t in gguf.tensors.values()) * 4
    largest = max(t.n_elements for t in gguf.tensors.values()) * 4
    capacity = -(-num_ctx // KEY_BLOCK) * KEY_BLOCK
    kv = cache_bytes(
        config.n_layer, config.n_head_kv, config.head_dim, config.head_dim_v, capacity,
        numerics.kv_f16,
    )  # fmt: skip
    return weights + kv + 2 * largest


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); total physical memory where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_weights(gguf: GGUFFile, config: ModelConfig) -> Weights:
    """Dequantize every tensor once into float32, (in, out) orientation, QKV and gate/up fused."""
    tensors = gguf.tensors

    def vec(name: str) -> Array:
        return np.ascontiguousarray(gguf.tensor(name), dtype=F32)

    def opt(name: str) -> Array | None:
        return vec(name) if name in tensors else None

    def matrix(names: list[str]) -> Matrix:
        return matrix_from_gguf(
            [(gguf.raw(n), tensors[n].ggml_type, tensors[n].shape) for n in names]  # type: ignore[misc]
        )

    def fused(names: list[str]) -> Linear:
        # Neighbours of one GGML type are stacked along out into one matrix.
        groups: list[list[str]] = []
        for name in names:
            if groups and tensors[groups[-1][0]].ggml_type == tensors[name].ggml_type:
                groups[-1].append(name)
            else:
                groups.append([name])
        return Linear(tuple(matrix(group) for group in groups))

    for name in ("token_embd.weight", "output_norm.weight"):
        if name not in tensors:
            raise GGUFError(f"tensor {name!r} is missing")
    layers = []
    for il in range(config.n_layer):
        p = f"blk.{il}."
        qkv = [f"{p}attn_q.weight", f"{p}attn_k.weight", f"{p}attn_v.weight"]
        missing = [n for n in qkv if n not in tensors]
        if missing:
            raise GGUFError(f"tensor {missing[0]!r} is missing")
        biases = [n.replace(".weight", ".bias") for n in qkv]
        has_bias = [b in tensors for b in biases]
        bqkv = None
        if any(has_bias):
            bqkv = np.concatenate(
                [
                    vec(b) if present else np.zeros(tensors[w].shape[0], F32)
                    for b, w, present in zip(biases, qkv, has_bias, strict=True)
                ]
            )
        traits = config.traits
        layers.append(
            LayerWeights(
                attn_norm=vec(f"{p}attn_norm.weight"),
                wqkv=fused(qkv),
                bqkv=bqkv,
                q_norm=vec(f"{p}attn_q_norm.weight") if traits.qk_norm else None,
                k_norm=vec(f"{p}attn_k_norm.weight") if traits.qk_norm else None,
                wo=fused([f"{p}attn_output.weight"]),
                bo=opt(f"{p}attn_output.bias"),
                post_attn_norm=vec(f"{p}post_attention_norm.weight") if traits.post_norms else None,
                ffn_norm=vec(f"{p}ffn_norm.weight"),
                w_gate_up=fused([f"{p}ffn_gate.weight", f"{p}ffn_up.weight"]),
                w_down=fused([f"{p}ffn_down.weight"]),
                post_ffn_norm=vec(f"{p}post_ffw_norm.weight") if traits.post_norms else None,
            )
        )
    out_name = "token_embd.weight" if "output.weight" not in tensors else "output.weight"
    factors = opt("rope_freqs.weight")
    return Weights(
        token_embd=None if out_name == "token_embd.weight" else vec("token_embd.weight"),
        output_norm=vec("output_norm.weight"),
        output=matrix([out_name]),
        output_bias=opt("output.bias"),
        layers=tuple(layers),
        rope_factors=None if factors is None else tuple(float(f) for f in factors),
    )


def linear(x: Array, w: Linear, numerics: Numerics) -> Array:
    """(T, K) @ (K, N) -> (T, N), part by part (engine/models/blockmatmul.py)."""
    outs = []
    for part in w.parts:
        if numerics.quantize_activations:
            outs.append(matmul(x, part))
            continue
        # plain float32 activations: the exactly rounded product with the dequantized weight
        x64 = np.ascontiguousarray(x, dtype=np.float64)
        if isinstance(part, FloatMatrix):
            w64 = part.w
        else:
            w64 = output_columns(part, np.arange(part.q.shape[1])).astype(np.float64)
        norm_x = np.sqrt(np.square(x64).sum(axis=-1))
        outs.append(rounded_matmul(x64, w64, norm_x, np.sqrt(np.square(w64).sum(axis=0))))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)


def rms_norm(x: Array, w: Array, eps: float) -> Array:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; sum of squares in float64 as ggml."""
    mean = (np.square(x).astype(np.float64).sum(axis=-1, keepdims=True) / x.shape[-1]).astype(F32)
    return x * (F32(1.0) / np.sqrt(mean + F32(eps))) * w


def silu(x: Array) -> Array:
    return x / (F32(1.0) + exp_f32(-x))  # exp(-x) is inf for x < -88: silu is then -0


class Probe(Protocol):
    """Receives intermediate arrays of a forward pass (engine inspection; never changes them).

    Called as probe(layer, name, value) with names "attn_in" (normed input), "q", "k", "v" (after
    RoPE and roundings, (T, heads, Dh)), "attn_out" (attention after wo, (T, D)), "ffn_out" and
    "residual" (the layer's output, (T, D)); layer -1 with "embedding" before the first layer.
    Arrays cover every row of the call; callers that batch sequences get them concatenated.
    """

    def __call__(self, layer: int, name: str, value: Array) -> None: ...


@dataclass(frozen=True)
class Segment:
    """One sequence's new tokens in a forward pass, and the cache they extend.

    With `embeddings`, the rows' inputs are those vectors (image tokens from
    engine/models/vision.py; not scaled like token embeddings, as llama.cpp) and `tokens` only
    label the cache rows. `bidirectional` rows also see the later rows of the segment (llama.cpp's
    non-causal decode of Gemma 3 image tokens).
    """

    tokens: npt.NDArray[np.int64]  # (T,)
    cache: KVCache
    embeddings: Array | None = None  # (T, D)
    bidirectional: bool = False


def _check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled("evaluation cancelled")


def _layer(
    x: Array,
    w: LayerWeights,
    cfg: ModelConfig,
    rope: Rope,
    trig: tuple[Array, Array],
    segments: Sequence[Segment],
    il: int,
    numerics: Numerics,
    probe: Probe | None,
) -> Array:
    """One transformer block over the rows of every segment: (T, D) -> (T, D).

    Every step but attention is row-wise, so the rows of all segments go through it as one
    matrix; attention runs per segment over its own cache, where this layer's k, v are written,
    the one-token segments of a decode step together (`attention_steps`, the same bits).
    """
    T = x.shape[0]
    H, Hkv, Dh, Dv = cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v
    eps = cfg.norm_eps
    h = rms_norm(x, w.attn_norm, eps)
    qkv = linear(h, w.wqkv, numerics)  # (T, H*Dh + Hkv*Dh + Hkv*Dv)
    if w.bqkv is not None:
        qkv = qkv + w.bqkv
    q = qkv[:, : H * Dh].reshape(T, H, Dh)
    k = qkv[:, H * Dh : (H + Hkv) * Dh].reshape(T, Hkv, Dh)
    v = qkv[:, (H + Hkv) * Dh :].reshape(T, Hkv, Dv)
    if w.q_norm is not None and w.k_norm is not None:
        q = rms_norm(q, w.q_norm, eps)
        k = rms_norm(k, w.k_norm, eps)
    cos, sin = trig  # (T, n_rot/2): `rope.cos_sin` of the rows' positions
    q = rope.apply(q, cos[:, None], sin[:, None])
    k = rope.apply(k, cos[:, None], sin[:, None])
    # gemma3 scales q before q.k (llama.cpp: ggml_scale, then kq_scale 1); the others scale
    # inside the softmax.
    scale = cfg.attention_scale
    if cfg.traits.prescale_q:
        q, scale = q * F32(scale), 1.0
    if numerics.kv_f16:
        q, k, v = round_f16(q), round_f16(k), round_f16(v)
    if probe is not None:
        probe(il, "attn_in", h)
        probe(il, "q", q)
        probe(il, "k", k)
        probe(il, "v", v)
    window = cfg.sliding_window if cfg.swa_layers[il] else 0
    a = np.empty((T, H, Dv), F32)
    steps, row = [], 0  # (row, segment) of the one-token segments, attended to together
    for seg in segments:
        n, pos0, cache = len(seg.tokens), seg.cache.n_past, seg.cache
        cache.write(il, pos0, k[row : row + n], v[row : row + n])
        if n == 1 and not seg.bidirectional:
            steps.append((row, seg))
        else:
            span = (pos0, pos0 + n) if seg.bidirectional else None
            a[row : row + n] = attention(
                q[row : row + n], cache.k[il], cache.v[il], pos0, window, scale, numerics.kv_f16,
                span, cache.stats(il),
            )  # fmt: skip
        row += n
    if steps:
        rows = [r for r, _ in steps]
        a[rows] = attention_steps(
            q[rows], [s.cache.k[il] for _, s in steps], [s.cache.v[il] for _, s in steps],
            [s.cache.n_past for _, s in steps], window, scale, numerics.kv_f16,
            [s.cache.stats(il) for _, s in steps],
        )  # fmt: skip
    a = linear(a.reshape(T, H * Dv), w.wo, numerics)  # (T, D)
    if w.bo is not None:
        a = a + w.bo
    if w.post_attn_norm is not None:
        a = rms_norm(a, w.post_attn_norm, eps)
    x = x + a
    h = rms_norm(x, w.ffn_norm, eps)
    gu = linear(h, w.w_gate_up, numerics)  # (T, 2F)
    gate, up = gu[:, : cfg.n_ff], gu[:, cfg.n_ff :]
    if cfg.traits.gelu:
        act = gelu_f16_table(gate) if numerics.kv_f16 else gelu_tanh(gate)
    else:
        act = silu(gate)
    f = linear(act * up, w.w_down, numerics)  # (T, D)
    if w.post_ffn_norm is not None:
        f = rms_norm(f, w.post_ffn_norm, eps)
    if probe is not None:
        probe(il, "attn_out", a)
        probe(il, "ffn_out", f)
        probe(il, "residual", x + f)
    return x + f


def _inputs(weights: Weights, cfg: ModelConfig, seg: Segment) -> Array:
    """A segment's input rows (T, D): its embeddings, or its tokens' (scaled for gemma3)."""
    if seg.embeddings is not None:
        return seg.embeddings
    if weights.token_embd is not None:
        x = weights.token_embd[seg.tokens]
    else:
        x = output_columns(weights.output, seg.tokens).T  # tied: columns of the output matrix
    if cfg.traits.embed_scale:
        x = x * F32(math.sqrt(cfg.n_embd))
    return x


@parallel.single_threaded_blas()
def forward(
    weights: Weights,
    cfg: ModelConfig,
    ropes: tuple[Rope, ...],
    segments: Sequence[Segment],
    numerics: Numerics,
    *,
    probe: Probe | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Array:
    """Run each segment's new tokens at its cache's positions n_past.. and append them to it.

    Returns the final-normed hidden states (T, D), the segments' rows in order. Each row's value
    is the same whichever other segments share the call. The caller checks that they fit.
    Raises Cancelled between layers once `cancelled()` is true; the caches then hold no new rows.
    """
    x = np.concatenate([_inputs(weights, cfg, s) for s in segments])  # (T, D)
    if probe is not None:
        probe(-1, "embedding", x)
    positions = np.concatenate(
        [np.arange(s.cache.n_past, s.cache.n_past + len(s.tokens)) for s in segments]
    )
    trig: dict[int, tuple[Array, Array]] = {}  # cos and sin once per distinct rope, not per layer
    for il, (w, rope) in enumerate(zip(weights.layers, ropes, strict=True)):
        _check_cancelled(cancelled)
        if id(rope) not in trig:
            trig[id(rope)] = rope.cos_sin(positions)
        x = _layer(x, w, cfg, rope, trig[id(rope)], segments, il, numerics, probe)
    for seg in segments:
        seg.cache.append(seg.tokens)
    return rms_norm(x, weights.output_norm, cfg.norm_eps)


@parallel.single_threaded_blas()
def output_logits(weights: Weights, cfg: ModelConfig, hidden: Array, numerics: Numerics) -> Array:
    """(T, D) final-normed hidden states -> (T, V) logits."""
    logits = linear(hidden, Linear((weights.output,)), numerics)[:, : cfg.n_vocab]
    if weights.output_bias is not None:
        logits = logits + weights.output_bias
    if cfg.final_softcap:
        c = F32(cfg.final_softcap)
        logits = c * tanh_f32(logits / c)
    return logits


class Model(LoadedModel[ModelConfig, Weights]):
    """A loaded model: config, tokenizer, float32 weights, and the cache-based forward API."""

    def __init__(
        self,
        path: Path,
        config: ModelConfig,
        tokenizer: Tokenizer,
        weights: Weights | None,
        numerics: Numerics = LLAMA_CPP,
    ) -> None:
        super().__init__(path, config, tokenizer, weights, numerics)
        self.ropes = config.ropes(None if weights is None else weights.rope_factors)

    def new_cache(self, num_ctx: int) -> KVCache:
        cfg = self.config
        return KVCache(
            num_ctx=num_ctx,
            n_head_kv=cfg.n_head_kv,
            head_dim_k=cfg.head_dim,
            head_dim_v=cfg.head_dim_v,
            ropes=self.ropes,
            f16=self.numerics.kv_f16,
        )

    @property
    def weights(self) -> Weights:
        """The float32 weights (engine/models/inspection.py reads them); RuntimeError for a model
        loaded with vocab_only=True."""
        return self._weights_or_raise()

    def _segment(self, tokens: Sequence[int] | npt.NDArray[np.int64], cache: KVCache) -> Segment:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("eval needs at least one token")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
        return Segment(ids, cache)

    def _hidden(
        self,
        tokens: Sequence[int] | npt.NDArray[np.int64],
        cache: KVCache,
        num_batch: int,
        probe: Probe | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[Array]:
        """Prefill `tokens` into `cache` in chunks of `num_batch`; yields (T_chunk, D) states."""
        weights = self._weights_or_raise()
        if num_batch < 1:
            raise ValueError(f"num_batch must be >= 1, got {num_batch}")
        seg = self._segment(tokens, cache)
        cache.reserve(len(seg.tokens))
        for start in range(0, len(seg.tokens), num_batch):
            chunk = Segment(seg.tokens[start : start + num_batch], cache)
            yield forward(
                weights, self.config, self.ropes, [chunk], self.numerics,
                probe=probe, cancelled=cancelled,
            )  # fmt: skip

    def eval(
        self,
        tokens: Sequence[int] | npt.NDArray[np.int64],
        cache: KVCache,
        num_batch: int = DEFAULT_NUM_BATCH,
        last_only: bool = False,
        *,
        probe: Probe | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """Append `tokens` to `cache`; logits (T, V) for every new token, or (1, V) last_only.

        Raises ContextOverflow (before computing anything) when they do not fit, and Cancelled
        between layers once `cancelled()` is true (chunks already done stay in the cache).
        """
        weights = self._weights_or_raise()
        chunks = list(self._hidden(tokens, cache, num_batch, probe, cancelled))
        if last_only:
            return output_logits(weights, self.config, chunks[-1][-1:], self.numerics)
        return np.concatenate(
            [output_logits(weights, self.config, h, self.numerics) for h in chunks]
        )

    def eval_many(
        self,
        requests: Sequence[tuple[Sequence[int], KVCache]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Array]:
        """One forward over the new tokens of several sequences, each extending its own cache.

        Returns each request's logits (1, V) for its last new token. The rows of every sequence
        are exactly what `eval` computes for it alone (the forward pass is row-wise but for
        attention, which is per sequence), so batching never changes a request's bytes. The
        caches must be distinct. Raises ContextOverflow before computing anything when one
        does not fit.
        """
        weights = self._weights_or_raise()
        segments = [self._segment(tokens, cache) for tokens, cache in requests]
        if len({id(s.cache) for s in segments}) != len(segments):
            raise ValueError("eval_many: each request needs its own cache")
        for seg in segments:
            seg.cache.reserve(len(seg.tokens))
        hidden = forward(
            weights, self.config, self.ropes, segments, self.numerics, cancelled=cancelled
        )
        ends = np.cumsum([len(s.tokens) for s in segments]) - 1
        logits = output_logits(weights, self.config, hidden[ends], self.numerics)
        return [logits[i : i + 1] for i in range(len(segments))]

    def eval_embeddings(
        self,
        embeddings: Array,
        labels: Sequence[int],
        cache: KVCache,
        *,
        bidirectional: bool,
        last_only: bool = True,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """Append rows given as input vectors (T, D) (image tokens) in one forward pass.

        `labels` are the ids the cache records for them (they never index the vocabulary).
        `bidirectional`: the rows see each other both ways. Returns logits (1, V) of the last
        row, or (T, V) unless `last_only`.
        """
        weights = self._weights_or_raise()
        T, D = embeddings.shape
        if T == 0 or T != len(labels) or D != self.config.n_embd:
            shape, n = embeddings.shape, self.config.n_embd
            raise ValueError(f"embeddings {shape} do not match {len(labels)} rows of D={n}")
        cache.reserve(T)
        seg = Segment(np.asarray(labels, np.int64), cache, embeddings.astype(F32), bidirectional)
        hidden = forward(
            weights, self.config, self.ropes, [seg], self.numerics, cancelled=cancelled
        )
        rows = hidden[-1:] if last_only else hidden
        return output_logits(weights, self.config, rows, self.numerics)

    def logits(self, tokens: Sequence[int] | npt.NDArray[np.int64]) -> Array:
        """Logits (T, V) for a fresh sequence."""
        return self.eval(tokens, self.new_cache(max(len(tokens), 1)))

    def embed(
        self,
        tokens: Sequence[int] | npt.NDArray[np.int64],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """Final-normed hidden states (T, D) of a fresh sequence (pooled by the server).

        Raises Cancelled between layers once `cancelled()` is true.
        """
        if len(tokens) == 0:
            raise ValueError("embed needs at least one token")
        cache = self.new_cache(len(tokens))
        chunks = self._hidden(tokens, cache, DEFAULT_NUM_BATCH, cancelled=cancelled)
        return np.concatenate(list(chunks))


def load(
    source: str | Path | GGUFFile,
    *,
    num_ctx_hint: int = 2048,
    vocab_only: bool = False,
    memory_budget: int | None = None,
    numerics: Numerics = LLAMA_CPP,
) -> Model:
    """Load a GGUF model: config and tokenizer, plus float32 weights unless `vocab_only`.

    The bytes needed (weights, a KV cache of `num_ctx_hint` positions, load scratch) are
    computed first; ModelTooLarge is raised when they exceed `memory_budget` (default:
    DEFAULT_MEMORY_FRACTION of the memory available now). `numerics` picks llama.cpp's
    roundings (the default, engine/models/numerics.py) or plain float32. `source` is the file's
    path or its already parsed GGUFFile (parsing Gemma 3's vocabulary takes ~0.25 s).
    """
    t0 = time.perf_counter()
    gguf = source if isinstance(source, GGUFFile) else GGUFFile(source)
    path = gguf.path
    config = ModelConfig.from_gguf(gguf.metadata)
    if vocab_only:
        return Model(path, config, Tokenizer.from_gguf(gguf), None, numerics)
    needed = memory_needed(gguf, config, num_ctx_hint, numerics)
    budget = memory_budget
    if budget is None:
        budget = int(available_memory() * DEFAULT_MEMORY_FRACTION)
    if needed > budget:
        raise ModelTooLarge(needed, budget)
    # The tokenizer is built while the weights convert: the weights' NumPy work releases the
    # GIL that the tokenizer's Python needs (Gemma 3 here: 3.9 -> 3.2 s).
    with ThreadPoolExecutor(1, "refllama-tokenizer") as pool:
        building = pool.submit(Tokenizer.from_gguf, gguf)
        weights = load_weights(gguf, config)
        tokenizer = building.result()
    log.info("loaded %s (%s) in %.2fs", path.name, config.arch, time.perf_counter() - t0)
    return Model(path, config, tokenizer, weights, numerics)
