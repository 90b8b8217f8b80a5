"""Tokenizers built from GGUF `tokenizer.ggml.*` metadata, identical to llama.cpp's.

`Tokenizer.from_gguf(gguf_file)` builds byte-level BPE (`gpt2`), SentencePiece BPE (`llama`) or
WordPiece (`bert`) on HF `tokenizers`; see engine/tokenizer/tokenizer.py for the API and the
detokenization rules, and gguf-and-models.md section 6 for the algorithms.
"""

from engine.tokenizer.tokenizer import StreamDetokenizer, Tokenizer

__all__ = ["StreamDetokenizer", "Tokenizer"]
