"""Llama, Qwen2, Qwen3 and Gemma 3 decoders: config keys, tensor shapes and layouts.

Llama's q/k projections are permuted from Hugging Face's rotate-half order back to the
interleaved pairs GGUF llama models use; Qwen and Gemma keep Hugging Face's (NEOX) order.
Gemma 3 stores its RMSNorm weights as `w` for `x * (1 + w)`; GGUF holds `1 + w`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gguf
import numpy as np

from engine.gguf.convert.family import Family
from engine.gguf.convert.source import ConvertError, read_json
from engine.gguf.convert.vocab import bpe_vocab, sentencepiece_vocab

# pre-tokenizer names written for a byte-level BPE tokenizer.json, by architecture
_BPE_PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "gemma3": "default"}


class Decoder(Family):
    """A causal decoder checkpoint of the `model.layers.N.*` shape."""

    has_qkv_bias = False
    has_qk_norm = False
    has_ffn_sandwich = False  # Gemma's pre/post feed-forward norms
    permute_qk = False
    optional = frozenset({"lm_head.weight"})
    # config.json values Gemma 3 may leave out (llama.cpp's defaults); others must give them
    default_heads: int | None = None
    default_heads_kv: int | None = None
    default_head_dim: int | None = None

    def __init__(self, directory: Any, config: dict[str, Any]) -> None:
        super().__init__(directory, config)
        self.n_embd = self.positive_int("hidden_size")
        self.n_head = self.positive_int("num_attention_heads", self.default_heads)
        self.n_head_kv = self.positive_int(
            "num_key_value_heads", self.default_heads_kv or self.n_head
        )
        self.head_dim = self.positive_int(
            "head_dim", self.default_head_dim or self.n_embd // self.n_head
        )
        self.n_ff = self.positive_int("intermediate_size")
        self.n_vocab = self.positive_int("vocab_size")
        self.rope = self._rope_parameters()

    def _rope_parameters(self) -> dict[str, Any]:
        rope = self.config.get("rope_parameters") or self.config.get("rope_scaling") or {}
        rope = rope.get("full_attention", rope)
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in (None, "default"):
            raise ConvertError(f"rope scaling {kind!r} is not supported by the converter")
        return rope

    def rope_theta(self, default: float | None) -> float | None:
        theta = self.config.get("rope_theta", self.rope.get("rope_theta"))
        return default if theta is None else float(theta)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, q, kv, ff = (
            self.n_embd,
            self.n_head * self.head_dim,
            self.n_head_kv * self.head_dim,
            self.n_ff,
        )
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.n_vocab, d),
            "model.norm.weight": (d,),
            "lm_head.weight": (self.n_vocab, d),
        }
        for i in range(self.block_count):
            p = f"model.layers.{i}."
            layer = {
                "input_layernorm.weight": (d,),
                "post_attention_layernorm.weight": (d,),
                "self_attn.q_proj.weight": (q, d),
                "self_attn.k_proj.weight": (kv, d),
                "self_attn.v_proj.weight": (kv, d),
                "self_attn.o_proj.weight": (d, q),
                "mlp.gate_proj.weight": (ff, d),
                "mlp.up_proj.weight": (ff, d),
                "mlp.down_proj.weight": (d, ff),
            }
            if self.has_qkv_bias:
                layer |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)}  # fmt: skip
            if self.has_qk_norm:
                layer |= {"self_attn.q_norm.weight": (self.head_dim,),
                          "self_attn.k_norm.weight": (self.head_dim,)}  # fmt: skip
            if self.has_ffn_sandwich:
                layer |= {"pre_feedforward_layernorm.weight": (d,),
                          "post_feedforward_layernorm.weight": (d,)}  # fmt: skip
            shapes |= {p + k: v for k, v in layer.items()}
        return shapes

    def load_vocab(self) -> None:
        if (self.directory / "tokenizer.model").is_file():
            self.vocab = sentencepiece_vocab(self.directory, self.config.get("vocab_size"))
        else:
            self.vocab = bpe_vocab(self.directory, self.config.get("vocab_size"))

    def write_vocab(self, writer: gguf.GGUFWriter) -> None:
        assert self.vocab is not None
        pre = "default" if self.vocab.model == "llama" else _BPE_PRE[self.gguf_arch]
        self.write_tokens(writer, pre)

    def write_metadata(self, writer: gguf.GGUFWriter) -> None:
        self.write_common(writer)
        if self.config.get("is_causal") is False:
            writer.add_causal_attention(False)
        if (theta := self.rope_theta(None)) is not None:
            writer.add_rope_freq_base(theta)
        if (eps := self.number("rms_norm_eps")) is not None:
            writer.add_layer_norm_rms_eps(eps)
        if "head_dim" in self.config:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)

    def rewrite(self, hf_name: str, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if self.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _unrotate_half(data, self.n_head)
        elif self.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _unrotate_half(data, self.n_head_kv)
        yield self.gguf_name(hf_name), data


def _unrotate_half(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from [first halves | second halves] to interleaved (x0, y0, x1, y1, …)."""
    # w: (n_head * Dh, ...) -> (n_head, 2, Dh/2, ...) -> (n_head, Dh/2, 2, ...)
    halves = w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    return halves.swapaxes(1, 2).reshape(w.shape)


