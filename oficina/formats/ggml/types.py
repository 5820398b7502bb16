"""GGML tensor types, one class each, registered by name: how a float32 matrix becomes the bytes
of one GGUF tensor, and back.

    TYPES["Q4_K"].quantize(w)       # float [..., n] -> uint8 [..., n / 256 * 144]
    TYPES["Q4_K"].dequantize(raw)   # and back to float32

Defining a subclass registers it (as gguf-py's ``quants.py`` registers its block types with
``__init_subclass__``), so a test that loops over ``TYPES`` covers a new type by itself.

Where the bytes come from: the simple block types (Q4_0 .. Q8_0) are ports of ggml's reference
quantizers below, BF16 is gguf-py's; the K-quants are ``kquants.py``, since gguf-py has none.
tests/test_kquants_exact.py checks every type here against llama.cpp's own quantizer byte for
byte. Dequantizing is gguf-py's for every type.
"""

from __future__ import annotations

from typing import ClassVar

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from . import kquants

__all__ = ["TYPES", "GGMLType", "get"]

TYPES: dict[str, type["GGMLType"]] = {}

# rows quantized per step: bounds the float32 temporaries of the K-quant searches (~40 x input)
_CHUNK_VALUES = 1 << 20


class GGMLType:
    """One GGML tensor type. Subclasses name their ``qtype`` in the class statement."""

    qtype: ClassVar[Q]
    name: ClassVar[str]
    block_size: ClassVar[int]  # weights per block
    type_size: ClassVar[int]  # bytes per block

    def __init_subclass__(cls, qtype: Q, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.qtype, cls.name = qtype, qtype.name
        cls.block_size, cls.type_size = gguf.GGML_QUANT_SIZES[qtype]
        TYPES[cls.name] = cls

    @classmethod
    def bits_per_weight(cls) -> float:
        return 8 * cls.type_size / cls.block_size

    @classmethod
    def fits(cls, ncols: int) -> bool:
        """Rows of ``ncols`` weights split into whole blocks."""
        return ncols % cls.block_size == 0

    @classmethod
    def row_bytes(cls, ncols: int) -> int:
        return ncols // cls.block_size * cls.type_size

    @classmethod
    def quantize(cls, data: np.ndarray) -> np.ndarray:
        """float [..., ncols] -> uint8 [..., row_bytes(ncols)], the tensor's bytes in the file."""
        ncols = data.shape[-1]
        if not cls.fits(ncols):
            raise ValueError(f"rows of {ncols} do not split into {cls.name} blocks of {cls.block_size}")
        rows = data.reshape(-1, ncols)
        out = np.empty((rows.shape[0], cls.row_bytes(ncols)), np.uint8)
        step = max(1, _CHUNK_VALUES // ncols)
        with np.errstate(all="ignore"):  # the searches divide by zero where C does, and discard it alike
            for start in range(0, rows.shape[0], step):
                blocks = rows[start:start + step].astype(np.float32).reshape(-1, cls.block_size)
                out[start:start + step] = cls.quantize_blocks(blocks).reshape(-1, out.shape[1])
        return out.reshape(*data.shape[:-1], out.shape[1])

    @classmethod
    def dequantize(cls, raw: np.ndarray) -> np.ndarray:
        """uint8 [..., row_bytes] (or the stored dtype) -> float32 [..., ncols]."""
        return gguf.quants.dequantize(raw.view(np.uint8), cls.qtype).astype(np.float32, copy=False)

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """float32 [nb, block_size] -> uint8 [nb, type_size]"""
        return gguf.quants._type_traits[cls.qtype].quantize_blocks(blocks)


def get(name: str) -> type[GGMLType]:
    t = TYPES.get(name.upper())
    if t is None:
        raise KeyError(f"unknown GGML type {name!r} (known: {', '.join(TYPES)})")
    return t


# -- plain floats ----------------------------------------------------------------------------------

class F32(GGMLType, qtype=Q.F32):
    @classmethod
    def quantize_blocks(cls, blocks):
        return blocks.astype(np.float32).view(np.uint8)

    @classmethod
    def dequantize(cls, raw):
        return raw.view(np.float32)


class F16(GGMLType, qtype=Q.F16):
    @classmethod
    def quantize_blocks(cls, blocks):
        return blocks.astype(np.float16).view(np.uint8)

    @classmethod
    def dequantize(cls, raw):
        return raw.view(np.float16).astype(np.float32)


class BF16(GGMLType, qtype=Q.BF16):
    """Round to nearest even on the top 16 bits (ggml_compute_fp32_to_bf16)."""


# -- blocks of 32 with one fp16 scale (and a min for the _1 types) ----------------------------------
# quantize_row_q{4,5}_{0,1}_ref and _q8_0_ref (ggml-quants.c), vectorised over blocks. gguf-py
# has the same formulas, but picks the min, max and largest-magnitude weight with NumPy
# reductions, which disagree with C's first-wins loops about the sign of a zero; so the bytes
# of a block holding -0.0 differ (the values do not). These follow the loops.

def _signed_absmax(blocks: np.ndarray) -> np.ndarray:
    """``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from amax = max = 0: [nb, 1]."""
    i = np.abs(blocks).argmax(axis=-1)[:, None]
    m = np.take_along_axis(blocks, i, axis=-1)
    return np.where(m == 0, np.float32(0), m)


def _min_max(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first weight that is a strict new min / max, scanning left to right: [nb, 1] each."""
    lo = np.take_along_axis(blocks, blocks.argmin(axis=-1)[:, None], axis=-1)
    hi = np.take_along_axis(blocks, blocks.argmax(axis=-1)[:, None], axis=-1)
    return lo, hi


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def _codes(x: np.ndarray, offset: float, top: int | None) -> np.ndarray:
    """``(int8_t)(x + offset)``, truncating toward zero, then MIN(top, .)."""
    q = np.trunc((x + np.float32(offset)).astype(np.float32)).astype(np.int32)
    return (q if top is None else np.minimum(q, top)).astype(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[nb, 32] codes -> [nb, 16]: byte j holds codes j (low) and j + 16 (high)."""
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of code j at bit j of a little-endian uint32: [nb, 4] bytes."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _half(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


class Q8_0(GGMLType, qtype=Q.Q8_0):
    """int8 codes, scale = absmax / 127 (round half away from zero, as roundf)."""

    @classmethod
    def quantize_blocks(cls, blocks):
        d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
        x = blocks * _inverse(d)
        q = (np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))).astype(np.int8)
        return np.concatenate([_half(d), q.view(np.uint8)], axis=1)


class Q4_0(GGMLType, qtype=Q.Q4_0):
    """4-bit codes around the signed absmax (scale = max / -8)."""

    @classmethod
    def quantize_blocks(cls, blocks):
        d = _signed_absmax(blocks) / np.float32(-8)
        q = _codes(blocks * _inverse(d), 8.5, 15)
        return np.concatenate([_half(d), _nibbles(q)], axis=1)


class Q4_1(GGMLType, qtype=Q.Q4_1):
    """4-bit codes between min and max."""

    @classmethod
    def quantize_blocks(cls, blocks):
        lo, hi = _min_max(blocks)
        d = (hi - lo) / np.float32(15)
        q = _codes((blocks - lo) * _inverse(d), 0.5, 15)
        return np.concatenate([_half(d), _half(lo), _nibbles(q)], axis=1)


class Q5_0(GGMLType, qtype=Q.Q5_0):
    """5-bit codes around the signed absmax (scale = max / -16)."""

    @classmethod
    def quantize_blocks(cls, blocks):
        d = _signed_absmax(blocks) / np.float32(-16)
        q = _codes(blocks * _inverse(d), 16.5, 31)
        return np.concatenate([_half(d), _fifth_bits(q), _nibbles(q)], axis=1)


class Q5_1(GGMLType, qtype=Q.Q5_1):
    """5-bit codes between min and max."""

    @classmethod
    def quantize_blocks(cls, blocks):
        lo, hi = _min_max(blocks)
        d = (hi - lo) / np.float32(31)
        q = _codes((blocks - lo) * _inverse(d), 0.5, None)
        return np.concatenate([_half(d), _half(lo), _fifth_bits(q), _nibbles(q)], axis=1)


# -- K-quants: super-blocks of 256, quantized sub-block scales (kquants.py) -------------------------

class Q2_K(GGMLType, qtype=Q.Q2_K):
    """16 x 16 weights, 2-bit codes, 4-bit scales and mins: 2.625 bits per weight."""
    quantize_blocks = staticmethod(kquants.quantize_q2_k)


class Q3_K(GGMLType, qtype=Q.Q3_K):
    """16 x 16 weights, 3-bit symmetric codes, 6-bit scales: 3.4375 bits per weight."""
    quantize_blocks = staticmethod(kquants.quantize_q3_k)


class Q4_K(GGMLType, qtype=Q.Q4_K):
    """8 x 32 weights, 4-bit codes, 6-bit scales and mins: 4.5 bits per weight."""
    quantize_blocks = staticmethod(kquants.quantize_q4_k)


class Q5_K(GGMLType, qtype=Q.Q5_K):
    """8 x 32 weights, 5-bit codes, 6-bit scales and mins: 5.5 bits per weight."""
    quantize_blocks = staticmethod(kquants.quantize_q5_k)


class Q6_K(GGMLType, qtype=Q.Q6_K):
    """16 x 16 weights, 6-bit symmetric codes, 8-bit scales: 6.5625 bits per weight."""
    quantize_blocks = staticmethod(kquants.quantize_q6_k)
