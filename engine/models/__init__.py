"""Token ids in, logits or hidden states out: the forward passes and what they are built from.

`base.py` is what every loaded model shares (file, config, tokenizer, weights, numerics);
`decoder.py` holds the llama-family decoders (llama, qwen2, qwen3, gemma3) and `load`, `bert.py`
the encoders (bert, nomic-bert), `vision.py` and `multimodal.py` the image path; `config.py`
reads their hyperparameters; `blockmatmul.py`, `attention.py`, `numerics.py` and `rope.py` are the
kernel-independent arithmetic (the determinism argument is in blockmatmul's docstring), and
`parallel.py` runs their independent pieces on a few threads; `kvcache.py` is the per-sequence
cache; `inspection.py` the logit lens and attention maps.
Imports `engine.gguf` and `engine.tokenizer` only.
"""
