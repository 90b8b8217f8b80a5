"""Tiny random Hugging Face directories (llama, qwen2, qwen3, gemma3) for the converter tests.

Each directory holds config.json, model.safetensors (seeded random weights; F32, with the
projection weights of qwen2 stored F16), a SentencePiece tokenizer.model written here as
protobuf bytes (<unk>, <s>, </s>, the 256 byte pieces, then ▁ and letter pieces) and a
tokenizer_config.json asking for BOS.
Only numpy and safetensors are needed, so the oracle venv can write the same directories.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_LAYER = 64, 4, 2, 16, 96, 2
_HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}  # fmt: skip
_SEEDS = {"llama": 1601, "qwen2": 1602, "qwen3": 1603, "gemma3": 1604}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def sentencepiece_model() -> bytes:
    """A unigram ModelProto: pieces (text, score, type), trainer_spec (unigram, byte fallback)."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["\u2581"] + [f"\u2581{a}" for a in letters] + list(letters)
    words += [f"\u2581{a}{b}" for a in letters[:10] for b in letters[:10]]
    pieces += [(w, -1.0 - i * 0.01, 1) for i, w in enumerate(words)]
    body = b""
    for text, score, kind in pieces:
        piece = _field(1, text.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", score)
        body += _field(1, piece + _varint(3 << 3) + _varint(kind))
    trainer = _varint(3 << 3) + _varint(1) + _varint(35 << 3) + _varint(1)  # unigram, byte_fallback
    normalizer = _field(1, b"identity") + _varint(3 << 3) + _varint(1)  # add_dummy_prefix
    return body + _field(2, trainer) + _field(3, normalizer)


N_VOCAB = 3 + 256 + 1 + 52 + 100


def config(arch: str) -> dict:
    base = {
        "architectures": [_HF_CLASS[arch]],
        "model_type": arch if arch != "gemma3" else "gemma3_text",
        "hidden_size": N_EMBD, "intermediate_size": N_FF, "num_hidden_layers": N_LAYER,
        "num_attention_heads": N_HEAD, "num_key_value_heads": N_HEAD_KV,
        "max_position_embeddings": 256, "vocab_size": N_VOCAB, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": arch == "gemma3",
    }  # fmt: skip
    if arch in ("qwen3", "gemma3"):
        base["head_dim"] = HEAD_DIM
    if arch == "gemma3":
        base |= {"sliding_window": 32, "rope_local_base_freq": 10000.0,
                 "query_pre_attn_scalar": HEAD_DIM, "final_logit_softcapping": None}  # fmt: skip
    return base


def tensors(arch: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_SEEDS[arch])
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM

    def w(*shape: int, dtype: type = np.float32) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.08).astype(dtype)

    proj = np.float16 if arch == "qwen2" else np.float32  # one family reads F16 sources
    out = {"model.embed_tokens.weight": w(N_VOCAB, N_EMBD), "model.norm.weight": 1 + w(N_EMBD)}
    if arch != "gemma3":
        out["lm_head.weight"] = w(N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": 1 + w(N_EMBD),
            p + "post_attention_layernorm.weight": 1 + w(N_EMBD),
            p + "self_attn.q_proj.weight": w(q, N_EMBD, dtype=proj),
            p + "self_attn.k_proj.weight": w(kv, N_EMBD, dtype=proj),
            p + "self_attn.v_proj.weight": w(kv, N_EMBD, dtype=proj),
            p + "self_attn.o_proj.weight": w(N_EMBD, q, dtype=proj),
            p + "mlp.gate_proj.weight": w(N_FF, N_EMBD),
            p + "mlp.up_proj.weight": w(N_FF, N_EMBD),
            p + "mlp.down_proj.weight": w(N_EMBD, N_FF),
        }
        if arch == "qwen2":
            out |= {p + "self_attn.q_proj.bias": w(q), p + "self_attn.k_proj.bias": w(kv),
                    p + "self_attn.v_proj.bias": w(kv)}  # fmt: skip
        if arch in ("qwen3", "gemma3"):
            out |= {p + "self_attn.q_norm.weight": 1 + w(HEAD_DIM),
                    p + "self_attn.k_norm.weight": 1 + w(HEAD_DIM)}  # fmt: skip
        if arch == "gemma3":
            out |= {p + "pre_feedforward_layernorm.weight": w(N_EMBD),
                    p + "post_feedforward_layernorm.weight": w(N_EMBD)}  # fmt: skip
    return out


def write_tiny_hf(directory: Path, arch: str) -> Path:
    """Write the tiny `arch` directory into `directory` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config(arch), indent=1))
    save_file(tensors(arch), str(directory / "model.safetensors"))
    (directory / "tokenizer.model").write_bytes(sentencepiece_model())
    special = {"add_bos_token": True, "add_eos_token": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(special))
    return directory


def damage_directory(directory: Path, damage: str) -> Path:
    """Break a tiny directory one way: drop config.json, rename its class, shrink n_ff, cut."""
    config = directory / "config.json"
    weights = directory / "model.safetensors"
    if damage == "no_config":
        config.unlink()
    elif damage == "unknown_arch":
        data = json.loads(config.read_text())
        config.write_text(json.dumps(data | {"architectures": ["MambaForCausalLM"]}))
    elif damage == "shape":
        data = json.loads(config.read_text())
        config.write_text(json.dumps(data | {"intermediate_size": 80}))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    return directory
