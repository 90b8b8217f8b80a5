"""What every family shares: config look-ups, tensor-name mapping, pooling and special tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from engine.gguf.convert.source import ConvertError, read_json
from engine.gguf.convert.vocab import Vocab

_POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS,
            "lasttoken": gguf.PoolingType.LAST}  # fmt: skip


class Family:
    """One Hugging Face architecture class; subclasses set `gguf_arch` and `model_arch`."""

    gguf_arch: str
    model_arch: gguf.MODEL_ARCH
    optional: frozenset[str] = frozenset()  # expected tensors a directory may leave out

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.config = config
        self.block_count = self.positive_int("num_hidden_layers")
        self.names = gguf.get_tensor_name_map(self.model_arch, self.block_count)
        self.vocab: Vocab | None = None

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            found = "missing" if key not in self.config else f"{value!r}"
            raise ConvertError(f"config.json {key} must be a positive integer, found {found}")
        return value

    def number(self, key: str, default: float | None = None) -> float | None:
        value = self.config.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConvertError(f"config.json {key} must be a number, found {value!r}")
        return value

    def skip(self, name: str) -> bool:
        """Tensors the converter drops before checking (buffers, unused heads)."""
        return name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq"))

    def check_name(self, name: str) -> str:
        """The name `expected_shapes` keys this tensor under."""
        return name

    def gguf_name(self, hf_name: str) -> str:
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConvertError(f"no GGUF name for tensor {hf_name!r}")
        return name

    def rewrite(self, hf_name: str, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        yield self.gguf_name(hf_name), data

    def write_common(self, writer: gguf.GGUFWriter) -> None:
        """The keys llama.cpp's TextModel writes from config.json for every family."""
        writer.add_block_count(self.block_count)
        for key, add in (
            ("max_position_embeddings", writer.add_context_length),
            ("hidden_size", writer.add_embedding_length),
            ("intermediate_size", writer.add_feed_forward_length),
            ("num_attention_heads", writer.add_head_count),
            ("num_key_value_heads", writer.add_head_count_kv),
        ):
            if key in self.config:
                add(self.positive_int(key))

    def write_pooling(self, writer: gguf.GGUFWriter) -> None:
        """sentence-transformers' Pooling module (modules.json) as `{arch}.pooling_type`."""
        modules = read_json(self.directory / "modules.json", required=False, kind=list) or []
        poolers = [m for m in modules if isinstance(m, dict) and "Pooling" in str(m.get("type"))]
        path = poolers[0].get("path") if poolers else None
        if path is None:
            return
        pooling = read_json(self.directory / path / "config.json", required=False)
        if pooling is None:  # `FROM ./dir` uploads top-level files only
            return
        if pooling.get("pooling_mode_mean_tokens"):
            kind = gguf.PoolingType.MEAN
        elif pooling.get("pooling_mode_cls_token"):
            kind = gguf.PoolingType.CLS
        elif pooling.get("pooling_mode_lasttoken"):
            kind = gguf.PoolingType.LAST
        elif pooling.get("pooling_mode") in _POOLING:
            kind = _POOLING[pooling["pooling_mode"]]
        else:
            raise ConvertError("only mean, cls and last-token pooling are supported")
        writer.add_pooling_type(kind)

    def write_tokens(self, writer: gguf.GGUFWriter, pre: str) -> None:
        """`tokenizer.ggml.*` from the loaded vocabulary, then gguf-py's special-token reader."""
        vocab = self.vocab
        assert vocab is not None
        writer.add_tokenizer_model(vocab.model)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocab.tokens)
        if vocab.scores is not None:
            writer.add_token_scores(vocab.scores)
        writer.add_token_types(vocab.types)
        if vocab.merges:
            writer.add_token_merges(vocab.merges)
        special = gguf.SpecialVocab(self.directory, n_vocab=len(vocab.tokens))
        special.add_to_gguf(writer, quiet=True)
        if vocab.lowercase is not None:
            writer.add_bool("tokenizer.ggml.normalizer.lowercase", vocab.lowercase)
