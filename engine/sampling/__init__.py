"""Logits in, a token out: Ollama's options (`options`), llama-server's sampler chain (`chain`),
and the pieces that make it bit-exact: std::mt19937 (`rng`), libstdc++'s sorts (`stdsort`) and
glibc's expf/logf (`libm`). Imports `engine.errors` only (constraints arrive by protocol).
"""
