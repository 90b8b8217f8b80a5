"""Encoder-only embedding models: `bert` (absolute positions, GELU) and `nomic-bert` (RoPE, SwiGLU).

Follows llama.cpp's `src/models/bert.cpp`, which builds both: token embedding plus token type 0
(llama.cpp hard-codes "sentence A") plus, for bert, the learned position embedding, a LayerNorm,
then per layer post-norm blocks: x = LN(x + attn(x)), x = LN(x + ffn(x)). Attention sees every
token of the sequence (not causal) and there is no final norm. Pooling (the GGUF's
`{arch}.pooling_type`) and normalisation are the server's (server/embeddings.py).

Weight orientation and products are engine/models/decoder.py's (`Linear`, (in, out), F16 weights
multiply activations rounded to F16 as llama.cpp does). Attention keeps q, k, v and the
probabilities in float32, as llama.cpp's cache-less path does (no F16 KV cache, no flash
attention in llama-cpp-python's default); its q.k and p.v are exactly rounded dot products.
Precision: float32, LayerNorm sums in float64 as ggml's `ggml_compute_forward_norm_f32`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import Cancelled, GGUFError, ModelTooLarge
from engine.gguf.reader import GGUFFile
from engine.models.base import LoadedModel
from engine.models.blockmatmul import matrix_from_gguf, rounded_matmul
from engine.models.decoder import (
    DEFAULT_MEMORY_FRACTION,
    Linear,
    available_memory,
    linear,
    silu,
)
from engine.models.numerics import LLAMA_CPP, Numerics, exp_f32, gelu_f16_table, gelu_tanh
from engine.models.rope import Rope
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

F32 = np.float32
F64 = np.float64
Array = npt.NDArray[np.float32]

BERT_ARCHS = ("bert", "nomic-bert")
QUERY_CHUNK = 128  # query rows per score matrix: bounds memory at (H, QUERY_CHUNK, T)


def _required(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise GGUFError(f"required metadata key {key!r} is missing")
    return meta[key]


@dataclass(frozen=True)
class BertConfig:
    """Hyperparameters from GGUF metadata (llama.cpp `load_arch_hparams` for bert, nomic-bert)."""

    arch: str
    n_vocab: int  # V
    n_ctx_train: int
    n_embd: int  # D
    n_layer: int  # L
    n_ff: int  # F
    n_head: int  # H
    head_dim: int  # Dh
    norm_eps: float
    rope_base: float  # nomic-bert only
    pooling_type: int  # 0 none, 1 mean, 2 cls, 3 last (server/embeddings.py pools)

    @property
    def rotary(self) -> bool:
        return self.arch == "nomic-bert"

    @classmethod
    def from_gguf(cls, meta: dict[str, Any]) -> BertConfig:
        arch = str(_required(meta, "general.architecture"))
        if arch not in BERT_ARCHS:
            raise GGUFError(f"architecture {arch!r} is not an encoder ({', '.join(BERT_ARCHS)})")
        if meta.get(f"{arch}.attention.causal", False):
            raise GGUFError(f"{arch}.attention.causal is true; only bidirectional is supported")
        n_embd = int(_required(meta, f"{arch}.embedding_length"))
        n_head = int(_required(meta, f"{arch}.attention.head_count"))
        if int(meta.get(f"{arch}.attention.head_count_kv", n_head)) != n_head:
            raise GGUFError(f"{arch}: grouped key/value heads are not supported")
        tokens = meta.get("tokenizer.ggml.tokens")
        n_vocab = meta.get(f"{arch}.vocab_size", None if tokens is None else len(tokens))
        if n_vocab is None:
            raise GGUFError(f"required metadata key '{arch}.vocab_size' is missing")
        return cls(
            arch=arch,
            n_vocab=int(n_vocab),
            n_ctx_train=int(_required(meta, f"{arch}.context_length")),
            n_embd=n_embd,
            n_layer=int(_required(meta, f"{arch}.block_count")),
            n_ff=int(_required(meta, f"{arch}.feed_forward_length")),
            n_head=n_head,
            head_dim=n_embd // n_head,
            norm_eps=float(_required(meta, f"{arch}.attention.layer_norm_epsilon")),
            rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            pooling_type=int(meta.get(f"{arch}.pooling_type", 0)),
        )


@dataclass(frozen=True)
class BertLayer:
    wqkv: Linear  # (D, 3*H*Dh): q, k, v columns
    bqkv: Array | None  # (3*H*Dh,)
    wo: Linear  # (H*Dh, D)
    bo: Array | None  # (D,)
    attn_norm: tuple[Array, Array]  # LayerNorm weight, bias (D,) after attention
    w_up: Linear  # (D, F), or (D, 2F) gate then up for SwiGLU
    b_up: Array | None  # (F,)
    w_down: Linear  # (F, D)
    b_down: Array | None  # (D,)
    out_norm: tuple[Array, Array]  # LayerNorm weight, bias (D,) after the FFN


@dataclass(frozen=True)
class BertWeights:
    token_embd: Array  # (V, D)
    type_embd: Array | None  # (D,) token type 0
    pos_embd: Array | None  # (n_ctx_train, D), bert only
    embd_norm: tuple[Array, Array]  # (D,), (D,)
    layers: tuple[BertLayer, ...]
    swiglu: bool  # nomic-bert's FFN: silu(gate) * up


def load_bert_weights(gguf: GGUFFile, cfg: BertConfig) -> BertWeights:
    """Dequantize every tensor once into float32, matrices (in, out), q/k/v and gate/up fused."""
    tensors = gguf.tensors

    def need(name: str) -> None:
        if name not in tensors:
            raise GGUFError(f"tensor {name!r} is missing")

    def vec(name: str) -> Array:
        need(name)
        return np.ascontiguousarray(gguf.tensor(name), dtype=F32)

    def opt(name: str) -> Array | None:
        return vec(name) if name in tensors else None

    def fused(names: list[str]) -> Linear:
        for name in names:
            need(name)
        groups: list[list[str]] = []  # neighbours of one GGML type stacked along out
        for name in names:
            if groups and tensors[groups[-1][0]].ggml_type == tensors[name].ggml_type:
                groups[-1].append(name)
            else:
                groups.append([name])
        return Linear(
            tuple(
                matrix_from_gguf(
                    [(gguf.raw(n), tensors[n].ggml_type, tensors[n].shape) for n in group]  # type: ignore[misc]
                )
                for group in groups
            )
        )

    def norm(name: str) -> tuple[Array, Array]:
        return vec(f"{name}.weight"), vec(f"{name}.bias")

    swiglu = cfg.arch == "nomic-bert"
    layers = []
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        if f"{p}attn_qkv.weight" in tensors:
            wqkv, bqkv = fused([f"{p}attn_qkv.weight"]), opt(f"{p}attn_qkv.bias")
        else:
            names = [f"{p}attn_{x}.weight" for x in "qkv"]
            wqkv = fused(names)
            biases = [opt(n.replace(".weight", ".bias")) for n in names]
            bqkv = None
            if any(b is not None for b in biases):
                D = cfg.n_embd
                bqkv = np.concatenate([np.zeros(D, F32) if b is None else b for b in biases])
        up = [f"{p}ffn_gate.weight", f"{p}ffn_up.weight"] if swiglu else [f"{p}ffn_up.weight"]
        layers.append(
            BertLayer(
                wqkv=wqkv,
                bqkv=bqkv,
                wo=fused([f"{p}attn_output.weight"]),
                bo=opt(f"{p}attn_output.bias"),
                attn_norm=norm(f"{p}attn_output_norm"),
                w_up=fused(up),
                b_up=opt(f"{p}ffn_up.bias"),
                w_down=fused([f"{p}ffn_down.weight"]),
                b_down=opt(f"{p}ffn_down.bias"),
                out_norm=norm(f"{p}layer_output_norm"),
            )
        )
    types = opt("token_types.weight")
    return BertWeights(
        token_embd=vec("token_embd.weight"),
        type_embd=None if types is None else types.reshape(-1, cfg.n_embd)[0].copy(),
        pos_embd=None if cfg.rotary else vec("position_embd.weight"),
        embd_norm=norm("token_embd_norm"),
        layers=tuple(layers),
        swiglu=swiglu,
    )


def layer_norm(x: Array, w: Array, b: Array, eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis, as ggml_norm_f32: the sums in
    float64, each squared deviation rounded to float32 first."""
    D = x.shape[-1]
    mean = (x.astype(F64).sum(axis=-1, keepdims=True) / D).astype(F32)
    c = x - mean
    var = (np.square(c).astype(F64).sum(axis=-1, keepdims=True) / D).astype(F32)
    return c * (F32(1.0) / np.sqrt(var + F32(eps))) * w + b


