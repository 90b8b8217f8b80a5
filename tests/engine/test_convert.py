"""engine/gguf/convert against llama.cpp's convert_hf_to_gguf.py (tests/golden/convert_golden.json).

Each case converts its directory and must hold the converter's tensors (names, types, shapes,
data bytes) and inference metadata; where the converter's venv is present the golden record is
re-made live for one tiny directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.gguf.convert import ConvertError, open_directory
from engine.gguf.fetch import directory_path
from tests.golden.make_convert_golden import (
    CASES,
    CONVERTER_PYTHON,
    run_converter,
    summarize,
)
from tests.tiny_hf import ARCHS, damage_directory, write_tiny_hf


def _convert(directory: Path, out: Path) -> dict:
    for _ in open_directory(directory).write(out):
        pass
    return summarize(out)


def _assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours["tensors"]) == sorted(theirs["tensors"])
    for name, expected in theirs["tensors"].items():
        assert ours["tensors"][name] == expected, name
    assert ours["metadata"] == theirs["metadata"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_directory_matches_converter(tmp_path: Path, arch: str) -> None:
    ours = _convert(write_tiny_hf(tmp_path / arch, arch), tmp_path / "ours.gguf")
    _assert_same(ours, CASES[arch])


@pytest.mark.slow
def test_minilm_matches_converter(tmp_path: Path) -> None:
    ours = _convert(directory_path("minilm"), tmp_path / "ours.gguf")
    _assert_same(ours, CASES["minilm"])


@pytest.mark.oracle
@pytest.mark.skipif(not CONVERTER_PYTHON.is_file(), reason="the converter's torch venv is absent")
def test_golden_is_live(tmp_path: Path) -> None:
    directory = write_tiny_hf(tmp_path / "llama", "llama")
    run_converter(directory, tmp_path / "theirs.gguf")
    assert summarize(tmp_path / "theirs.gguf") == CASES["llama"]


def test_llama_qk_rows_are_permuted(tmp_path: Path) -> None:
    """Hand check of the layout: GGUF row 2i+1 of head 0 is Hugging Face row i + Dh/2."""
    import numpy as np
    from gguf import GGUFReader

    from tests.tiny_hf import HEAD_DIM, tensors

    _convert(write_tiny_hf(tmp_path / "llama", "llama"), tmp_path / "out.gguf")
    q = next(
        t for t in GGUFReader(tmp_path / "out.gguf").tensors if t.name == "blk.0.attn_q.weight"
    )
    hf = tensors("llama")["model.layers.0.self_attn.q_proj.weight"].astype(np.float16)
    rows = np.asarray(q.data)
    half = HEAD_DIM // 2
    for i in range(half):
        assert (rows[2 * i] == hf[i]).all() and (rows[2 * i + 1] == hf[i + half]).all()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_config", "config.json is missing"),
        ("unknown_arch", "unsupported architecture 'MambaForCausalLM'"),
        (
            "shape",
            "'model.layers.0.mlp.down_proj.weight' has shape [64, 96], "
            "but config.json implies [64, 80]",
        ),
        ("truncated", "model.safetensors is not a valid safetensors file"),
    ],
)
def test_bad_directory(tmp_path: Path, damage: str, message: str) -> None:
    directory = damage_directory(write_tiny_hf(tmp_path / "d", "llama"), damage)
    with pytest.raises(ConvertError, match=message.replace("[", r"\[").replace("]", r"\]")):
        open_directory(directory)


def test_same_directory_same_bytes(tmp_path: Path) -> None:
    """A create of the same directory must give the same blob digest (the file is stable)."""
    directory = write_tiny_hf(tmp_path / "qwen2", "qwen2")
    for out in ("a.gguf", "b.gguf"):
        for _ in open_directory(directory).write(tmp_path / out):
            pass
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_bf16_weights_widen_then_round_to_f16(tmp_path: Path) -> None:
    """BF16 sources are widened to F32 (the top half of its bits) and rounded to F16, as
    llama.cpp computes them; the file is written here with a hand-made Safetensors header."""
    import struct

    import numpy as np
    from gguf import GGUFReader

    from tests.tiny_hf import tensors

    directory = write_tiny_hf(tmp_path / "qwen3", "qwen3")
    values: dict[str, np.ndarray] = {}
    header, blobs, offset = {}, [], 0

    for name, array in sorted(tensors("qwen3").items()):
        bits = (array.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        values[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        data = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (directory / "model.safetensors").write_bytes(
        struct.pack("<Q", len(head)) + head + b"".join(blobs)
    )
    _convert(directory, tmp_path / "out.gguf")
    got = {t.name: t for t in GGUFReader(tmp_path / "out.gguf").tensors}
    q = got["blk.0.attn_q.weight"]
    assert q.tensor_type.name == "F16"
    expected = values["model.layers.0.self_attn.q_proj.weight"].astype(np.float16)
    assert np.asarray(q.data).tobytes() == expected.tobytes()
    norm = got["blk.0.attn_norm.weight"]
    assert norm.tensor_type.name == "F32"
    assert (
        np.asarray(norm.data).tobytes() == values["model.layers.0.input_layernorm.weight"].tobytes()
    )
