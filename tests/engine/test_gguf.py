"""engine.gguf.reader: files written by gguf-py's GGUFWriter read back exactly; corrupt files built
byte by byte here raise the typed GGUFError subclasses (never struct/NumPy/IndexError)."""

from __future__ import annotations

import functools
import struct
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType as VT
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import (
    BadMagic,
    GGUFError,
    TensorDataOutOfRange,
    TruncatedFile,
    UnknownTensorType,
    UnsupportedVersion,
)
from engine.gguf.reader import GGUFFile, MetadataType

# --- values of every GGUF value type --------------------------------------------------------

INTS = {
    VT.UINT8: (0, 2**8 - 1),
    VT.INT8: (-(2**7), 2**7 - 1),
    VT.UINT16: (0, 2**16 - 1),
    VT.INT16: (-(2**15), 2**15 - 1),
    VT.UINT32: (0, 2**32 - 1),
    VT.INT32: (-(2**31), 2**31 - 1),
    VT.UINT64: (0, 2**64 - 1),
    VT.INT64: (-(2**63), 2**63 - 1),
}
SCALAR_TYPES = [*INTS, VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]


def values_of(vtype: VT) -> st.SearchStrategy:
    if vtype in INTS:
        return st.integers(*INTS[vtype])
    if vtype == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == VT.BOOL:
        return st.booleans()
    return st.text(min_size=1, max_size=20)


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, tuple[object, VT, VT | None]]:
    """A key for each scalar type and for an array of each, with drawn values."""
    kvs: dict[str, tuple[object, VT, VT | None]] = {}
    for vtype in SCALAR_TYPES:
        kvs[f"test.{vtype.name.lower()}"] = (draw(values_of(vtype)), vtype, None)
        items = draw(st.lists(values_of(vtype), min_size=1, max_size=5))
        kvs[f"test.array.{vtype.name.lower()}"] = (items, VT.ARRAY, vtype)
    return kvs


