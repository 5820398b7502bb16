"""Validating GGUF header reader. GGUF files come from strangers: every header field is checked
here before gguf-py's GGUFReader or transformers touch the file.

Layout (ggml docs/gguf.md; gguf-py gguf_reader.py), little-endian unless the version is swapped:
  "GGUF" | u32 version | u64 n_tensors | u64 n_kv
  | n_kv      x (string key, u32 value_type, value)          value: scalar | string | array
  | n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
  | padding to general.alignment | tensor data (tensor offsets are relative to its start)
A string is a u64 byte length + UTF-8; an array is u32 item type + u64 length + items.

Every count and length is checked against the bytes left in the file before it is used, so a
hostile header can neither make us allocate nor loop past the file. The checks follow llama.cpp's
gguf_init_from_file_impl (ggml/src/gguf.cpp); where it and gguf-py differ we take the stricter rule.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from ..errors import FormatError

__all__ = ["ArrayInfo", "GGUFHeader", "TensorInfo", "read_header"]

SUPPORTED_VERSIONS = (2, 3)  # v1 had u32 counts; ggml dropped it in 2023
MAX_DIMS = 4  # GGML_MAX_DIMS
INLINE_ARRAY_LIMIT = 64  # longer arrays stay in the file until header.array(key) asks for them
_HEADER_BYTES = 4 + 4 + 8 + 8
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, ggml type, offset

_V = GGUFValueType
_SCALAR_CODES = {  # struct codes of the fixed-width value types
    _V.UINT8: "B", _V.INT8: "b", _V.UINT16: "H", _V.INT16: "h", _V.UINT32: "I", _V.INT32: "i",
    _V.FLOAT32: "f", _V.BOOL: "?", _V.UINT64: "Q", _V.INT64: "q", _V.FLOAT64: "d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order as stored: ne0 (the contiguous row) first
    type_name: str  # GGMLQuantizationType name, e.g. "Q4_K", "F32"
    n_elements: int
    n_bytes: int
    offset: int  # absolute file offset of the data


@dataclass(frozen=True)
class ArrayInfo:
    """Stands in for an array longer than INLINE_ARRAY_LIMIT (a 262k-token vocab) in metadata."""

    type_name: str  # GGUFValueType name of the items, e.g. "STRING"
    length: int
    offset: int = field(default=0, repr=False, compare=False)  # first item, absolute


@dataclass
class GGUFHeader:
    path: Path
    version: int
    alignment: int
    data_offset: int
    file_size: int
    metadata: dict[str, Any]  # scalars, str, lists; ArrayInfo for long arrays
    tensors: list[TensorInfo]
    byte_order: str = "<"  # struct prefix: "<" little-endian, ">" big-endian

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def array(self, key: str) -> list:
        """The whole array under key, read from the file now if it was left there."""
        value = self.metadata.get(key)
        if isinstance(value, list):
            return list(value)
        if not isinstance(value, ArrayInfo):
            raise FormatError(f"{self.path.name}: no array {_q(key)} in the metadata")
        with _mapped(self.path) as buf:
            cur = _Cursor(buf, self.byte_order, self.path.name, value.offset)
            if len(buf) != self.file_size:
                cur.fail("file changed since its header was read")
            cur.what = f"key {_q(key)}"
            return _items(cur, _V[value.type_name], value.length)


class _Cursor:
    """Bounded reads from a buffer; `what` names the part being read, for error messages."""

    def __init__(self, buf: Any, order: str, name: str, pos: int = 0):
        self.buf, self.order, self.name, self.pos, self.what = buf, order, name, pos, "header"
        self._u64 = struct.Struct(order + "Q").unpack_from

    def fail(self, message: str) -> None:
        raise FormatError(f"{self.name}: {message}")

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> int:
        """Reserve n bytes and return where they start."""
        if n > len(self.buf) - self.pos:
            self.fail(f"truncated: {self.what} ends past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, code: str, count: int = 1) -> tuple:
        fmt = f"{self.order}{count}{code}"
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt)))

    def u32(self) -> int:
        return self.unpack("I")[0]

    def u64(self) -> int:
        return self._u64(self.buf, self.take(8))[0]

    def string(self) -> str:  # the hot loop of a 262k-token vocab, hence take() inlined
        buf, start = self.buf, self.pos + 8
        if start > len(buf) or (end := start + self._u64(buf, start - 8)[0]) > len(buf):
            self.fail(f"truncated: {self.what} ends past the end of the file")
        self.pos = end
        try:
            return buf[start:end].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{self.what}: string at offset {start} is not valid UTF-8")


def _q(text: str) -> str:
    """A name from the file, quoted for a one-line message: escaped and cut to 80 characters."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _value_type(cur: _Cursor, raw: int) -> GGUFValueType:
    try:
        return _V(raw)
    except ValueError:
        cur.fail(f"{cur.what} has unknown value type {raw}")


def _array_head(cur: _Cursor) -> tuple[GGUFValueType, int]:
    item_type, length = _value_type(cur, cur.u32()), cur.u64()
    if item_type == _V.ARRAY:  # the spec allows it, llama.cpp and every writer do not
        cur.fail(f"{cur.what} is an array of arrays, which is not supported")
    min_item = 8 if item_type == _V.STRING else struct.calcsize(_SCALAR_CODES[item_type])
    if length * min_item > cur.left():
        cur.fail(f"{cur.what}: array length {length} is more than the rest of the file can hold")
    return item_type, length


def _items(cur: _Cursor, item_type: GGUFValueType, length: int, keep: bool = True) -> list:
    if item_type == _V.STRING:
        if keep:
            return [cur.string() for _ in range(length)]
        for _ in range(length):  # walked even when skipped, so that every string's UTF-8 is checked
            cur.string()
        return []
    if keep:
        return list(cur.unpack(_SCALAR_CODES[item_type], length))
    cur.take(length * struct.calcsize(_SCALAR_CODES[item_type]))
    return []


