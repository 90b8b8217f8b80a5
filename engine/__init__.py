"""refllama's inference engine: `load(path)` reads a GGUF model and returns a `Model`.

See engine/model.py for the forward pass and its API, engine/kvcache.py for the cache.
"""

from engine.kvcache import KVCache
from engine.model import Model, load

__all__ = ["KVCache", "Model", "load"]
