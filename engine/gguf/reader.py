"""GGUF reader: header, metadata, tensor directory, memory-mapped tensor data.

Layout as written by gguf-py / read by llama.cpp's `ggml/src/gguf.cpp` (spec: gguf-and-models.md
section 1). GGUF lists a tensor's dims innermost-first (`ne[0]` is the row length); they are
reversed here, once, so `TensorInfo.shape` is the C-ordered NumPy shape. No math happens here:
`GGUFFile.tensor` hands the raw bytes to `engine.gguf.quants.dequantize`.

Metadata is parsed with `struct` over one `mmap`; numeric arrays become NumPy arrays read straight
from the map and string arrays Python lists, which keeps a 262k-token vocabulary cheap to load.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as GGMLType
from gguf import GGUFValueType

from engine.errors import (
    BadMagic,
    GGUFError,
    TensorDataOutOfRange,
    TruncatedFile,
    UnknownTensorType,
    UnsupportedVersion,
)
from engine.gguf import quants

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL

# Fixed-size scalar value types: struct format and NumPy dtype (both little-endian).
_SCALARS: dict[GGUFValueType, tuple[str, str]] = {
    GGUFValueType.UINT8: ("<B", "<u1"),
    GGUFValueType.INT8: ("<b", "<i1"),
    GGUFValueType.UINT16: ("<H", "<u2"),
    GGUFValueType.INT16: ("<h", "<i2"),
    GGUFValueType.UINT32: ("<I", "<u4"),
    GGUFValueType.INT32: ("<i", "<i4"),
    GGUFValueType.FLOAT32: ("<f", "<f4"),
    GGUFValueType.BOOL: ("<?", "<u1"),
    GGUFValueType.UINT64: ("<Q", "<u8"),
    GGUFValueType.INT64: ("<q", "<i8"),
    GGUFValueType.FLOAT64: ("<d", "<f8"),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # NumPy order: reversed ggml ne, e.g. (n_out, n_in) for a weight
    offset: int  # absolute byte offset of the first block in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class MetadataType:
    """The GGUF value type of one metadata key; `element` is set for arrays."""

    type: GGUFValueType
    element: GGUFValueType | None = None


_U64 = struct.Struct("<Q")


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise TruncatedFile(what, start, n, self.size)
        self.pos = start + n
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        start = self.need(n, what)
        return self.buf[start : start + n].decode("utf-8", errors="surrogateescape")

    def strings(self, count: int, key: str) -> list[str]:
        """An array's `count` strings back to back: `string` in one loop (a vocabulary has
        up to ~260k of them), with the same bounds checks and messages."""
        buf, size, pos = self.buf, self.size, self.pos
        length = _U64.unpack_from
        out = []
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"element {i} of {key!r} length")
            (n,) = length(buf, pos)
            pos += 8
            if pos + n > size:
                self.pos = pos
                self.need(n, f"element {i} of {key!r}")
            out.append(buf[pos : pos + n].decode("utf-8", errors="surrogateescape"))
            pos += n
        self.pos = pos
        return out


def _value_type(type_id: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(type_id)
    except ValueError:
        raise GGUFError(f"metadata key {key!r} has unknown value type id {type_id}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> tuple[Any, MetadataType]:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {key!r}"), MetadataType(vtype)
    if vtype in _SCALARS:
        value = cur.unpack(_SCALARS[vtype][0], f"value of {key!r}")
        return value, MetadataType(vtype)
    # ARRAY: element type, count, elements back to back.
    etype = _value_type(cur.u32(f"array type of {key!r}"), key)
    count = cur.u64(f"array length of {key!r}")
    if etype == GGUFValueType.ARRAY:
        raise GGUFError(f"metadata key {key!r} is a nested array, which llama.cpp rejects")
    if etype == GGUFValueType.STRING:
        if count * 8 > cur.size - cur.pos:
            raise TruncatedFile(f"array {key!r}", cur.pos, count * 8, cur.size)
        return cur.strings(count, key), MetadataType(vtype, etype)
    dtype = np.dtype(_SCALARS[etype][1])
    start = cur.need(count * dtype.itemsize, f"array {key!r}")
    arr = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=start).copy()
    if etype == GGUFValueType.BOOL:
        arr = arr.astype(bool)
    return arr, MetadataType(vtype, etype)


class GGUFFile:
    """A parsed GGUF file: `metadata`, `metadata_types`, `tensors` (by name, in file order).

    Tensor bytes stay in the memory map until `raw()` or `tensor()` asks for them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise TruncatedFile("magic", 0, 4, 0)
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = size
        cur = _Cursor(self._map, size)
        start = cur.need(4, "magic")
        magic = bytes(self._map[start : start + 4])
        if magic != GGUF_MAGIC:
            raise BadMagic(magic)
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            swapped = (self.version & 0xFFFF) == 0 and self.version != 0
            hint = " (the file looks big-endian, which is not supported)" if swapped else ""
            raise UnsupportedVersion(self.version, hint)
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, MetadataType] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            if not key or key in self.metadata:
                raise GGUFError(f"metadata key {key!r} is empty or repeated")
            vtype = _value_type(cur.u32(f"value type of {key!r}"), key)
            self.metadata[key], self.metadata_types[key] = _read_value(cur, vtype, key)

        self.alignment = self._alignment()
        infos = [self._read_tensor_info(cur) for _ in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, ggml_type, shape, rel_offset in infos:
            if name in self.tensors:
                raise GGUFError(f"tensor name {name!r} is repeated")
            if rel_offset % self.alignment:
                raise GGUFError(
                    f"tensor {name!r} offset {rel_offset} is not a multiple of the "
                    f"alignment {self.alignment}"
                )
            n_bytes = quants.tensor_nbytes(ggml_type, shape)
            start = self.data_offset + rel_offset
            if start + n_bytes > size:
                raise TensorDataOutOfRange(name, start, start + n_bytes, size)
            self.tensors[name] = TensorInfo(name, ggml_type, shape, start, n_bytes)

    def _alignment(self) -> int:
        value = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(value, int)
            or self.metadata_types.get("general.alignment", MetadataType(GGUFValueType.UINT32))
            != MetadataType(GGUFValueType.UINT32)
            or value <= 0
            or value & (value - 1)
        ):
            raise GGUFError(f"general.alignment must be a power-of-two UINT32, got {value!r}")
        return value

    def _read_tensor_info(self, cur: _Cursor) -> tuple[str, GGMLType, tuple[int, ...], int]:
        name = cur.string("tensor name")
        if len(name.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
            raise GGUFError(f"tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
        n_dims = cur.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions, expected 1 to {MAX_DIMS}")
        ne = [int(cur.unpack("<q", f"dimensions of {name!r}")) for _ in range(n_dims)]
        if any(n < 0 for n in ne):
            raise GGUFError(f"tensor {name!r} has a negative dimension in {ne}")
        type_id = cur.u32(f"type of {name!r}")
        ggml_type = quants.ggml_type(type_id)
        if ggml_type is None:
            raise UnknownTensorType(name, type_id)
        block = quants.block_elements(ggml_type)
        if ne[0] % block:
            raise GGUFError(
                f"tensor {name!r} row length {ne[0]} is not a multiple of the "
                f"{ggml_type.name} block size {block}"
            )
        rel_offset = cur.u64(f"offset of {name!r}")
        return name, ggml_type, tuple(reversed(ne)), rel_offset

    def raw(self, name: str) -> npt.NDArray[np.uint8]:
        """The tensor's bytes as a read-only uint8 view into the memory map."""
        info = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=info.n_bytes, offset=info.offset)

    def tensor(self, name: str) -> npt.NDArray[np.float32]:
        """The tensor dequantized to float32, in its NumPy shape."""
        info = self.tensors[name]
        return quants.dequantize(self.raw(name), info.ggml_type, info.shape)
