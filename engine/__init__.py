"""refllama's inference engine: `load(path)` reads a GGUF model and returns a `Model`, or a
`BertModel` for the encoder architectures (bert, nomic-bert), which only embed.

See engine/models/decoder.py for the decoder forward pass and its API, engine/models/bert.py for
the encoders, engine/models/kvcache.py for the cache.
"""

from __future__ import annotations

from pathlib import Path

from engine.gguf.reader import GGUFFile
from engine.models import bert, decoder, heap
from engine.models.bert import BertModel
from engine.models.decoder import Model
from engine.models.kvcache import KVCache
from engine.models.numerics import LLAMA_CPP, Numerics

__all__ = ["BertModel", "KVCache", "Model", "load"]

# before the engine's threads first allocate (engine/models/heap.py)
heap.keep_scratch()


def load(
    path: str | Path,
    *,
    num_ctx_hint: int = 2048,
    vocab_only: bool = False,
    memory_budget: int | None = None,
    numerics: Numerics = LLAMA_CPP,
) -> Model | BertModel:
    """Load the GGUF at `path` with the forward pass its `general.architecture` needs.

    Arguments as engine/models/decoder.py's `load`; an encoder has no KV cache, so
    `num_ctx_hint` only sizes a decoder's.
    """
    gguf = GGUFFile(Path(path))  # parsed once: the family's loader takes it as it is
    if gguf.metadata.get("general.architecture") in bert.BERT_ARCHS:
        return bert.load(
            gguf, vocab_only=vocab_only, memory_budget=memory_budget, numerics=numerics
        )
    return decoder.load(
        gguf,
        num_ctx_hint=num_ctx_hint,
        vocab_only=vocab_only,
        memory_budget=memory_budget,
        numerics=numerics,
    )
