"""Bytes in, arrays out: the GGUF reader (`reader`), ggml block formats (`quants`), llama.cpp's
re-quantization (`quantize`) and the pinned real models (`fetch`).

The lowest stage: imports nothing else of the engine but `engine.errors`.
"""