def write_with_gguf_py(
    path: Path,
    kvs: dict,
    tensors: dict[str, np.ndarray] | None = None,
    alignment: int | None = None,
) -> None:
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type) in kvs.items():
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for name, array in (tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@settings(max_examples=25, deadline=None)
@given(kvs=metadata())
def test_every_value_type_round_trips(kvs: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        write_with_gguf_py(path, kvs)
        f = GGUFFile(path)
    assert f.metadata["general.architecture"] == "llama"
    for key, (value, vtype, sub_type) in kvs.items():
        assert f.metadata_types[key] == MetadataType(vtype, sub_type)
        got = f.metadata[key]
        if vtype == VT.ARRAY and sub_type != VT.STRING:
            assert isinstance(got, np.ndarray)
            dtype = np.float32 if sub_type == VT.FLOAT32 else None
            np.testing.assert_array_equal(got, np.array(value, dtype=dtype))
        elif vtype == VT.FLOAT32:
            assert got == np.float32(value)
        else:
            assert got == value


def test_shape_is_reversed_ne_and_data_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "b": rng.standard_normal((5, 64)).astype(np.float16),
        "c": rng.standard_normal(7).astype(np.float32),
    }
    path = tmp_path / "t.gguf"
    write_with_gguf_py(path, {}, tensors)
    f = GGUFFile(path)
    reader = gguf.GGUFReader(path)
    assert list(f.tensors) == ["a", "b", "c"]
    for rt in reader.tensors:
        assert f.tensors[rt.name].shape == tuple(int(n) for n in reversed(rt.shape))
        assert f.tensors[rt.name].shape == tensors[rt.name].shape
        np.testing.assert_array_equal(f.tensor(rt.name), tensors[rt.name].astype(np.float32))
    assert f.tensors["b"].ggml_type == GGMLType.F16


@pytest.mark.parametrize("alignment", [32, 64, 256])
def test_alignment_is_honoured(tmp_path: Path, alignment: int) -> None:
    tensors = {f"t{i}": np.full(i + 1, i, np.float32) for i in range(4)}
    path = tmp_path / "a.gguf"
    write_with_gguf_py(path, {}, tensors, alignment=None if alignment == 32 else alignment)
    f = GGUFFile(path)
    assert f.alignment == alignment
    assert f.data_offset % alignment == 0
    for name, array in tensors.items():
        assert (f.tensors[name].offset - f.data_offset) % alignment == 0
        np.testing.assert_array_equal(f.tensor(name), array)


# --- hand-built files ------------------------------------------------------------------------


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tensor_info(name: str, ne: list[int], type_id: int, offset: int) -> bytes:
    dims = b"".join(struct.pack("<q", n) for n in ne)
    return gstr(name) + struct.pack("<I", len(ne)) + dims + struct.pack("<IQ", type_id, offset)


def build(
    kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3, alignment: int = 32
) -> tuple[bytes, int]:
    """(file bytes, end of the tensor infos) of a GGUF with these parts."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs)
    head += b"".join(infos)
    return head + bytes(-len(head) % alignment) + data, len(head)


def small_file() -> tuple[bytes, int]:
    """A valid file: a string, a string array, a u32 array; an F32 and a Q8_0 tensor."""
    kvs = [
        kv("general.architecture", VT.STRING, gstr("llama")),
        kv("a.strings", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + gstr("x") + gstr("yz")),
        kv("a.u32", VT.ARRAY, struct.pack("<IQ", VT.UINT32, 3) + struct.pack("<3I", 1, 2, 3)),
    ]
    f32 = np.arange(8, dtype=np.float32).tobytes()
    q8 = np.float16(0.5).tobytes() + bytes(range(32))
    infos = [tensor_info("f", [8], GGMLType.F32, 0), tensor_info("q", [32], GGMLType.Q8_0, 32)]
    return build(kvs, infos, f32 + bytes(32 - len(f32)) + q8)


def load(tmp_path: Path, data: bytes) -> GGUFFile:
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    return GGUFFile(path)


def test_small_file_is_valid(tmp_path: Path) -> None:
    data, _ = small_file()
    f = load(tmp_path, data)
    assert f.metadata["a.strings"] == ["x", "yz"]
    np.testing.assert_array_equal(f.metadata["a.u32"], [1, 2, 3])
    np.testing.assert_array_equal(f.tensor("f"), np.arange(8))
    np.testing.assert_array_equal(f.tensor("q"), np.arange(32) * np.float32(0.5))
    reader = gguf.GGUFReader(tmp_path / "x.gguf")  # the oracle agrees the file is well formed
    assert [t.name for t in reader.tensors] == ["f", "q"]


def test_every_truncation_raises_a_typed_error(tmp_path: Path) -> None:
    data, infos_end = small_file()
    data_end = len(data)
    for cut in range(data_end):
        if cut < infos_end:
            expected: type[GGUFError] = TruncatedFile
        else:
            expected = TensorDataOutOfRange
        with pytest.raises(expected):
            load(tmp_path, data[:cut])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_corruption_raises_only_gguf_errors(data: st.DataObject) -> None:
    """Overwrite a few header bytes: the file loads or raises a GGUFError, nothing else."""
    raw, infos_end = small_file()
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, infos_end - 1))] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.gguf"
        path.write_bytes(bytes(buf))
        try:
            GGUFFile(path)
        except GGUFError:
            pass


def test_bad_magic(tmp_path: Path) -> None:
    data, _ = small_file()
    with pytest.raises(BadMagic, match="GGUX"):
        load(tmp_path, b"GGUX" + data[4:])


@pytest.mark.parametrize("version", [0, 1, 4, 99])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    data, _ = build([], [], version=version)
    with pytest.raises(UnsupportedVersion, match=str(version)) as info:
        load(tmp_path, data)
    assert "big-endian" not in str(info.value)


def test_big_endian_file_gets_a_hint(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    with pytest.raises(UnsupportedVersion, match="big-endian"):
        load(tmp_path, data)


def test_version_2_is_read(tmp_path: Path) -> None:
    data, _ = build([kv("k", VT.UINT8, b"\x07")], [], version=2)
    assert load(tmp_path, data).metadata == {"k": 7}


def test_tensor_data_out_of_range(tmp_path: Path) -> None:
    data, _ = build([], [tensor_info("w", [64], GGMLType.F32, 1 << 20)], bytes(256))
    with pytest.raises(TensorDataOutOfRange, match="'w'"):
        load(tmp_path, data)


def test_huge_dimensions_do_not_wrap_around(tmp_path: Path) -> None:
    """ne products beyond int64 must not overflow into a small, in-range byte count."""
    data, _ = build([], [tensor_info("w", [2**32, 2**32, 2**32], GGMLType.F32, 0)], bytes(64))
    with pytest.raises(TensorDataOutOfRange):
        load(tmp_path, data)


@pytest.mark.parametrize("type_id", [4, 5, 31, 36, 43, 1000])
def test_unknown_tensor_type(tmp_path: Path, type_id: int) -> None:
    data, _ = build([], [tensor_info("w", [32], type_id, 0)], bytes(64))
    with pytest.raises(UnknownTensorType, match=str(type_id)):
        load(tmp_path, data)


@pytest.mark.parametrize(
    ("kvs", "infos", "message"),
    [
        ([kv("k", VT.UINT8, b"\x01"), kv("k", VT.UINT8, b"\x02")], [], "repeated"),
        ([kv("", VT.UINT8, b"\x01")], [], "empty"),
        ([kv("k", 13, b"")], [], "unknown value type"),
        ([kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 0))], [], "nested"),
        ([kv("general.alignment", VT.UINT32, struct.pack("<I", 48))], [], "alignment"),
        ([kv("general.alignment", VT.UINT64, struct.pack("<Q", 64))], [], "alignment"),
        ([], [tensor_info("w", [32], GGMLType.F32, 0)] * 2, "repeated"),
        ([], [tensor_info("w" * 64, [32], GGMLType.F32, 0)], "longer than"),
        ([], [tensor_info("w", [1, 1, 1, 1, 1], GGMLType.F32, 0)], "dimensions"),
        ([], [tensor_info("w", [], GGMLType.F32, 0)], "dimensions"),
        ([], [tensor_info("w", [-1], GGMLType.F32, 0)], "negative"),
        ([], [tensor_info("w", [16], GGMLType.Q8_0, 0)], "block size"),
        ([], [tensor_info("w", [8], GGMLType.F32, 8)], "multiple of the alignment"),
    ],
)
def test_malformed_files(
    tmp_path: Path, kvs: list[bytes], infos: list[bytes], message: str
) -> None:
    data, _ = build(kvs, infos, bytes(256))
    with pytest.raises(GGUFError, match=message):
        load(tmp_path, data)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TruncatedFile):
        load(tmp_path, b"")


def test_string_array_count_beyond_the_file(tmp_path: Path) -> None:
    data, _ = build([kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2**62))], [])
    with pytest.raises(TruncatedFile):
        load(tmp_path, data)


def test_numeric_array_count_beyond_the_file(tmp_path: Path) -> None:
    data, _ = build([kv("k", VT.ARRAY, struct.pack("<IQ", VT.UINT64, 2**62))], [])
    with pytest.raises(TruncatedFile):
        load(tmp_path, data)


# --- the real models, against gguf-py's reader -------------------------------------------------


@functools.cache
def gguf_reader(path: Path) -> gguf.GGUFReader:
    """One GGUFReader per real model for the session (Gemma 3's takes seconds to open)."""
    return gguf.GGUFReader(path)


def reader_value(field: gguf.ReaderField) -> object:
    if field.types[0] == VT.ARRAY and field.types[-1] != VT.STRING:
        return np.array(field.contents())
    return field.contents()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_real_models_match_gguf_reader(model: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    ours = GGUFFile(path)
    reader = gguf_reader(path)
    fields = {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        mtype = ours.metadata_types[key]
        assert [mtype.type] + ([mtype.element] if mtype.element is not None else []) == field.types
        expected = reader_value(field)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(ours.metadata[key], expected)
        else:
            assert ours.metadata[key] == expected, key
    assert ours.alignment == reader.alignment
    assert ours.data_offset == reader.data_offset
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert info.ggml_type == t.tensor_type
        assert info.shape == tuple(int(n) for n in reversed(t.shape))
        assert (info.offset, info.n_bytes) == (t.data_offset, t.n_bytes)
        assert info.n_elements == t.n_elements
