"""Model hyperparameters from GGUF metadata, and what distinguishes each supported architecture.

Keys and defaults follow llama.cpp's `load_hparams` (spec: gguf-and-models.md sections 4.1 and
4.4-4.7). A missing required key raises GGUFError naming it; an architecture without an entry
in ARCHS raises UnsupportedArchitecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import GGUFError, UnsupportedArchitecture
from engine.models.rope import Rope


@dataclass(frozen=True)
class ArchTraits:
    """What distinguishes the supported architectures (llama.cpp `src/models/*.cpp`)."""

    rope_neox: bool  # half-split pairs (neox) rather than adjacent pairs (normal)
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE
    post_norms: bool  # RMSNorm of the attention and FFN outputs before the residual add
    embed_scale: bool  # token embeddings times sqrt(n_embd)
    gelu: bool  # GELU (tanh) gate activation instead of SiLU
    sliding: bool  # sliding-window layers with their own RoPE base
    prescale_q: bool  # q is scaled before q.k (softmax scale 1) rather than inside the softmax


_GEMMA3 = ArchTraits(True, True, True, True, True, True, True)
ARCHS: dict[str, ArchTraits] = {
    "llama": ArchTraits(False, False, False, False, False, False, False),
    "qwen2": ArchTraits(True, False, False, False, False, False, False),
    "qwen3": ArchTraits(True, True, False, False, False, False, False),
    "gemma3": _GEMMA3,
}
GEMMA3_SWA_PERIOD = 6  # every 6th layer is global unless sliding_window_pattern says otherwise
GEMMA3_SWA_BASE = 10000.0
GEMMA3_27B_LAYERS = 62  # llama.cpp scales queries by 1/sqrt(n_embd/n_head) for this size only


def _get(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in meta:
        return meta[key]
    if default is None:
        raise GGUFError(f"required metadata key {key!r} is missing")
    return default


def _uniform_int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    """A u32 key that may also be a per-layer array; per-layer values must all be equal."""
    value = _get(meta, key, default)
    if isinstance(value, np.ndarray):
        if value.size == 0 or (value != value.flat[0]).any():
            raise GGUFError(f"metadata key {key!r} varies per layer ({value}); not supported")
        return int(value.flat[0])
    return int(value)


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters from GGUF metadata (keys `{arch}.*`, spec section 4.1)."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int  # D
    n_layer: int  # L
    n_ff: int  # F
    n_head: int  # H
    n_head_kv: int  # Hkv
    head_dim: int  # Dh, for q and k
    head_dim_v: int  # Dv
    n_rot: int
    norm_eps: float
    rope_base: float
    rope_freq_scale: float
    rope_yarn: bool
    rope_attn_factor: float
    rope_n_ctx_orig: int
    rope_base_swa: float
    sliding_window: int  # 0: no sliding-window layers
    swa_layers: tuple[bool, ...]  # per layer: True for sliding-window attention
    final_softcap: float  # 0: none

    @property
    def traits(self) -> ArchTraits:
        return ARCHS[self.arch]

    @property
    def attention_scale(self) -> float:
        if self.arch == "gemma3" and self.n_layer == GEMMA3_27B_LAYERS:
            return 1.0 / math.sqrt(self.n_embd / self.n_head)
        return 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_gguf(cls, meta: dict[str, Any]) -> ModelConfig:
        arch = str(_get(meta, "general.architecture"))
        if arch not in ARCHS:
            raise UnsupportedArchitecture(arch)
        n_embd = int(_get(meta, f"{arch}.embedding_length"))
        n_layer = int(_get(meta, f"{arch}.block_count"))
        n_head = _uniform_int(meta, f"{arch}.attention.head_count")
        n_head_kv = _uniform_int(meta, f"{arch}.attention.head_count_kv", n_head)
        head_dim = int(_get(meta, f"{arch}.attention.key_length", n_embd // n_head))
        if "tokenizer.ggml.tokens" in meta:
            n_vocab = int(_get(meta, f"{arch}.vocab_size", len(meta["tokenizer.ggml.tokens"])))
        else:
            n_vocab = int(_get(meta, f"{arch}.vocab_size"))
        if n_head % n_head_kv:
            raise GGUFError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        scaling = str(meta.get(f"{arch}.rope.scaling.type", "linear"))
        if scaling not in ("none", "linear", "yarn"):
            raise GGUFError(f"{arch}.rope.scaling.type {scaling!r} is not supported")
        factor = float(
            meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear", 0.0))
        )
        n_ctx_train = int(_get(meta, f"{arch}.context_length"))
        sliding_window = 0
        swa_layers = (False,) * n_layer
        if ARCHS[arch].sliding:
            sliding_window = int(meta.get(f"{arch}.attention.sliding_window", 0))
            pattern = meta.get(f"{arch}.attention.sliding_window_pattern", GEMMA3_SWA_PERIOD)
            if sliding_window <= 0:
                swa_layers = (False,) * n_layer
            elif isinstance(pattern, np.ndarray):
                if len(pattern) != n_layer:
                    raise GGUFError(
                        f"{arch}.attention.sliding_window_pattern has {len(pattern)} entries, "
                        f"expected one per layer ({n_layer})"
                    )
                swa_layers = tuple(bool(b) for b in pattern)
            else:
                period = int(pattern)
                swa_layers = tuple(period == 0 or il % period < period - 1 for il in range(n_layer))
        return cls(
            arch=arch,
            n_vocab=n_vocab,
            n_ctx_train=n_ctx_train,
            n_embd=n_embd,
            n_layer=n_layer,
            n_ff=_uniform_int(meta, f"{arch}.feed_forward_length"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=int(_get(meta, f"{arch}.attention.value_length", n_embd // n_head)),
            n_rot=int(_get(meta, f"{arch}.rope.dimension_count", head_dim)),
            norm_eps=float(_get(meta, f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_freq_scale=1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor,
            rope_yarn=scaling == "yarn",
            rope_attn_factor=float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
            rope_n_ctx_orig=int(
                meta.get(f"{arch}.rope.scaling.original_context_length", n_ctx_train)
            ),
            rope_base_swa=float(meta.get(f"{arch}.rope.freq_base_swa", GEMMA3_SWA_BASE)),
            sliding_window=sliding_window,
            swa_layers=swa_layers,
            final_softcap=float(meta.get(f"{arch}.final_logit_softcapping", 0.0)),
        )

    def ropes(self, factors: tuple[float, ...] | None = None) -> tuple[Rope, ...]:
        """Each layer's RoPE; sliding-window layers use rope_base_swa and no scaling."""
        neox = self.traits.rope_neox
        full = Rope(
            n_rot=self.n_rot,
            base=self.rope_base,
            neox=neox,
            freq_scale=self.rope_freq_scale,
            factors=factors,
            yarn=self.rope_yarn,
            n_ctx_orig=self.rope_n_ctx_orig,
            attn_factor=self.rope_attn_factor,
        )
        swa = Rope(n_rot=self.n_rot, base=self.rope_base_swa, neox=neox)
        return tuple(swa if s else full for s in self.swa_layers)
