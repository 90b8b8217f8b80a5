"""refllama's inference engine: `load(path)` reads a GGUF model and returns a `Model`.

See engine/models/decoder.py for the forward pass and its API, engine/models/kvcache.py for the
cache.
"""

from engine.models.decoder import Model, load
from engine.models.kvcache import KVCache

__all__ = ["KVCache", "Model", "load"]
