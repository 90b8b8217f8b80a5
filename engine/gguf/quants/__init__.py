"""ggml block formats: dequantization (`dequant`) and llama.cpp's reference quantizers (`quant`).

The public entry points are `dequantize(raw, ggml_type, shape)` and `quantize(values, ggml_type)`;
`TYPE_SIZES` gives each type's (elements, bytes) per block.
"""

from engine.gguf.quants.dequant import CHUNK_ELEMENTS, CODES, QUANTS, dequantize
from engine.gguf.quants.quant import QUANTIZERS, quantize
from engine.gguf.quants.types import (
    F16_SCALE_OFFSETS,
    TYPE_SIZES,
    block_elements,
    ggml_type,
    tensor_nbytes,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "CODES",
    "F16_SCALE_OFFSETS",
    "QUANTIZERS",
    "QUANTS",
    "TYPE_SIZES",
    "block_elements",
    "dequantize",
    "ggml_type",
    "quantize",
    "tensor_nbytes",
]
