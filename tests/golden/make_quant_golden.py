"""Golden digests of llama.cpp's quantizer on a tiny seeded F16 llama model.

Run (needs llama_cpp): python tests/golden/make_quant_golden.py
It builds the model (`build_model`, seeded, so every run writes the same bytes), quantizes it
with `llama_model_quantize` (llama-cpp-python's low-level API, one thread, no imatrix) to every
file type engine.gguf.quantize supports, and records the sha256 of each output file and the type
and sha256 of every output tensor's bytes in tests/golden/quant_golden.json. BF16 and F32
copies of the model get whole-file digests for q8_0 and q4_K_M.
tests/engine/test_quantize.py compares engine.gguf.quantize.quantize_gguf with those digests, and
redoes the llama.cpp run live when llama_cpp is importable.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from engine.gguf import quants
from engine.gguf.quantize import FILE_TYPES
from engine.gguf.reader import GGUFFile

GOLDEN = Path(__file__).with_name("quant_golden.json")
FILE_TYPES_TESTED = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_K_S", "q4_K_M", "q6_K")
OTHER_SOURCES_TESTED = ("q8_0", "q4_K_M")  # for the BF16 and F32 sources: whole-file digests

# The tiny model: rows of 256 (n_embd) take K-quants; rows of 64 (attn_output, ffn_down) force
# llama.cpp's fallbacks (Q4_K -> Q5_0, Q6_K -> Q8_0); 4 layers mix use_more_bits choices.
N_VOCAB, N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 96, 256, 4, 2, 1, 32, 64


SOURCE_FILE_TYPES = {
    GGMLType.F16: gguf.LlamaFileType.MOSTLY_F16,
    GGMLType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    GGMLType.F32: gguf.LlamaFileType.ALL_F32,
}


def build_model(path: Path, seed: int = 0, dtype: GGMLType = GGMLType.F16) -> None:
    """Write the seeded llama GGUF (about 1 MB) with a toy vocabulary to `path`.

    Matrices are stored as `dtype` (F16, BF16 or F32; the values are the same f16 numbers),
    norms as F32.
    """
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:  # NumPy shape (n_out, n_in), as GGUFReader gives
        return (rng.standard_normal(shape) * 0.05).astype(np.float16)

    w = gguf.GGUFWriter(path, "llama")

    def add_matrix(name: str, m: np.ndarray) -> None:
        if dtype == GGMLType.F16:
            w.add_tensor(name, m)
        elif dtype == GGMLType.F32:
            w.add_tensor(name, m.astype(np.float32))
        else:
            bf16 = quants.quantize(m.astype(np.float32), GGMLType.BF16)
            w.add_tensor(name, bf16, raw_dtype=GGMLType.BF16)

    w.add_name("refllama-quant-golden")
    w.add_file_type(int(SOURCE_FILE_TYPES[dtype]))
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(3, N_VOCAB)])
    w.add_token_scores([0.0] * 3 + [-float(i) for i in range(3, N_VOCAB)])
    w.add_token_types([2, 3, 3] + [1] * (N_VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    embd = weight(N_VOCAB, N_EMBD)
    embd[0] = 0  # an all-zero row: zero blocks in every type
    embd[1] = np.float16(-0.25)  # a constant negative row
    embd[2, ::2] = -0.0  # signed zeros between values
    add_matrix("token_embd.weight", embd)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(
            p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32)
        )
        add_matrix(p + "attn_q.weight", weight(N_HEAD * HEAD_DIM, N_EMBD))
        add_matrix(p + "attn_k.weight", weight(N_HEAD_KV * HEAD_DIM, N_EMBD))
        add_matrix(p + "attn_v.weight", weight(N_HEAD_KV * HEAD_DIM, N_EMBD))
        add_matrix(p + "attn_output.weight", weight(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(
            p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32)
        )
        add_matrix(p + "ffn_gate.weight", weight(N_FF, N_EMBD))
        add_matrix(p + "ffn_up.weight", weight(N_FF, N_EMBD))
        add_matrix(p + "ffn_down.weight", weight(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    out = weight(N_VOCAB, N_EMBD)
    out[:, :7] *= 40  # outliers: some blocks with one large value
    add_matrix("output.weight", out)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_digests(path: Path) -> dict[str, list[str]]:
    """{tensor name: [ggml type name, sha256 of its bytes]} in file order."""
    f = GGUFFile(path)
    return {
        name: [info.ggml_type.name, hashlib.sha256(f.raw(name).tobytes()).hexdigest()]
        for name, info in f.tensors.items()
    }


def llama_cpp_quantize(src: Path, dst: Path, file_type: str) -> None:
    """Quantize with llama.cpp's llama_model_quantize (reference quantizers, no imatrix)."""
    import llama_cpp  # the oracle: only this script and @needs_oracle tests import it

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 1
    params.ftype = int(FILE_TYPES[file_type.upper()][0])
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({file_type}) failed with status {status}")


def main() -> None:
    golden: dict[str, dict] = {
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),  # type: ignore[dict-item]
        "source_sha256": {},
        "files": {},
        "quantized": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in SOURCE_FILE_TYPES:
            src = Path(tmp) / f"{dtype.name}.gguf"
            build_model(src, dtype=dtype)
            golden["source_sha256"][dtype.name] = sha256_file(src)
            golden["files"][dtype.name] = {}
            for file_type in FILE_TYPES_TESTED if dtype == GGMLType.F16 else OTHER_SOURCES_TESTED:
                dst = Path(tmp) / f"{dtype.name}-{file_type}.gguf"
                llama_cpp_quantize(src, dst, file_type)
                golden["files"][dtype.name][file_type] = sha256_file(dst)
                if dtype == GGMLType.F16:
                    golden["quantized"][file_type] = tensor_digests(dst)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
