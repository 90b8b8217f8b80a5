"""Decoder-only transformer forward pass (llama, qwen2, qwen3, gemma3) with a KV cache.

Follows llama.cpp's `src/models/{llama,qwen2,qwen3,gemma3}.cpp` (spec: gguf-and-models.md
section 4). Weights are dequantized once at load into float32, QKV and gate/up fused.

Weight orientation: every matrix is stored (in, out), C-contiguous, so a layer is `y = x @ W`
(the transpose of GGUF's NumPy shape (out, in), done once at load). The output matrix (D, V) is
stored as column blocks; when it is tied to `token_embd`, token lookup reads its columns.

Determinism policy: a row's numbers never depend on the batch shape (prompt chunking, number of
rows, BLAS threads). OpenBLAS picks its kernel by shape: gemv for one row, a "small matrix"
kernel when rows*K*N <= 1e6, blocked gemm otherwise. Each kernel has its own summation order, but
blocked gemm sums every output element in the same order whatever the number of rows and
threads (it only partitions rows and columns). Hence:
* prompt rows (`eval(..., generated=False)`, any chunking, also one token at a time) go through
  blocked gemm: a chunk with fewer rows than the least count that keeps OpenBLAS on that path
  (`matmul_rows`: >= 2 rows and rows*K*N > 2**20) is padded with zero rows;
* sampled tokens fed back (`generated=True`, the decode loop) are one gemv per row: a padded gemm
  would make OpenBLAS pack every weight matrix for one row, halving decode speed. Their rows may
  differ in the last bits from the rows a prefill of the same tokens computes, so the KV cache
  counts its leading prompt rows (`KVCache.n_prompt_rows`) and engine/generate.py reuses only
  those across requests: a request's output never depends on what ran before it;
* attention works on fixed blocks of `KEY_BLOCK` keys (engine/attention.py): per (position,
  KV head, block) one (G, Dh) @ (Dh, KEY_BLOCK) product for scores and one (G, KEY_BLOCK) @
  (KEY_BLOCK, Dv) for values (G = query heads per KV head); block partial sums are added in
  block order, so blocks that are fully masked (past the query) add exact zeros;
* the output matrix is applied as one gemv per row, in fixed blocks of OUTPUT_BLOCK columns;
* llama.cpp's roundings (engine/numerics.py) are row-wise;
* reductions (norms, softmax sums) run along a fixed-length last axis.
Tests check the prompt rows over num_batch 1..512, 1 vs 2 BLAS threads, and generation across
runs and threads. Measured on SmolLM2 (2 cores, 2 OpenBLAS threads; benchmarks/bench_forward.py,
512-token prompt, 128 decode steps): gemv for every row gives prefill 151 tok/s and decode
29 tok/s; gemm for every row (decode padded to the least row count) 272 and 10-17 tok/s; this
policy keeps both, prefill at gemm speed and decode at gemv speed. OpenBLAS threads hand off per
call, so on a busy machine OPENBLAS_NUM_THREADS=1 is much faster (--blas-threads).

Precision: float32 throughout, except the RMSNorm sum of squares (float64, as ggml) and RoPE
angles (float64, see engine/rope.py). By default (numerics=LLAMA_CPP) activations are rounded to
the weight type's llama.cpp dot-product type and k, v, q and attention probabilities to F16, as
llama.cpp does; numerics=FLOAT32 keeps plain float32 (spec section 4.9). The summation order is
BLAS's, not llama.cpp's, so logits agree with llama.cpp as closely as llama.cpp agrees with itself
across batch regimes, not bit for bit (engine/exact.py is the bit-exact, slow emulation).
Batching several sequences later keeps the policy: weight products are per row already, and
attention is per sequence.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.attention import attention
from engine.config import ModelConfig
from engine.errors import GGUFError, ModelTooLarge
from engine.gguf import GGMLType, GGUFFile
from engine.kvcache import KEY_BLOCK, KVCache
from engine.numerics import (
    LLAMA_CPP,
    Numerics,
    Rounding,
    gelu_f16_table,
    gelu_tanh,
    q8_block32,
    round_activations,
    round_f16,
    vec_dot_rounding,
)
from engine.rope import Rope
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

F32 = np.float32
Array = npt.NDArray[np.float32]

DEFAULT_MEMORY_FRACTION = 0.8  # of MemAvailable, when no explicit budget is given
DEFAULT_NUM_BATCH = 512
# Columns per block of the output matrix: a (D, 4096) block stays in cache while every row of a
# chunk goes through it, instead of streaming the whole (D, V) matrix from memory once per row.
OUTPUT_BLOCK = 4096


@dataclass(frozen=True)
class Linear:
    """y = x @ W, W (in, out) stored as column parts; each part's weights share one GGML type
    family, whose llama.cpp activation rounding is kept with it (engine/numerics.py)."""

    parts: tuple[LinearPart, ...]  # outputs concatenated


@dataclass(frozen=True)
class LinearPart:
    weight: Array  # (in, out)
    rounding: Rounding
    # Q4_1/Q5_1 block mins (in/32, out), for llama.cpp's Q8_1 sum term (engine/numerics.py);
    # None when no tensor of this part has mins.
    mins: Array | None = None


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
    output: Array  # (nC, D, C): the (D, V) output matrix cut into nC blocks of C columns
    output_rounding: Rounding
    output_bias: Array | None  # (V,)
    layers: tuple[LayerWeights, ...]
    rope_factors: tuple[float, ...] | None  # (n_rot/2,) from rope_freqs.weight


def memory_needed(gguf: GGUFFile, config: ModelConfig, num_ctx: int) -> int:
    """Bytes to hold the float32 weights, a `num_ctx` KV cache and the load-time scratch."""
    weights = sum(t.n_elements for t in gguf.tensors.values()) * 4
    largest = max(t.n_elements for t in gguf.tensors.values()) * 4
    capacity = -(-num_ctx // KEY_BLOCK) * KEY_BLOCK
    kv = config.n_layer * config.n_head_kv * capacity * (config.head_dim + config.head_dim_v) * 4
    return weights + kv + 2 * largest


_TYPES_WITH_MIN = {GGMLType.Q4_1, GGMLType.Q5_1}  # blocks start with f16 d, f16 m


def _block_mins(gguf: GGUFFile, name: str) -> Array:
    """(out, in/32) block mins m of a Q4_1/Q5_1 matrix; zeros for other types."""
    info = gguf.tensors[name]
    n_out, n_in = info.shape
    if info.ggml_type not in _TYPES_WITH_MIN:
        return np.zeros((n_out, n_in // 32), F32)
    blocks = gguf.raw(name).reshape(n_out, n_in // 32, -1)
    return blocks[:, :, 2:4].copy().view("<f2")[..., 0].astype(F32)


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

    def fused(names: list[str]) -> Linear:
        # GGUF matrices are (out, in): stack neighbours with the same activation rounding along
        # out, then one transposed copy per part.
        groups: list[tuple[Rounding, list[str]]] = []
        for name in names:
            rounding = vec_dot_rounding(tensors[name].ggml_type)
            if groups and groups[-1][0] is rounding:
                groups[-1][1].append(name)
            else:
                groups.append((rounding, [name]))
        parts = []
        for rounding, group in groups:
            stacked = np.concatenate([gguf.tensor(n) for n in group])  # (sum of outs, in)
            w = np.empty(stacked.shape[::-1], F32)  # (in, sum of outs)
            w[...] = stacked.T
            mins = None
            if any(tensors[n].ggml_type in _TYPES_WITH_MIN for n in group):
                mins = np.concatenate([_block_mins(gguf, n) for n in group]).T.copy()
            parts.append(LinearPart(w, rounding, mins))
        return Linear(tuple(parts))

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
        output=_blocked(gguf.tensor(out_name)),
        output_rounding=vec_dot_rounding(tensors[out_name].ggml_type),
        output_bias=opt("output.bias"),
        layers=tuple(layers),
        rope_factors=None if factors is None else tuple(float(f) for f in factors),
    )


def _blocked(w: Array) -> Array:
    """GGUF's (V, D) output matrix -> (nC, D, C): column blocks of (D, V), the last zero-padded."""
    V, D = w.shape
    C = min(OUTPUT_BLOCK, V)
    n = -(-V // C)
    out = np.zeros((n, D, C), F32)
    for i in range(n):
        rows = w[i * C : (i + 1) * C]  # (<= C, D)
        out[i, :, : len(rows)] = rows.T
    return out


# --- kernels: pure functions over arrays -------------------------------------------------------


# OpenBLAS computes an (R, K) @ (K, N) product with gemv when R == 1 and with a "small matrix"
# kernel when R*K*N <= 1e6; above that, its blocked gemm sums every output element in the same
# order whatever R is. Prompt rows are padded up to the least R that stays on that path.
GEMM_MIN_ROWS = 2
SMALL_KERNEL_MAX = 1 << 20  # above OpenBLAS's SMALL_MATRIX threshold of 1e6


def matmul_rows(x: Array, w: Array, generated: bool) -> Array:
    """(T, K) @ (K, N): one gemv per row for generated tokens, blocked gemm for prompt rows."""
    if generated:
        return np.matmul(x[:, None, :], w)[:, 0, :]
    T, K = x.shape
    r_min = max(GEMM_MIN_ROWS, SMALL_KERNEL_MAX // (K * w.shape[1]) + 1)
    if T >= r_min:
        return np.matmul(x, w)
    padded = np.zeros((r_min, K), F32)
    padded[:T] = x
    return np.matmul(padded, w)[:T]


def linear(x: Array, w: Linear, numerics: Numerics, generated: bool) -> Array:
    """(T, K) @ (K, N) -> (T, N) per part, rows as `matmul_rows` (see the module docstring)."""
    outs = []
    for part in w.parts:
        if not numerics.quantize_activations:
            outs.append(matmul_rows(np.ascontiguousarray(x, dtype=F32), part.weight, generated))
            continue
        if part.mins is None:
            xr = np.ascontiguousarray(round_activations(x, part.rounding), dtype=F32)
            y = matmul_rows(xr, part.weight, generated)
        else:  # Q4_1/Q5_1: add llama.cpp's min term m * f16(d * sum(q)) that xr @ W misses
            xr, err = q8_block32(x)  # (T, K), (T, K/32)
            y = matmul_rows(xr, part.weight, generated)
            y = y + matmul_rows(np.ascontiguousarray(err), part.mins, generated)
        outs.append(y)
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)


def rms_norm(x: Array, w: Array, eps: float) -> Array:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; sum of squares in float64 as ggml."""
    mean = (np.square(x).astype(np.float64).sum(axis=-1, keepdims=True) / x.shape[-1]).astype(F32)
    return x * (F32(1.0) / np.sqrt(mean + F32(eps))) * w


def silu(x: Array) -> Array:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: silu is then -0
        return x / (F32(1.0) + np.exp(-x))


def _layer(
    x: Array,
    w: LayerWeights,
    cfg: ModelConfig,
    rope: Rope,
    cache: KVCache,
    il: int,
    numerics: Numerics,
    generated: bool,
) -> Array:
    """One transformer block: (T, D) -> (T, D); writes this layer's new k, v into the cache."""
    T = x.shape[0]
    pos0 = cache.n_past
    H, Hkv, Dh, Dv = cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v
    eps = cfg.norm_eps
    h = rms_norm(x, w.attn_norm, eps)
    qkv = linear(h, w.wqkv, numerics, generated)  # (T, H*Dh + Hkv*Dh + Hkv*Dv)
    if w.bqkv is not None:
        qkv = qkv + w.bqkv
    q = qkv[:, : H * Dh].reshape(T, H, Dh)
    k = qkv[:, H * Dh : (H + Hkv) * Dh].reshape(T, Hkv, Dh)
    v = qkv[:, (H + Hkv) * Dh :].reshape(T, Hkv, Dv)
    if w.q_norm is not None and w.k_norm is not None:
        q = rms_norm(q, w.q_norm, eps)
        k = rms_norm(k, w.k_norm, eps)
    cos, sin = rope.cos_sin(np.arange(pos0, pos0 + T))  # (T, n_rot/2)
    q = rope.apply(q, cos[:, None], sin[:, None])
    k = rope.apply(k, cos[:, None], sin[:, None])
    # gemma3 scales q before q.k (llama.cpp: ggml_scale, then kq_scale 1); the others scale
    # inside the softmax.
    scale = cfg.attention_scale
    if cfg.traits.prescale_q:
        q, scale = q * F32(scale), 1.0
    if numerics.kv_f16:
        q, k, v = round_f16(q), round_f16(k), round_f16(v)
    cache.k[il, :, pos0 : pos0 + T] = k.transpose(1, 0, 2)
    cache.v[il, :, pos0 : pos0 + T] = v.transpose(1, 0, 2)
    window = cfg.sliding_window if cfg.swa_layers[il] else 0
    a = attention(q, cache.k[il], cache.v[il], pos0, window, scale, numerics.kv_f16)
    a = linear(a.reshape(T, H * Dv), w.wo, numerics, generated)  # (T, D)
    if w.bo is not None:
        a = a + w.bo
    if w.post_attn_norm is not None:
        a = rms_norm(a, w.post_attn_norm, eps)
    x = x + a
    h = rms_norm(x, w.ffn_norm, eps)
    gu = linear(h, w.w_gate_up, numerics, generated)  # (T, 2F)
    gate, up = gu[:, : cfg.n_ff], gu[:, cfg.n_ff :]
    if cfg.traits.gelu:
        act = gelu_f16_table(gate) if numerics.kv_f16 else gelu_tanh(gate)
    else:
        act = silu(gate)
    f = linear(act * up, w.w_down, numerics, generated)  # (T, D)
    if w.post_ffn_norm is not None:
        f = rms_norm(f, w.post_ffn_norm, eps)
    return x + f


def forward(
    weights: Weights,
    cfg: ModelConfig,
    ropes: tuple[Rope, ...],
    tokens: npt.NDArray[np.int64],
    cache: KVCache,
    numerics: Numerics,
    generated: bool = False,
) -> Array:
    """Run new `tokens` (T,) at positions n_past.. and append them to `cache`.

    `generated`: the tokens were sampled (one gemv per row) rather than prompt (blocked gemm).
    Returns the final-normed hidden states (T, D). The caller checks that they fit.
    """
    if weights.token_embd is not None:
        x = weights.token_embd[tokens]  # (T, D)
    else:
        C = weights.output.shape[2]
        x = weights.output[tokens // C, :, tokens % C]  # tied: columns of the output matrix
    if cfg.traits.embed_scale:
        x = x * F32(math.sqrt(cfg.n_embd))
    for il, (w, rope) in enumerate(zip(weights.layers, ropes, strict=True)):
        x = _layer(x, w, cfg, rope, cache, il, numerics, generated)
    cache.append(tokens, generated)
    return rms_norm(x, weights.output_norm, cfg.norm_eps)


def output_logits(weights: Weights, cfg: ModelConfig, hidden: Array, numerics: Numerics) -> Array:
    """(T, D) final-normed hidden states -> (T, V) logits, one output block at a time."""
    if numerics.quantize_activations:
        hidden = round_activations(hidden, weights.output_rounding)
    hidden = np.ascontiguousarray(hidden, dtype=F32)[:, None, :]  # (T, 1, D)
    blocks = [np.matmul(hidden, block)[:, 0, :] for block in weights.output]  # nC x (T, C)
    logits = np.concatenate(blocks, axis=1)[:, : cfg.n_vocab]
    if weights.output_bias is not None:
        logits = logits + weights.output_bias
    if cfg.final_softcap:
        c = F32(cfg.final_softcap)
        logits = c * np.tanh(logits / c)
    return logits


class Model:
    """A loaded model: config, tokenizer, float32 weights, and the cache-based forward API."""

    def __init__(
        self,
        path: Path,
        config: ModelConfig,
        tokenizer: Tokenizer,
        weights: Weights | None,
        numerics: Numerics = LLAMA_CPP,
    ) -> None:
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.numerics = numerics
        self._weights = weights
        self.ropes = config.ropes(None if weights is None else weights.rope_factors)

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    @property
    def n_ctx_train(self) -> int:
        return self.config.n_ctx_train

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

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

    def _weights_or_raise(self) -> Weights:
        if self._weights is None:
            raise RuntimeError(f"{self.path.name} was loaded with vocab_only=True")
        return self._weights

    def _hidden(
        self,
        tokens: list[int] | npt.NDArray[np.int64],
        cache: KVCache,
        num_batch: int,
        generated: bool = False,
    ) -> Iterator[Array]:
        """Prefill `tokens` into `cache` in chunks of `num_batch`; yields (T_chunk, D) states."""
        weights = self._weights_or_raise()
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if num_batch < 1:
            raise ValueError(f"num_batch must be >= 1, got {num_batch}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_vocab})")
        cache.reserve(len(ids))
        for start in range(0, len(ids), num_batch):
            chunk = ids[start : start + num_batch]
            yield forward(weights, self.config, self.ropes, chunk, cache, self.numerics, generated)

    def eval(
        self,
        tokens: list[int] | npt.NDArray[np.int64],
        cache: KVCache,
        num_batch: int = DEFAULT_NUM_BATCH,
        last_only: bool = False,
        generated: bool = False,
    ) -> Array:
        """Append `tokens` to `cache`; logits (T, V) for every new token, or (1, V) last_only.

        `generated=True` for sampled tokens fed back one at a time (decode speed; see the module
        docstring), False for prompt tokens. Raises ContextOverflow (before computing anything)
        when they do not fit.
        """
        if len(tokens) == 0:
            raise ValueError("eval needs at least one token")
        weights = self._weights_or_raise()
        chunks = list(self._hidden(tokens, cache, num_batch, generated))
        if last_only:
            return output_logits(weights, self.config, chunks[-1][-1:], self.numerics)
        return np.concatenate(
            [output_logits(weights, self.config, h, self.numerics) for h in chunks]
        )

    def logits(self, tokens: list[int] | npt.NDArray[np.int64]) -> Array:
        """Logits (T, V) for a fresh sequence."""
        return self.eval(tokens, self.new_cache(max(len(tokens), 1)))

    def embed(self, tokens: list[int] | npt.NDArray[np.int64]) -> Array:
        """Final-normed hidden states (T, D) of a fresh sequence (pooled by the server)."""
        if len(tokens) == 0:
            raise ValueError("embed needs at least one token")
        cache = self.new_cache(len(tokens))
        return np.concatenate(list(self._hidden(tokens, cache, DEFAULT_NUM_BATCH)))


def load(
    path: str | Path,
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
    roundings (the default, engine/numerics.py) or plain float32.
    """
    path = Path(path)
    t0 = time.perf_counter()
    gguf = GGUFFile(path)
    config = ModelConfig.from_gguf(gguf.metadata)
    tokenizer = Tokenizer.from_gguf(gguf)
    weights = None
    if not vocab_only:
        needed = memory_needed(gguf, config, num_ctx_hint)
        budget = memory_budget
        if budget is None:
            budget = int(available_memory() * DEFAULT_MEMORY_FRACTION)
        if needed > budget:
            raise ModelTooLarge(needed, budget)
        weights = load_weights(gguf, config)
    log.info("loaded %s (%s) in %.2fs", path.name, config.arch, time.perf_counter() - t0)
    return Model(path, config, tokenizer, weights, numerics)
