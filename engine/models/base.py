"""What every loaded model shares: its file, config, tokenizer, numerics and weights.

engine/models/decoder.py (`Model`, generation) and engine/models/bert.py (`BertModel`, embeddings
only) add their forward passes on top; the server asks either for its vocabulary size, training
context and tokenizer through these same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Protocol, TypeVar

from engine.models.numerics import LLAMA_CPP, Numerics
from engine.tokenizer import Tokenizer


class _Sizes(Protocol):
    @property
    def n_vocab(self) -> int: ...

    @property
    def n_ctx_train(self) -> int: ...


ConfigT = TypeVar("ConfigT", bound=_Sizes)
WeightsT = TypeVar("WeightsT")


class LoadedModel(Generic[ConfigT, WeightsT]):
    """A model file loaded: `weights` is None when it was loaded for its vocabulary only."""

    def __init__(
        self,
        path: Path,
        config: ConfigT,
        tokenizer: Tokenizer,
        weights: WeightsT | None,
        numerics: Numerics = LLAMA_CPP,
    ) -> None:
        self.path = path
        self.config = config
        self.tokenizer = tokenizer
        self.numerics = numerics
        self._weights = weights

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

    def _weights_or_raise(self) -> WeightsT:
        if self._weights is None:
            raise RuntimeError(f"{self.path.name} was loaded with vocab_only=True")
        return self._weights
