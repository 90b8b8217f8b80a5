"""`tokenizer.model` (SentencePiece) and `tokenizer.json` to `tokenizer.ggml.*` values.

The SentencePiece model is a protobuf `ModelProto`; only its `pieces` (field 1: piece text,
score, type) are needed, read here with a small wire-format reader instead of a protobuf
dependency. Token types use llama.cpp's numbering, which SentencePiece's piece types share:
1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.gguf.convert.source import ConvertError, read_json

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """What a family writes under `tokenizer.ggml.*` (special ids come from gguf.SpecialVocab)."""

    model: str  # "llama" (SentencePiece), "gpt2" (byte-level BPE) or "bert" (WordPiece)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    lowercase: bool | None = None  # WordPiece's normalizer


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ConvertError("tokenizer.model is truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ConvertError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ConvertError("tokenizer.model is truncated")
        yield number, wire, value


def sentencepiece_pieces(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, type) for each piece of a SentencePiece `ModelProto`, in id order."""
    pieces = []
    for number, wire, value in _fields(path.read_bytes()):
        if number != 1 or wire != 2:
            continue
        piece, score, kind = "", 0.0, NORMAL
        for n, w, v in _fields(value):
            if n == 1 and w == 2:
                piece = v.decode("utf-8")
            elif n == 2 and w == 5:
                score = struct.unpack("<f", v)[0]
            elif n == 3 and w == 0:
                kind = v
        pieces.append((piece, score, kind))
    if not pieces:
        raise ConvertError("tokenizer.model holds no pieces")
    return pieces


def _looks_special(token: str) -> bool:
    """llama.cpp's guess for added tokens not flagged special: <|x|>, <｜x｜>, <unusedN>, a few."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def sentencepiece_vocab(directory: Path, vocab_size: int | None) -> Vocab:
    """The SentencePiece vocabulary padded to the config's `vocab_size` with unused `[PADi]`.

    `added_tokens.json` and `tokenizer_config.json`'s `added_tokens_decoder` overwrite the
    pieces they name, as llama.cpp's converter does.
    """
    pieces = sentencepiece_pieces(directory / "tokenizer.model")
    size = vocab_size or len(pieces)
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    for i, (piece, score, kind) in enumerate(pieces[:size]):
        tokens[i], scores[i], types[i] = piece, score, kind
    added = read_json(directory / "added_tokens.json", required=False) or {}
    for text, token_id in added.items():
        if isinstance(token_id, int) and 0 <= token_id < size:
            tokens[token_id], scores[token_id], types[token_id] = text, -1000.0, USER_DEFINED
    config = read_json(directory / "tokenizer_config.json", required=False) or {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        token_id, text = int(key), entry["content"]
        if token_id >= size:
            continue
        if entry.get("special") or _looks_special(text):
            types[token_id] = CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[token_id] = USER_DEFINED
        tokens[token_id], scores[token_id] = text, -1000.0
    return Vocab("llama", tokens, types, scores)


def _tokenizer_json(directory: Path) -> dict[str, Any]:
    data = read_json(directory / "tokenizer.json", required=False)
    if data is None:
        raise ConvertError("the model directory has neither tokenizer.model nor tokenizer.json")
    if not isinstance(data.get("model"), dict) or not isinstance(data["model"].get("vocab"), dict):
        raise ConvertError("tokenizer.json has no model.vocab")
    return data


def _id_table(data: dict[str, Any], vocab_size: int | None) -> tuple[list[str], list[int]]:
    """Tokens and types by id from model.vocab plus added_tokens; gaps are unused `[PADi]`."""
    by_id = {int(i): t for t, i in data["model"]["vocab"].items()}
    added = {int(a["id"]): a for a in data.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = a["content"]
    size = max(vocab_size or 0, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            if added[i].get("special") or _looks_special(by_id[i]):
                types.append(CONTROL)
            else:
                tokens[-1] = tokens[-1].replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def bpe_vocab(directory: Path, vocab_size: int | None) -> Vocab:
    """A byte-level BPE `tokenizer.json` (Qwen, Llama 3): tokens, types and merges."""
    data = _tokenizer_json(directory)
    if data["model"].get("type") != "BPE":
        raise ConvertError(f"tokenizer.json model type {data['model'].get('type')!r} is not BPE")
    tokens, types = _id_table(data, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return Vocab("gpt2", tokens, types, merges=merges)


def wordpiece_vocab(directory: Path, vocab_size: int | None) -> Vocab:
    """A WordPiece `tokenizer.json` in llama.cpp's phantom-space form.

    Word-initial pieces get a leading U+2581, continuation pieces lose their `##`; control
    tokens stay as they are.
    """
    data = _tokenizer_json(directory)
    if data["model"].get("type") != "WordPiece":
        raise ConvertError(
            f"tokenizer.json model type {data['model'].get('type')!r} is not WordPiece"
        )
    tokens, types = _id_table(data, vocab_size)
    phantom = [
        t if kind == CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
        for t, kind in zip(tokens, types, strict=True)
    ]
    normalizer = data.get("normalizer") or {}
    lowercase = normalizer.get("lowercase") if normalizer.get("type") == "BertNormalizer" else None
    return Vocab("bert", phantom, types, lowercase=lowercase)
