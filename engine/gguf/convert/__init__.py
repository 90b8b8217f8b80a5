"""Hugging Face Safetensors directories to GGUF, as llama.cpp's `convert_hf_to_gguf.py` does.

`open_directory(path)` reads `config.json`, the Safetensors headers and the tokenizer files and
checks every tensor's shape against the config, so a bad directory fails before anything is
written; `Conversion.write(out, progress)` then writes the GGUF with gguf-py's GGUFWriter.
Families: `decoder` (llama, qwen2, qwen3, gemma3) and `bert`; `source` reads the directory,
`vocab` turns `tokenizer.model` / `tokenizer.json` into `tokenizer.ggml.*` values.

Bytes in, arrays out: imports only numpy, safetensors, gguf-py and `engine.errors`.
"""

from engine.gguf.convert.build import Conversion, ConvertError, open_directory

__all__ = ["Conversion", "ConvertError", "open_directory"]
