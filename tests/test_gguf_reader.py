"""oficina.formats.gguf: valid files read exactly (and agree with gguf-py's GGUFReader); broken and
hostile files, made by byte-patching a valid one, raise FormatError and nothing else."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oficina.errors import FormatError
from oficina.formats.gguf import ArrayInfo, read_header

VOCAB = [f"tok{i}" for i in range(100)]  # longer than the inline limit of 64
HUGE = 2**62


def write_tiny(path: Path, **writer_kw) -> Path:
    """A small valid GGUF: scalars, strings, short and long arrays, F32/F16/Q8_0 tensors."""
    w = gguf.GGUFWriter(path, "tiny", **writer_kw)
    w.add_name("tiny model")
    w.add_uint32("tiny.block_count", 2)
    w.add_float32("tiny.eps", 1e-5)
    w.add_bool("tiny.flag", True)
    w.add_int64("tiny.big", -(2**40))
    w.add_string("tiny.aaaa", "first")
    w.add_string("tiny.bbbb", "second")
    w.add_array("tiny.short", [1, 2, 3])
    w.add_array("tokenizer.ggml.tokens", VOCAB)
    w.add_array("tokenizer.ggml.scores", [float(i) / 4 for i in range(len(VOCAB))])
    w.add_tensor("a.weight", np.arange(128, dtype=np.float32).reshape(2, 64))
    w.add_tensor("b.weight", np.ones((3, 32), dtype=np.float16))
    q8 = gguf.quants.quantize(np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64), Q.Q8_0)
    w.add_tensor("c.weight", q8, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("gguf") / "model.gguf")


@pytest.fixture(scope="module")
def layout(valid):
    """Where each key-value pair and tensor info starts, according to gguf-py (not the code under test)."""
    reader = gguf.GGUFReader(valid)
    kv = {name: f.offset for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    return kv, {t.name: t.field.offset for t in reader.tensors}


def expect_error(path: Path, data: bytes, match: str | None) -> str:
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=match) as info:
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path.name}: ") and "\n" not in message
    assert peak < 16 * 2**20, f"{peak} bytes allocated reading a {len(data)}-byte file"
    return message


def patched(data: bytes, pos: int, fmt: str, value) -> bytes:
    raw = struct.pack("<" + fmt, value)
    return data[:pos] + raw + data[pos + len(raw) :]


# -- valid files ------------------------------------------------------------------------------


def test_reads_tiny_file_exactly(valid):
    h = read_header(valid)
    assert (h.version, h.alignment, h.file_size, h.byte_order) == (3, 32, valid.stat().st_size, "<")
    assert h.data_offset % 32 == 0
    got = [(t.name, t.shape, t.type_name, t.n_elements, t.n_bytes, t.offset - h.data_offset) for t in h.tensors]
    assert got == [
        ("a.weight", (64, 2), "F32", 128, 512, 0),
        ("b.weight", (32, 3), "F16", 96, 192, 512),
        ("c.weight", (64, 4), "Q8_0", 256, 4 * 2 * 34, 512 + 192),
    ]
    assert h.get("general.architecture") == "tiny" and h.get("general.name") == "tiny model"
    assert h.get("tiny.block_count") == 2 and h.get("tiny.flag") is True and h.get("tiny.big") == -(2**40)
    assert h.get("tiny.eps") == pytest.approx(1e-5) and h.get("missing", 7) == 7
    assert h.get("tiny.short") == [1, 2, 3] and h.array("tiny.short") == [1, 2, 3]
    assert h.get("tokenizer.ggml.tokens") == ArrayInfo("STRING", len(VOCAB))
    assert h.array("tokenizer.ggml.tokens") == VOCAB
    assert h.array("tokenizer.ggml.scores") == [i / 4 for i in range(len(VOCAB))]
    with pytest.raises(FormatError, match="no array 'tiny.flag'"):
        h.array("tiny.flag")


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_agrees_with_gguf_reader(tmp_path, endian):
    path = write_tiny(tmp_path / "model.gguf", endianess=endian)
    assert_agrees(read_header(path), gguf.GGUFReader(path))


def assert_agrees(h, reader: gguf.GGUFReader) -> None:
    assert h.data_offset == reader.data_offset and h.alignment == reader.alignment
    assert [(t.name, t.shape, t.type_name, t.n_elements, t.n_bytes, t.offset) for t in h.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, t.n_elements, t.n_bytes, t.data_offset)
        for t in reader.tensors
    ]
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(h.metadata) == list(fields)
    for key, field in fields.items():
        ours = h.array(key) if field.types[0] == gguf.GGUFValueType.ARRAY else h.get(key)
        assert repr(ours) == repr(field.contents()), key  # repr: a fuzzed float may be NaN


def test_custom_alignment(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "tiny")
    w.add_custom_alignment(256)
    w.add_tensor("x", np.zeros(8, dtype=np.float32))
    w.add_tensor("y", np.zeros(8, dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    h = read_header(tmp_path / "m.gguf")
    assert h.alignment == 256 and h.data_offset % 256 == 0
    assert [t.offset - h.data_offset for t in h.tensors] == [0, 256]


def test_array_notices_a_changed_file(tmp_path):
    path = write_tiny(tmp_path / "model.gguf")
    h = read_header(path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FormatError, match="changed"):
        h.array("tokenizer.ggml.tokens")


# -- not files at all -------------------------------------------------------------------------


def test_empty_missing_directory_fifo(tmp_path):
    (tmp_path / "empty.gguf").touch()
    with pytest.raises(FormatError, match="^empty.gguf: empty file"):
        read_header(tmp_path / "empty.gguf")
    with pytest.raises(FormatError, match="^nope.gguf: no such file"):
        read_header(tmp_path / "nope.gguf")
    with pytest.raises(FormatError, match="is a directory"):
        read_header(tmp_path)
    if hasattr(os, "mkfifo"):  # opening a FIFO for reading would block forever
        os.mkfifo(tmp_path / "pipe.gguf")
        with pytest.raises(FormatError, match="not a regular file"):
            read_header(tmp_path / "pipe.gguf")


# -- broken and hostile files -----------------------------------------------------------------


def test_truncated_anywhere(valid, tmp_path):
    data = valid.read_bytes()
    h = read_header(valid)
    data_end = max(t.offset + t.n_bytes for t in h.tensors)
    bad = tmp_path / "model.gguf"
    for cut in range(1, len(data)):
        if cut >= data_end:  # only the padding after the last tensor is gone: still valid
            bad.write_bytes(data[:cut])
            assert read_header(bad).tensors == h.tensors
        elif cut < h.data_offset + 8 or cut % 7 == 0:  # every header cut, a sample of data cuts
            expect_error(bad, data[:cut], "truncated|runs past the end|can hold|bad magic")


def test_messages_name_the_part(valid, layout, tmp_path):
    data, (kv, ti) = valid.read_bytes(), layout
    bad = tmp_path / "model.gguf"
    assert "truncated: tensor info 1 ends" in expect_error(bad, data[: ti["b.weight"] + 12], None)
    assert "truncated: key 'tiny.short' ends" in expect_error(bad, data[: kv["tiny.short"] + 30], None)
    assert "tensor 'c.weight' data at offset" in expect_error(bad, data[: read_header(valid).tensors[2].offset + 9], None)


def cases(kv: dict[str, int], ti: dict[str, int]):
    """(name, patch(data) -> data, message pattern), with positions from gguf-py's reader."""
    val = lambda key: kv[key] + 8 + len(key)  # noqa: E731 - the key's u32 value type, then its value
    dims = lambda name: ti[name] + 8 + len(name) + 4  # noqa: E731 - after the name and n_dims
    a_type, b_type, c_type = dims("a.weight") + 16, dims("b.weight") + 16, dims("c.weight") + 16
    p = patched
    return [
        ("bad magic", lambda d: b"GGUG" + d[4:], r"not a GGUF file \(bad magic\)"),
        ("version 99", lambda d: p(d, 4, "I", 99), "unsupported GGUF version 99"),
        ("version 1", lambda d: p(d, 4, "I", 1), "unsupported GGUF version 1"),
        ("version 0", lambda d: p(d, 4, "I", 0), "unsupported GGUF version"),
        ("tensor count", lambda d: p(d, 8, "Q", HUGE), "tensor count 4611686018427387904 is more than"),
        ("tensor count max", lambda d: p(d, 8, "Q", 2**64 - 1), "tensor count"),
        ("kv count", lambda d: p(d, 16, "Q", HUGE), "key-value count"),
        ("kv count +1", lambda d: p(d, 16, "Q", len(kv) + 2), "truncated|unknown value type|UTF-8"),
        ("key length", lambda d: p(d, kv["tiny.aaaa"], "Q", HUGE), "truncated: key 6"),
        ("string length", lambda d: p(d, val("tiny.aaaa") + 4, "Q", HUGE), "truncated: key 'tiny.aaaa'"),
        ("tensor name length", lambda d: p(d, ti["a.weight"], "Q", HUGE), "truncated: tensor info 0"),
        ("array length", lambda d: p(d, val("tiny.short") + 8, "Q", HUGE), "array length 4611686018427387904"),
        ("vocab length", lambda d: p(d, val("tokenizer.ggml.tokens") + 8, "Q", HUGE), "array length"),
        ("vocab length+1", lambda d: p(d, val("tokenizer.ggml.tokens") + 8, "Q", 101), "truncated|UTF-8"),
        ("value type 13", lambda d: p(d, val("tiny.flag"), "I", 13), "key 'tiny.flag' has unknown value type 13"),
        ("value type max", lambda d: p(d, val("tiny.flag"), "I", 2**32 - 1), "unknown value type"),
        ("array item type", lambda d: p(d, val("tiny.short") + 4, "I", 77), "'tiny.short' has unknown value type 77"),
        ("nested array", lambda d: p(d, val("tiny.short") + 4, "I", 9), "array of arrays"),
        ("non-UTF-8 value", lambda d: p(d, val("tiny.aaaa") + 12, "B", 0xFF), "'tiny.aaaa': string .* not valid UTF-8"),
        ("non-UTF-8 key", lambda d: p(d, kv["tiny.aaaa"] + 8, "B", 0xC3), "key 6: string .* not valid UTF-8"),
        ("non-UTF-8 vocab", lambda d: d.replace(b"tok99", b"tok\xff9"), "tokenizer.ggml.tokens.*UTF-8"),
        ("duplicate key", lambda d: d.replace(b"tiny.bbbb", b"tiny.aaaa"), "duplicate key 'tiny.aaaa'"),
        ("duplicate tensor", lambda d: p(d, ti["b.weight"] + 8, "B", ord("a")), "duplicate tensor name 'a.weight'"),
        ("n_dims 0", lambda d: p(d, dims("a.weight") - 4, "I", 0), "'a.weight' has 0 dimensions"),
        ("n_dims 5", lambda d: p(d, dims("a.weight") - 4, "I", 5), "has 5 dimensions"),
        ("zero dim", lambda d: p(d, dims("b.weight") + 8, "Q", 0), "'b.weight' has a zero dimension"),
        ("dim overflow", lambda d: p(p(d, dims("a.weight"), "Q", 2**40), dims("a.weight") + 8, "Q", 2**40), "too many elements"),
        ("dim 2**64-1", lambda d: p(d, dims("a.weight"), "Q", 2**64 - 1), "too many elements"),
        ("huge dim", lambda d: p(d, dims("a.weight"), "Q", 2**50), "runs past the end"),
        ("removed ggml type", lambda d: p(d, a_type, "I", 4), "'a.weight' has unknown ggml type 4"),
        ("unknown ggml type", lambda d: p(d, b_type, "I", 2**31), "unknown ggml type"),
        ("block size", lambda d: p(d, dims("c.weight"), "Q", 48), "rows of 48 .* Q8_0 block size 32"),
        ("offset past end", lambda d: p(d, c_type + 4, "Q", 2**40), r"'c.weight' data at offset \d+ runs past the end"),
        ("offset max", lambda d: p(d, c_type + 4, "Q", 2**64 - 32), "runs past the end"),
        ("misaligned", lambda d: p(d, b_type + 4, "Q", 520), "'b.weight' offset 520 is not a multiple of the alignment 32"),
        ("overlap", lambda d: p(d, b_type + 4, "Q", 480), "'a.weight' and 'b.weight' overlap"),
        ("same offset", lambda d: p(d, c_type + 4, "Q", 0), "overlap"),
        ("bigger type", lambda d: p(d, b_type, "I", int(Q.F32)), "overlap"),
    ]


