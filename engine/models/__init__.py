"""Token ids in, logits or hidden states out: the forward passes and what they are built from.

`decoder.py` holds the llama-family decoders (llama, qwen2, qwen3, gemma3) and `load`; `config.py`
reads their hyperparameters; `blockmatmul.py`, `attention.py`, `numerics.py` and `rope.py` are the
kernel-independent arithmetic (the determinism argument is in blockmatmul's docstring);
`kvcache.py` is the per-sequence cache. Imports `engine.gguf` and `engine.tokenizer` only.
"""
