"""Write tiny seeded GGUF models for fast tests (no downloads): `write_tiny_model(path, variant)`.

Every variant has a toy byte-level BPE vocabulary (gpt2 style: 256 byte tokens, ~100 merges
learned from a fixed text, plus <|endoftext|>, <|im_start|>, <|im_end|>) and a ChatML chat
template. The default "llama" variant mixes quant types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16)
and stays well under 100 KB. The other variants exercise one architecture feature each and store
float32 weights, so llama.cpp (with an F32 KV cache) computes them almost exactly and can serve as
a tight oracle (tests/golden/make_forward_golden.py):

    llama            2 layers, GQA 4/2, mixed quant types, tied output
    llama_rope_freqs llama plus rope_freqs.weight (Llama 3 style per-pair frequency divisors)
    llama_yarn       llama with rope.scaling.type = yarn, factor 4, original context 32
    qwen2            neox RoPE, Q/K/V biases, untied output
    qwen3            neox RoPE, per-head q/k RMSNorm, n_head * head_dim != n_embd
    gemma3           6 layers (5 sliding with window 4, 1 global), q/k norms, post-norms, GELU,
                     embedding scale, separate sliding-window RoPE base
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFWriter, TokenType
from gguf.quants import quantize

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_ID, EOS_ID = 1, 2  # <|im_start|>, <|im_end|> as in SmolLM2
N_MERGES = 100
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello world! Hello there, how are you today? "
    "The year 2024 had 366 days. I'm here, you're there; they'll go. What is 2+2? It is 4. "
    "A tiny model writes tiny tests: the tests run fast, and the model is random. "
    "user assistant system: the answer is yes, the answer is no. def main(): return 0\n"
) * 3
VARIANTS = ("llama", "llama_rope_freqs", "llama_yarn", "qwen2", "qwen3", "gemma3")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def toy_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials, 256 byte tokens, then learned merges."""
    byte_char = _bytes_to_unicode()
    words = Counter(
        tuple(byte_char[b] for b in w.encode("utf-8"))
        for w in re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    )
    tokens = list(SPECIAL_TOKENS) + [byte_char[b] for b in range(256)]
    merges: list[str] = []
    for _ in range(N_MERGES):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    types = [TokenType.CONTROL] * len(SPECIAL_TOKENS) + [TokenType.NORMAL] * (
        len(tokens) - len(SPECIAL_TOKENS)
    )
    return tokens, [int(t) for t in types], merges


def _dims(variant: str) -> dict[str, int]:
    if variant == "gemma3":
        return dict(n_embd=64, n_layer=6, n_ff=64, n_head=2, n_head_kv=1, head_dim=32)
    if variant == "qwen3":
        return dict(n_embd=64, n_layer=2, n_ff=96, n_head=4, n_head_kv=2, head_dim=32)
    return dict(n_embd=64, n_layer=2, n_ff=128, n_head=4, n_head_kv=2, head_dim=16)


# Mixed quant types of the default variant (row lengths 64/128 are multiples of every block).
_LLAMA_TYPES = {
    "token_embd": GGMLType.Q8_0,
    "attn_q": GGMLType.Q4_0,
    "attn_k": GGMLType.Q4_1,
    "attn_v": GGMLType.Q5_0,
    "attn_output": GGMLType.Q5_1,
    "ffn_gate": GGMLType.Q8_0,
    "ffn_up": GGMLType.F16,
    "ffn_down": GGMLType.BF16,
}


def write_tiny_model(
    path: str | Path,
    variant: str = "llama",
    seed: int = 0,
    extra_control: tuple[str, ...] = (),
    float32: bool = False,
) -> Path:
    """Write the tiny `variant` model to `path` (seeded, so the bytes are reproducible).

    extra_control: control tokens appended to the vocabulary (e.g. Gemma 3's image markers).
    float32: the llama variant's weights as F32 instead of its mixed quant types (the same
    random values), for a tight llama.cpp oracle.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny model variant {variant!r}; expected one of {VARIANTS}")
    path = Path(path)
    arch = variant.split("_")[0]
    d = _dims(variant)
    keys = ("n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "head_dim")
    D, L, F, H, Hkv, Dh = (d[k] for k in keys)
    tokens, types, merges = toy_vocab()
    tokens, types = (
        tokens + list(extra_control),
        types + [int(TokenType.CONTROL)] * len(extra_control),
    )
    V = len(tokens)
    rng = np.random.default_rng(seed)
    quantized = variant == "llama" and not float32

    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{variant}")
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_layer_norm_rms_eps(1e-5 if arch != "gemma3" else 1e-6)
    w.add_rope_freq_base(10000.0 if arch != "gemma3" else 100000.0)
    if arch in ("qwen3", "gemma3"):
        w.add_key_length(Dh)
        w.add_value_length(Dh)
    if variant == "llama_yarn":
        w.add_string(f"{arch}.rope.scaling.type", "yarn")
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(32)
    if arch == "gemma3":
        w.add_sliding_window(4)
    w.add_file_type(1 if quantized else 0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(0)
    w.add_pad_token_id(EOS_ID)
    w.add_add_bos_token(arch == "gemma3")
    w.add_chat_template(CHATML_TEMPLATE)

    def tensor(name: str, shape: tuple[int, ...], kind: str, scale: float = 1.0) -> None:
        if kind == "norm":
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data = (scale * rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
        qtype = _LLAMA_TYPES.get(name.split(".")[-2], GGMLType.F32) if quantized else None
        if qtype is None or kind == "norm" or qtype == GGMLType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (V, D), "matrix", scale=8.0)
    tensor("output_norm.weight", (D,), "norm")
    if arch in ("qwen2", "qwen3"):
        tensor("output.weight", (V, D), "matrix", scale=4.0)
    if variant == "llama_rope_freqs":
        k = np.arange(Dh // 2)
        w.add_tensor("rope_freqs.weight", (1.0 + k * 0.5).astype(np.float32))
    for il in range(L):
        p = f"blk.{il}."
        tensor(p + "attn_norm.weight", (D,), "norm")
        tensor(p + "attn_q.weight", (H * Dh, D), "matrix", scale=2.0)
        tensor(p + "attn_k.weight", (Hkv * Dh, D), "matrix", scale=2.0)
        tensor(p + "attn_v.weight", (Hkv * Dh, D), "matrix")
        if arch == "qwen2":
            for part, n in (("q", H * Dh), ("k", Hkv * Dh), ("v", Hkv * Dh)):
                w.add_tensor(f"{p}attn_{part}.bias", (0.5 * rng.standard_normal(n)).astype("f4"))
        if arch in ("qwen3", "gemma3"):
            tensor(p + "attn_q_norm.weight", (Dh,), "norm")
            tensor(p + "attn_k_norm.weight", (Dh,), "norm")
        tensor(p + "attn_output.weight", (D, H * Dh), "matrix")
        tensor(p + "ffn_norm.weight", (D,), "norm")
        tensor(p + "ffn_gate.weight", (F, D), "matrix", scale=2.0)
        tensor(p + "ffn_up.weight", (F, D), "matrix")
        tensor(p + "ffn_down.weight", (D, F), "matrix")
        if arch == "gemma3":
            tensor(p + "post_attention_norm.weight", (D,), "norm")
            tensor(p + "post_ffw_norm.weight", (D,), "norm")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