def _value(cur: _Cursor, vtype: GGUFValueType) -> Any:
    if vtype == _V.STRING:
        return cur.string()
    if vtype != _V.ARRAY:
        return cur.unpack(_SCALAR_CODES[vtype])[0]
    item_type, length = _array_head(cur)
    if length <= INLINE_ARRAY_LIMIT:
        return _items(cur, item_type, length)
    info = ArrayInfo(item_type.name, length, cur.pos)
    _items(cur, item_type, length, keep=False)
    return info


def _tensor_info(cur: _Cursor, i: int, seen: set[str]) -> tuple[str, tuple[int, ...], str, int, int, int]:
    """-> (name, shape, type name, n_elements, n_bytes, offset relative to the data section)"""
    cur.what = f"tensor info {i}"
    name = cur.string()
    if name in seen:
        cur.fail(f"duplicate tensor name {_q(name)}")
    seen.add(name)
    n_dims = cur.u32()
    if not 1 <= n_dims <= MAX_DIMS:
        cur.fail(f"tensor {_q(name)} has {n_dims} dimensions, expected 1 to {MAX_DIMS}")
    shape = cur.unpack("Q", n_dims)
    if 0 in shape:
        cur.fail(f"tensor {_q(name)} has a zero dimension in shape {shape}")
    n_elements = math.prod(shape)
    if n_elements >= 2**63:  # ggml counts elements in int64_t
        cur.fail(f"tensor {_q(name)} shape {shape} has too many elements")
    raw_type = cur.u32()
    try:
        qtype = GGMLQuantizationType(raw_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        cur.fail(f"tensor {_q(name)} has unknown ggml type {raw_type}")
    if shape[0] % block_size:  # quant blocks never straddle rows (gguf.cpp, quants.py)
        cur.fail(f"tensor {_q(name)} rows of {shape[0]} are not a multiple of the {qtype.name} block size {block_size}")
    return name, shape, qtype.name, n_elements, n_elements // block_size * type_size, cur.u64()


@contextmanager
def _mapped(path: Path) -> Iterator[Any]:
    """The file read-only memory-mapped; FormatError for anything that is not a non-empty file."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise FormatError(f"{path.name}: is a directory, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block or never end
            raise FormatError(f"{path.name}: not a regular file")
        if st.st_size == 0:
            raise FormatError(f"{path.name}: empty file, not a GGUF file")
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise FormatError(f"{path.name}: no such file ({path})") from None
    except (OSError, ValueError) as e:  # permission, I/O error, mmap refused
        raise FormatError(f"{path.name}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    with buf:
        yield buf


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and validate the header of a GGUF file; FormatError names the first problem."""
    path = Path(path)
    with _mapped(path) as buf:
        size = len(buf)
        if buf[:4] != b"GGUF":
            raise FormatError(f"{path.name}: not a GGUF file (bad magic)")
        if size < _HEADER_BYTES:
            raise FormatError(f"{path.name}: truncated: header ends past the end of the file")
        # A small version whose low half reads as 0 is byte-swapped: a big-endian file
        # (the same test as gguf_reader.py and gguf.cpp).
        order = ">" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF == 0 else "<"
        cur = _Cursor(buf, order, path.name, pos=4)
        version, n_tensors, n_kv = cur.u32(), cur.u64(), cur.u64()
        if version not in SUPPORTED_VERSIONS:
            cur.fail(f"unsupported GGUF version {version} (expected 2 or 3)")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left():
            cur.fail(f"tensor count {n_tensors} is more than a {size}-byte file can hold")
        if n_kv * _MIN_KV_BYTES > cur.left() - n_tensors * _MIN_TENSOR_INFO_BYTES:
            cur.fail(f"key-value count {n_kv} is more than a {size}-byte file can hold")

        metadata: dict[str, Any] = {}
        alignment = GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):
            cur.what = f"key {i}"
            key = cur.string()
            if key in metadata:
                cur.fail(f"duplicate key {_q(key)}")
            cur.what = f"key {_q(key)}"
            vtype = _value_type(cur, cur.u32())
            metadata[key] = _value(cur, vtype)
            if key == "general.alignment":  # gguf.cpp reads it with gguf_get_val_u32
                alignment = metadata[key]
                if vtype != _V.UINT32:
                    cur.fail(f"general.alignment must be a UINT32, not {vtype.name}")
                if alignment == 0 or alignment & (alignment - 1):
                    cur.fail(f"general.alignment {alignment} is not a power of two")

        seen: set[str] = set()
        raw = [_tensor_info(cur, i, seen) for i in range(n_tensors)]
        data_offset = -(-cur.pos // alignment) * alignment  # the data section starts aligned

        tensors = []
        for name, shape, type_name, n_elements, n_bytes, rel in raw:
            if rel % alignment:
                cur.fail(f"tensor {_q(name)} offset {rel} is not a multiple of the alignment {alignment}")
            if data_offset + rel + n_bytes > size:
                cur.fail(f"tensor {_q(name)} data at offset {data_offset + rel} runs past the end of the file")
            tensors.append(TensorInfo(name, shape, type_name, n_elements, n_bytes, data_offset + rel))
        ordered = sorted(tensors, key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:]):
            if b.offset < a.offset + a.n_bytes:
                cur.fail(f"tensors {_q(a.name)} and {_q(b.name)} overlap at offset {b.offset}")
        return GGUFHeader(path, version, alignment, data_offset, size, metadata, tensors, cur.order)