class Llama(Decoder):
    gguf_arch = "llama"
    model_arch = gguf.MODEL_ARCH.LLAMA
    permute_qk = True

    def write_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().write_metadata(writer)
        writer.add_vocab_size(self.n_vocab)
        writer.add_rope_dimension_count(self.head_dim)
        if "head_dim" not in self.config:  # transformers' LlamaConfig always carries head_dim
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)

    def write_vocab(self, writer: gguf.GGUFWriter) -> None:
        super().write_vocab(writer)
        config = read_json(self.directory / "tokenizer_config.json", required=False) or {}
        if isinstance(config.get("add_prefix_space"), bool):
            writer.add_add_space_prefix(config["add_prefix_space"])


class Qwen2(Decoder):
    gguf_arch = "qwen2"
    model_arch = gguf.MODEL_ARCH.QWEN2
    has_qkv_bias = True

    def write_metadata(self, writer: gguf.GGUFWriter) -> None:
        super().write_metadata(writer)
        self.write_pooling(writer)


class Qwen3(Qwen2):
    gguf_arch = "qwen3"
    model_arch = gguf.MODEL_ARCH.QWEN3
    has_qkv_bias = False
    has_qk_norm = True


class Gemma3(Decoder):
    gguf_arch = "gemma3"
    model_arch = gguf.MODEL_ARCH.GEMMA3
    has_qk_norm = True
    has_ffn_sandwich = True
    default_heads, default_heads_kv, default_head_dim = 8, 4, 256

    def write_common(self, writer: gguf.GGUFWriter) -> None:
        writer.add_block_count(self.block_count)
        writer.add_context_length(self.positive_int("max_position_embeddings", 131072))
        writer.add_embedding_length(self.n_embd)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)

    def write_metadata(self, writer: gguf.GGUFWriter) -> None:
        self.write_common(writer)
        if self.config.get("is_causal") is False:
            writer.add_causal_attention(False)
        writer.add_rope_freq_base(self.rope_theta(1_000_000.0))
        local = self.config.get("rope_local_base_freq")
        if local is not None:
            writer.add_rope_freq_base_swa(float(local))
        writer.add_layer_norm_rms_eps(self.number("rms_norm_eps", 1e-6))
        writer.add_key_length(self.head_dim)
        writer.add_value_length(self.head_dim)
        if softcap := self.config.get("final_logit_softcapping"):
            writer.add_final_logit_softcapping(float(softcap))
        if self.config.get("sliding_window_pattern") != 1:
            writer.add_sliding_window(self.positive_int("sliding_window"))

    def write_vocab(self, writer: gguf.GGUFWriter) -> None:
        super().write_vocab(writer)
        if self.vocab is not None and self.vocab.model == "llama":
            writer.add_add_space_prefix(False)

    def rewrite(self, hf_name: str, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if hf_name == "model.embed_tokens.weight":
            assert self.vocab is not None
            data = data[: len(self.vocab.tokens)]
        if hf_name.endswith("norm.weight"):
            data = data + data.dtype.type(1.0)
        yield from super().rewrite(hf_name, data)


ARCHITECTURES: dict[str, type[Decoder]] = {
    "LlamaForCausalLM": Llama,
    "Qwen2ForCausalLM": Qwen2,
    "Qwen3ForCausalLM": Qwen3,
    "Gemma3ForCausalLM": Gemma3,
}
