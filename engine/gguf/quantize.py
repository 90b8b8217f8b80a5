"""Re-quantize a whole GGUF model, as `llama_model_quantize` / Ollama's `quantize` do.

Which tensors are quantized and to which type follows llama.cpp's `llama_tensor_get_type` as
ported by Ollama (server/quantization.go; spec gguf-and-models.md 3.6 and 3.7). Tensor bytes
come from the reference quantizers in engine/gguf/quants/quant.py. Tensors and metadata are written
in llama.cpp's order, so for F16, BF16 and F32 sources the whole output file equals
`llama_model_quantize`'s byte for byte (tests/engine/test_quantize.py). The file is written
with gguf-py's GGUFWriter into a temporary file next to `dst`, synced, then renamed over `dst`:
a crash never leaves a partial `dst`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType, GGUFWriter, LlamaFileType

from engine.errors import InvalidOption, UnsupportedQuantType
from engine.gguf import quants
from engine.gguf.reader import GGUFFile

log = logging.getLogger(__name__)

# Accepted `file_type` values (upper-cased, as Ollama does) -> (general.file_type, default type).
FILE_TYPES: dict[str, tuple[LlamaFileType, GGMLType]] = {
    "F32": (LlamaFileType.ALL_F32, GGMLType.F32),
    "F16": (LlamaFileType.MOSTLY_F16, GGMLType.F16),
    "BF16": (LlamaFileType.MOSTLY_BF16, GGMLType.BF16),
    "Q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLType.Q8_0),
    "Q4_0": (LlamaFileType.MOSTLY_Q4_0, GGMLType.Q4_0),
    "Q4_1": (LlamaFileType.MOSTLY_Q4_1, GGMLType.Q4_1),
    "Q5_0": (LlamaFileType.MOSTLY_Q5_0, GGMLType.Q5_0),
    "Q5_1": (LlamaFileType.MOSTLY_Q5_1, GGMLType.Q5_1),
    "Q4_K_S": (LlamaFileType.MOSTLY_Q4_K_S, GGMLType.Q4_K),
    "Q4_K_M": (LlamaFileType.MOSTLY_Q4_K_M, GGMLType.Q4_K),
    "Q4_K": (LlamaFileType.MOSTLY_Q4_K_M, GGMLType.Q4_K),  # Ollama's alias
    "Q6_K": (LlamaFileType.MOSTLY_Q6_K, GGMLType.Q6_K),
}
SOURCE_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION

# Names containing one of these are never quantized (Ollama's newType, llama.cpp's
# tensor_allows_quantization): norms, MoE routers, small conv/RWKV/T5 tensors.
_KEEP_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_inp_shexp.weight",
    "ssm_conv1d.weight",
    "shortconv.conv.weight",
    "time_mix_first.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    "per_layer_token_embd.weight",
)
_KEEP_NAMES = ("position_embd.weight", "token_types.weight")
# When ne0 is not a multiple of the chosen type's block: K-type -> legacy type (then F16).
_FALLBACK = {
    GGMLType.Q4_K: GGMLType.Q5_0,
    GGMLType.Q5_K: GGMLType.Q5_1,
    GGMLType.Q6_K: GGMLType.Q8_0,
}
_MLA = ("attn_k_b.weight", "attn_v_b.weight", "attn_kv_a_mqa.weight", "attn_q_a.weight",
        "attn_q_b.weight")  # fmt: skip


def parse_file_type(file_type: str) -> tuple[LlamaFileType, GGMLType]:
    """`file_type` (any case) -> (LlamaFileType, default tensor type); InvalidOption if unknown."""
    found = FILE_TYPES.get(file_type.upper())
    if found is None:
        raise InvalidOption("quantize", file_type, "one of " + ", ".join(FILE_TYPES))
    return found


def should_quantize(name: str, n_dims: int) -> bool:
    """Whether a tensor is quantized at all (otherwise it is copied unchanged)."""
    return (
        name.endswith("weight")
        and not name.startswith("v.")
        and "mm." not in name
        and n_dims >= 2
        and not any(s in name for s in _KEEP_SUBSTRINGS)
        and name not in _KEEP_NAMES
    )


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


@dataclass
class TypeRules:
    """llama.cpp's per-tensor type choice for K-quant file types, with its running counters.

    Call `choose` on the quantized tensors in `llama_cpp_order` (the attn_v and ffn_down
    counters advance with each call, so they count layers in that order).
    """

    ftype: LlamaFileType
    default: GGMLType
    n_attn_v: int
    n_ffn_down: int
    has_output: bool
    n_experts: int
    i_attn_v: int = 0
    i_ffn_down: int = 0

    @classmethod
    def for_model(cls, f: GGUFFile, ftype: LlamaFileType, default: GGMLType) -> TypeRules:
        names = list(f.tensors)
        attn_v = ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")
        layers = {_layer(n) for n in names} - {-1}
        arch = f.metadata.get("general.architecture", "")
        return cls(
            ftype=ftype,
            default=default,
            n_attn_v=sum(any(s in n for s in attn_v) for n in names),
            n_ffn_down=len(layers),
            has_output="output.weight" in names,
            n_experts=max(1, int(f.metadata.get(f"{arch}.expert_count", 0))),
        )

    def choose(self, name: str, row: int) -> GGMLType:
        """The type for tensor `name` whose rows have `row` (= ne0) elements."""
        t, ftype, q4_k_m = self.default, self.ftype, self.ftype == LlamaFileType.MOSTLY_Q4_K_M
        q4_k_s = ftype == LlamaFileType.MOSTLY_Q4_K_S
        if quants.block_elements(t) == 1:  # float targets: no rules (llama.cpp: not quantized)
            return t
        if name == "output.weight" or (not self.has_output and name == "token_embd.weight"):
            if row % quants.block_elements(t):
                t = GGMLType.Q8_0
            elif t != GGMLType.Q8_0:
                t = GGMLType.Q6_K
        elif "attn_v.weight" in name:
            if q4_k_m and use_more_bits(self.i_attn_v, self.n_attn_v):
                t = GGMLType.Q6_K
            elif q4_k_s and self.i_attn_v < 4:
                t = GGMLType.Q5_K
            if self.n_experts == 8:
                t = GGMLType.Q8_0
            self.i_attn_v += 1
        elif "attn_k.weight" in name:
            if self.n_experts == 8:
                t = GGMLType.Q8_0
        elif any(s in name for s in _MLA):
            t = GGMLType.Q8_0
        elif "ffn_down" in name:
            if q4_k_m and use_more_bits(self.i_ffn_down, self.n_ffn_down):
                t = GGMLType.Q6_K
            elif q4_k_s and self.i_ffn_down < self.n_ffn_down // 8:
                t = GGMLType.Q5_K
            self.i_ffn_down += 1
        elif "attn_output.weight" in name:
            if self.n_experts == 8 and (q4_k_s or q4_k_m):
                t = GGMLType.Q5_K
        elif "attn_qkv.weight" in name and q4_k_m:
            t = GGMLType.Q5_K
        if row % quants.block_elements(t):
            t = _FALLBACK.get(t, t)
            if row % quants.block_elements(t):
                t = GGMLType.F16
        return t


def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_cpp_order(names: list[str]) -> list[str]:
    """Tensor names in llama.cpp's order (its loader's `weight_name_comparer`): tensors outside
    layers first, then layer by layer in numeric order, each group sorted by name. The type rules'
    counters advance in this order, and llama.cpp writes the quantized file in it."""
    return sorted(names, key=lambda n: (_layer(n), n))


def plan(f: GGUFFile, file_type: str) -> dict[str, GGMLType]:
    """The output type of every tensor of `f` for `file_type`, in llama.cpp's order."""
    ftype, default = parse_file_type(file_type)
    rules = TypeRules.for_model(f, ftype, default)
    out = {}
    for name in llama_cpp_order(list(f.tensors)):
        info = f.tensors[name]
        if should_quantize(name, len(info.shape)):
            out[name] = rules.choose(name, info.shape[-1])
        else:
            out[name] = info.ggml_type
    return out


