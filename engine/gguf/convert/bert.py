"""BERT encoders (BertModel): config keys, tensor names and the WordPiece vocabulary.

`bert.` prefixes and old `gamma`/`beta` names are normalised first; the pooler and the
masked-LM / next-sentence heads are dropped, since the GGUF model only embeds.
"""

from __future__ import annotations

from typing import Any

import gguf

from engine.gguf.convert.family import Family
from engine.gguf.convert.vocab import wordpiece_vocab

_DROPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _normalise(name: str) -> str:
    name = name.removeprefix("bert.")
    if name.endswith(".gamma"):
        return name[: -len(".gamma")] + ".weight"
    if name.endswith(".beta"):
        return name[: -len(".beta")] + ".bias"
    return name


class Bert(Family):
    gguf_arch = "bert"
    model_arch = gguf.MODEL_ARCH.BERT

    def __init__(self, directory: Any, config: dict[str, Any]) -> None:
        super().__init__(directory, config)
        self.n_embd = self.positive_int("hidden_size")
        self.n_ff = self.positive_int("intermediate_size")
        self.n_vocab = self.positive_int("vocab_size")
        self.n_ctx = self.positive_int("max_position_embeddings")
        self.n_types = self.positive_int("type_vocab_size", 1)
        self.positive_int("num_attention_heads")

    def skip(self, name: str) -> bool:
        name = _normalise(name)
        return super().skip(name) or name in _DROPPED or name.startswith("cls.")

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(_normalise(hf_name))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, ff = self.n_embd, self.n_ff
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.n_vocab, d),
            "embeddings.position_embeddings.weight": (self.n_ctx, d),
            "embeddings.token_type_embeddings.weight": (self.n_types, d),
            "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,),
        }
        for i in range(self.block_count):
            p = f"encoder.layer.{i}."
            for module, (rows, cols) in (
                ("attention.self.query", (d, d)),
                ("attention.self.key", (d, d)),
                ("attention.self.value", (d, d)),
                ("attention.output.dense", (d, d)),
                ("intermediate.dense", (ff, d)),
                ("output.dense", (d, ff)),
            ):
                shapes[f"{p}{module}.weight"] = (rows, cols)
                shapes[f"{p}{module}.bias"] = (rows,)
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                shapes[f"{p}{norm}.weight"] = (d,)
                shapes[f"{p}{norm}.bias"] = (d,)
        return shapes

    def check_name(self, name: str) -> str:
        return _normalise(name)

    def load_vocab(self) -> None:
        self.vocab = wordpiece_vocab(self.directory, self.config.get("vocab_size"))

    def write_metadata(self, writer: gguf.GGUFWriter) -> None:
        self.write_common(writer)
        if (eps := self.number("layer_norm_eps")) is not None:
            writer.add_layer_norm_eps(eps)
        writer.add_causal_attention(False)
        self.write_pooling(writer)

    def write_vocab(self, writer: gguf.GGUFWriter) -> None:
        writer.add_token_type_count(self.n_types)
        self.write_tokens(writer, "default")


ARCHITECTURES: dict[str, type[Bert]] = {"BertModel": Bert}