def test_broken_corpus(valid, layout, tmp_path):
    data = valid.read_bytes()
    for name, patch, pattern in cases(*layout):
        broken = patch(data)
        assert broken != data and len(broken) == len(data), name
        expect_error(tmp_path / "model.gguf", broken, pattern)


@pytest.mark.parametrize(
    "value, vtype, pattern",
    [(32, gguf.GGUFValueType.UINT64, "must be a UINT32, not UINT64"), (48, gguf.GGUFValueType.UINT32, "48 is not a power of two"),
     (0, gguf.GGUFValueType.UINT32, "0 is not a power of two")],
)
def test_bad_alignment(tmp_path, value, vtype, pattern):
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "tiny")
    w.add_key_value("general.alignment", value, vtype)
    w.add_tensor("x", np.zeros(8, dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    expect_error(tmp_path / "m.gguf", (tmp_path / "m.gguf").read_bytes(), pattern)


# -- fuzz -------------------------------------------------------------------------------------

INTERESTING = [0, 1, 4, 5, 9, 12, 13, 31, 32, 2**31, 2**32 - 1, HUGE, 2**63, 2**64 - 1]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutations_parse_or_raise_format_error(valid, tmp_path, data):
    """Random byte flips, 8-byte values at random places and truncations: either a header that
    gguf-py reads the same way, or a FormatError, never anything else."""
    raw = bytearray(valid.read_bytes())
    header_end = read_header(valid).data_offset
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        pos = data.draw(st.integers(0, header_end), label="pos")
        if data.draw(st.booleans(), label="wide"):
            raw[pos : pos + 8] = struct.pack("<Q", data.draw(st.sampled_from(INTERESTING), label="value"))
        else:
            raw[pos] = data.draw(st.integers(0, 255), label="byte") if pos < len(raw) else 0
    if data.draw(st.booleans(), label="truncate"):
        del raw[data.draw(st.integers(0, len(raw)), label="cut") :]
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(raw))
    try:
        h = read_header(path)
    except FormatError as e:
        assert str(e).startswith("fuzz.gguf: ") and "\n" not in str(e)
        return
    assert_agrees(h, gguf.GGUFReader(path))  # what we accept, gguf-py reads without surprise