def _norm64(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.sqrt(np.square(x).sum(axis=-1))


def bidirectional_attention(q: Array, k: Array, v: Array, scale: float) -> Array:
    """softmax(scale * q.k) v with every query seeing every key: (T, H, Dh) x3 -> (T, H, Dh).

    As ggml_soft_max_ext: max subtracted, the denominator summed in float64, e times
    float(1 / sum); q.k and p.v exactly rounded (engine/models/blockmatmul.py)."""
    T, H, Dh = q.shape
    k64 = k.transpose(1, 0, 2).astype(F64)  # (H, T, Dh)
    v64 = v.transpose(1, 0, 2).astype(F64)  # (H, T, Dh)
    k_norm, v_max = _norm64(k64), np.abs(v64).max(axis=1)
    out = np.empty((H, T, Dh), F32)
    for t in range(0, T, QUERY_CHUNK):
        q64 = q[t : t + QUERY_CHUNK].transpose(1, 0, 2).astype(F64)  # (H, Tq, Dh)
        scores = rounded_matmul(q64, k64.transpose(0, 2, 1), _norm64(q64), k_norm)  # (H, Tq, T)
        scores = scores * F32(scale)
        e = exp_f32(scores - scores.max(axis=-1, keepdims=True))
        p = e * (1.0 / e.sum(axis=-1, dtype=F64)).astype(F32)[..., None]
        p64 = p.astype(F64)
        out[:, t : t + QUERY_CHUNK] = rounded_matmul(p64, v64, p64.sum(axis=-1), v_max)
    return out.transpose(1, 0, 2)


def _layer(
    x: Array,
    w: BertLayer,
    cfg: BertConfig,
    rope: Rope | None,
    lengths: Sequence[int],
    numerics: Numerics,
) -> Array:
    """One post-norm encoder block over the rows of several sequences: (N, D) -> (N, D).

    Every step but attention is row-wise, so all rows go through it as one matrix; attention
    runs per sequence (`lengths` rows each, in order)."""
    N = x.shape[0]
    H, Dh, eps = cfg.n_head, cfg.head_dim, cfg.norm_eps
    qkv = linear(x, w.wqkv, numerics)  # (N, 3*H*Dh)
    if w.bqkv is not None:
        qkv = qkv + w.bqkv
    q = qkv[:, : H * Dh].reshape(N, H, Dh)
    k = qkv[:, H * Dh : 2 * H * Dh].reshape(N, H, Dh)
    v = qkv[:, 2 * H * Dh :].reshape(N, H, Dh)
    if rope is not None:
        cos, sin = rope.cos_sin(np.concatenate([np.arange(n) for n in lengths]))  # (N, Dh/2)
        q = rope.apply(q, cos[:, None], sin[:, None])
        k = rope.apply(k, cos[:, None], sin[:, None])
    scale = 1.0 / math.sqrt(Dh)
    ends = np.cumsum(lengths)
    a = np.concatenate(
        [
            bidirectional_attention(q[e - n : e], k[e - n : e], v[e - n : e], scale)
            for n, e in zip(lengths, ends, strict=True)
        ]
    ).reshape(N, H * Dh)
    a = linear(a, w.wo, numerics)  # (N, D)
    if w.bo is not None:
        a = a + w.bo
    x = layer_norm(a + x, *w.attn_norm, eps)
    h = linear(x, w.w_up, numerics)  # (N, F) or (N, 2F)
    if w.b_up is not None:
        h = h + w.b_up
    if h.shape[1] == 2 * cfg.n_ff:  # SwiGLU: gate columns, then up
        act = silu(h[:, : cfg.n_ff]) * h[:, cfg.n_ff :]
    else:
        act = gelu_f16_table(h) if numerics.kv_f16 else gelu_tanh(h)
    f = linear(act, w.w_down, numerics)  # (N, D)
    if w.b_down is not None:
        f = f + w.b_down
    return layer_norm(f + x, *w.out_norm, eps)


class BertModel(LoadedModel[BertConfig, BertWeights]):
    """A loaded encoder: config, tokenizer, float32 weights, and `embed` (no generation)."""

    def __init__(
        self,
        path: Path,
        config: BertConfig,
        tokenizer: Tokenizer,
        weights: BertWeights | None,
        numerics: Numerics = LLAMA_CPP,
    ) -> None:
        super().__init__(path, config, tokenizer, weights, numerics)
        self.rope = (
            Rope(n_rot=config.head_dim, base=config.rope_base, neox=True) if config.rotary else None
        )

    def embed(
        self,
        tokens: Sequence[int] | npt.NDArray[np.int64],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """Hidden states (T, D) of the last layer for one sequence (pooled by the server).

        Raises ValueError for an empty, out-of-vocabulary or longer-than-trained input, and
        Cancelled between layers once `cancelled()` is true.
        """
        return self.embed_many([tokens], cancelled=cancelled)[0]

    def embed_many(
        self,
        sequences: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[Array]:
        """`embed` of several sequences in one forward pass: a (T_i, D) array each, in order.

        Each sequence's rows are exactly what `embed` gives it alone (products are exactly
        rounded per row and attention is per sequence), so batching never changes a vector.
        """
        w = self._weights_or_raise()
        seqs = [np.asarray(t, dtype=np.int64).reshape(-1) for t in sequences]
        for ids in seqs:
            if ids.size == 0:
                raise ValueError("embed needs at least one token")
            if ids.min() < 0 or ids.max() >= self.n_vocab:
                bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
            if ids.size > self.n_ctx_train:
                raise ValueError(f"{ids.size} tokens exceed the trained context {self.n_ctx_train}")
        if not seqs:
            return []
        lengths = [ids.size for ids in seqs]
        x = w.token_embd[np.concatenate(seqs)]  # (N, D)
        if w.type_embd is not None:
            x = x + w.type_embd
        if w.pos_embd is not None:
            x = w.pos_embd[np.concatenate([np.arange(n) for n in lengths])] + x
        x = layer_norm(x, *w.embd_norm, self.config.norm_eps)
        for layer in w.layers:
            if cancelled is not None and cancelled():
                raise Cancelled("embedding cancelled")
            x = _layer(x, layer, self.config, self.rope, lengths, self.numerics)
        return np.split(x, np.cumsum(lengths)[:-1])


def load(
    source: str | Path | GGUFFile,
    *,
    vocab_only: bool = False,
    memory_budget: int | None = None,
    numerics: Numerics = LLAMA_CPP,
) -> BertModel:
    """Load a bert / nomic-bert GGUF: config and tokenizer, plus the weights unless
    `vocab_only`. ModelTooLarge when they exceed `memory_budget` (default: as decoder.load).
    `source`: the file's path or its parsed GGUFFile."""
    t0 = time.perf_counter()
    gguf = source if isinstance(source, GGUFFile) else GGUFFile(source)
    path = gguf.path
    config = BertConfig.from_gguf(gguf.metadata)
    tokenizer = Tokenizer.from_gguf(gguf)
    weights = None
    if not vocab_only:
        needed = sum(t.n_elements for t in gguf.tensors.values()) * 8  # float32 + load scratch
        budget = memory_budget
        if budget is None:
            budget = int(available_memory() * DEFAULT_MEMORY_FRACTION)
        if needed > budget:
            raise ModelTooLarge(needed, budget)
        weights = load_bert_weights(gguf, config)
    log.info("loaded %s (%s) in %.2fs", path.name, config.arch, time.perf_counter() - t0)
    return BertModel(path, config, tokenizer, weights, numerics)
