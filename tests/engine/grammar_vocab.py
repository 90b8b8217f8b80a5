"""Token byte strings for grammar tests, read straight from GGUF metadata.

A stand-in for engine/tokenizer's `token_bytes` that needs nothing but the GGUF reader: GPT-2
byte-level BPE vocabularies store each byte as a printable unicode character (the
`bytes_to_unicode` table); control tokens are stored as their literal text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.gguf import GGUFFile

CONTROL = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL
EOG_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def _byte_decoder() -> dict[str, int]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def gpt2_pieces(path: Path) -> tuple[list[bytes], list[int]]:
    """(token byte strings, end-of-generation ids) of a gpt2-type GGUF vocabulary."""
    meta = GGUFFile(path).metadata
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = np.asarray(meta["tokenizer.ggml.token_type"])
    decoder = _byte_decoder()
    pieces = [
        tok.encode() if kind == CONTROL else bytes(decoder[c] for c in tok)
        for tok, kind in zip(tokens, types, strict=True)
    ]
    eog = {int(meta["tokenizer.ggml.eos_token_id"])}
    eog |= {i for i, tok in enumerate(tokens) if types[i] == CONTROL and tok in EOG_TEXTS}
    return pieces, sorted(eog)
