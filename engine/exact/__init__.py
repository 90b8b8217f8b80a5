"""Bit-exact emulations of llama.cpp's one-token CPU forward pass (`llama.py` for SmolLM2's
types, `gemma3.py` for Gemma 3's), with the same `logits(tokens)` API as engine/models.

Slow on purpose: they reproduce llama.cpp's summation orders for one ISA build (see the
golden data's recorded oracle build). Import `engine.gguf` and `engine.models` only.
"""