def _metadata_value(value: Any, vtype: GGUFValueType) -> Any:
    """Our reader's value -> what GGUFWriter packs (bytes keep invalid UTF-8 as it was)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")
    if isinstance(value, list):
        return [v.encode("utf-8", errors="surrogateescape") for v in value]
    return value


def quantize_gguf(
    src: Path, dst: Path, file_type: str, *, progress: Callable[[int], None] | None = None
) -> None:
    """Write `src` re-quantized to `file_type` (q8_0, q4_0, q4_1, q5_0, q5_1, q4_K_S, q4_K_M,
    q6_K, or f16/bf16/f32; any case) at `dst`, atomically.

    Metadata is copied with `general.file_type` set and `general.quantization_version` = 2.
    `progress`, if given, is called after each tensor with the number of source tensor bytes
    it consumed (they add up to the sum of the source tensors' sizes).
    Raises InvalidOption for an unknown `file_type` and UnsupportedQuantType when a tensor that
    must be quantized is not F32/F16/BF16.
    """
    ftype, _ = parse_file_type(file_type)
    f = GGUFFile(src)
    types = plan(f, file_type)
    for name, t in types.items():
        source = f.tensors[name].ggml_type
        if t != source and source not in SOURCE_TYPES:
            raise UnsupportedQuantType(source.name, f"quantize tensor {name!r} from")

    dst = Path(dst)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write(f, types, ftype, tmp, progress)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(dst.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write(
    f: GGUFFile,
    types: dict[str, GGMLType],
    ftype: LlamaFileType,
    path: Path,
    progress: Callable[[int], None] | None,
) -> None:
    arch = f.metadata.get("general.architecture", "llama")
    writer = GGUFWriter(path, arch)  # writes general.architecture first
    try:
        _write_all(writer, f, types, ftype, progress)
    finally:
        writer.close()


def _write_all(
    writer: GGUFWriter,
    f: GGUFFile,
    types: dict[str, GGMLType],
    ftype: LlamaFileType,
    progress: Callable[[int], None] | None,
) -> None:
    # As llama.cpp: copy the KVs in order, then (re)set quantization_version and file_type, which
    # gguf_set_val moves to the end.
    for key, value in f.metadata.items():
        mtype = f.metadata_types[key]
        if key in ("general.architecture", "general.quantization_version", "general.file_type"):
            continue
        if key == "general.alignment":
            writer.data_alignment = int(value)
        writer.add_key_value(key, _metadata_value(value, mtype.type), mtype.type, mtype.element)
    writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
    writer.add_uint32("general.file_type", int(ftype))

    for name, t in types.items():
        info = f.tensors[name]
        nbytes = quants.tensor_nbytes(t, info.shape)
        writer.add_tensor_info(name, info.shape, np.dtype(np.float32), nbytes, raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, t in types.items():
        info = f.tensors[name]
        if t == info.ggml_type:
            data = f.raw(name)
        else:
            log.debug("quantizing %s %s -> %s", name, info.ggml_type.name, t.name)
            data = quants.quantize(f.tensor(name), t).reshape(-1)
        writer.write_tensor_data(data)
        if progress is not None:
            progress(info.n_bytes)
    writer.flush()
    for fout in writer.fout or ():
        os.fsync(fout.fileno())
