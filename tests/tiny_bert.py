"""Write tiny seeded encoder GGUFs (bert, nomic-bert) for fast tests: `write_tiny_bert(path, arch)`.

A toy WordPiece vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK], lowercase words, `##` suffixes and
the ASCII punctuation), 2 layers, D = 32, 4 heads, F = 64, F32 weights except F16 attention
output matrices (so both of llama.cpp's product types are exercised):

    bert        learned positions, separate q/k/v with biases, GELU FFN with biases, mean pooling
    nomic-bert  RoPE (neox, base 1000), fused qkv, SwiGLU FFN without biases, cls pooling
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFWriter, PoolingType, TokenType

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = (
    "the", "quick", "brown", "fox", "jump", "over", "lazy", "dog", "hello", "world", "sky",
    "is", "blue", "a", "tiny", "model", "test", "embed", "text", "search", "query",
)  # fmt: skip
SUFFIXES = ("##s", "##ed", "##ing", "##ly", "##er", "##y")
D, H, F, N_LAYER, N_CTX = 32, 4, 64, 2, 64
ARCHS = ("bert", "nomic-bert")
POOLING = {"bert": PoolingType.MEAN, "nomic-bert": PoolingType.CLS}


def toy_wpm_vocab() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punct = [chr(c) for c in range(33, 127) if not chr(c).isalnum()]
    pieces = [*WORDS, *SUFFIXES, *letters, *(f"##{c}" for c in letters), *punct]
    return [*SPECIALS, *dict.fromkeys(pieces)]


def write_tiny_bert(path: Path, arch: str = "bert", seed: int = 0) -> Path:
    """Write the tiny `arch` encoder to `path` (seeded random weights) and return the path."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    rng = np.random.default_rng(seed)
    tokens = toy_wpm_vocab()
    V = len(tokens)

    def rand(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(N_CTX)
    w.add_embedding_length(D)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(POOLING[arch])
    if arch == "nomic-bert":
        w.add_rope_freq_base(1000.0)
    w.add_file_type(0)
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * V)
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    w.add_token_type_count(2)
    w.add_bos_token_id(SPECIALS.index("[CLS]"))
    w.add_sep_token_id(SPECIALS.index("[SEP]"))
    w.add_unk_token_id(SPECIALS.index("[UNK]"))
    w.add_pad_token_id(SPECIALS.index("[PAD]"))
    w.add_mask_token_id(SPECIALS.index("[MASK]"))

    w.add_tensor("token_embd.weight", rand(V, D))
    w.add_tensor("token_types.weight", rand(2, D))
    if arch == "bert":
        w.add_tensor("position_embd.weight", rand(N_CTX, D))
    w.add_tensor("token_embd_norm.weight", 1.0 + rand(D, scale=0.1))
    w.add_tensor("token_embd_norm.bias", rand(D, scale=0.1))
    for il in range(N_LAYER):
        p = f"blk.{il}."
        if arch == "bert":
            for x in "qkv":
                w.add_tensor(f"{p}attn_{x}.weight", rand(D, D))
                w.add_tensor(f"{p}attn_{x}.bias", rand(D, scale=0.1))
        else:
            w.add_tensor(f"{p}attn_qkv.weight", rand(3 * D, D))
        wo = rand(D, D).astype(np.float16)
        w.add_tensor(f"{p}attn_output.weight", wo, raw_dtype=GGMLType.F16)
        w.add_tensor(f"{p}attn_output_norm.weight", 1.0 + rand(D, scale=0.1))
        w.add_tensor(f"{p}attn_output_norm.bias", rand(D, scale=0.1))
        w.add_tensor(f"{p}ffn_up.weight", rand(F, D))
        w.add_tensor(f"{p}ffn_down.weight", rand(D, F))
        if arch == "bert":
            w.add_tensor(f"{p}attn_output.bias", rand(D, scale=0.1))
            w.add_tensor(f"{p}ffn_up.bias", rand(F, scale=0.1))
            w.add_tensor(f"{p}ffn_down.bias", rand(D, scale=0.1))
        else:
            w.add_tensor(f"{p}ffn_gate.weight", rand(F, D))
        w.add_tensor(f"{p}layer_output_norm.weight", 1.0 + rand(D, scale=0.1))
        w.add_tensor(f"{p}layer_output_norm.bias", rand(D, scale=0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
