"""Packed weight forms and the readers that fill them (GGUF tensors, Hugging Face safetensors).

Three forms, each one class registered by name (``FORMS``), each with the real PyTorch kernel
for one decoded token and a dequantize for prefill chunks (the int kernels are matrix-*vector*
kernels: at 512 rows of input, a bf16 GEMM on the dequantized weight is ~10x faster here):

- ``int4``: 4-bit codes in groups of 32 along K, ``w = (q - 8) * scale + zero`` (torch's
  ``_weight_int4pack_mm_for_cpu`` convention), scales and zeros in bf16;
- ``int8``: per-output-channel int8, ``w = q * scale`` (``_weight_int8pack_mm``);
- ``dense``: bf16 or float32 (``F.linear``).

Per GGUF type (llama.cpp ggml-quants.c layouts, gguf-py ``quants.py``):

| GGUF | form | exactness |
|---|---|---|
| Q4_0 | int4 | codes exact; scale ``d`` rounded fp16 -> bf16 (relative error <= 2^-9) |
| Q4_1 | int4 | codes exact; ``d*q + m`` = ``(q-8)*d + (m+8d)``, both rounded to bf16 |
| Q4_K | int4 | codes exact; sub-block scale ``d*sc`` and zero ``8*d*sc - dmin*m`` rounded to bf16 |
| F16, BF16, F32 | dense bf16 (float32 when asked) | BF16/F32-as-F32 exact, otherwise rounded to bf16 |
| Q8_0, Q5_0, Q5_1 | int4pair: two int4 halves, ``c = 16h + l`` | codes exact; scales ``16d``, ``d`` and zero ``8d + m`` rounded to bf16 |
| anything else (Q6_K, Q5_K, Q3_K, ...) | int8 per channel | measured: dequantized, then re-quantized to 8 bits per output channel |

bf16 scales are forced by the kernels: on this CPU ``_weight_int4pack_mm_for_cpu`` and
``_weight_int8pack_mm`` run ~30x slower with float32 or float16 activations (their reference
loops) than with bf16 (measured, 1536x576, 1 thread: 4.5 ms vs 0.14 ms).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GROUP = 32
# From this many input rows on, dequantize + bf16 GEMM beats the int kernels (measured per form,
# bench/bench_kernels.py: the int kernels' time grows ~linearly with the rows, the dequantize is
# a fixed cost per weight and the GEMM nearly free on AMX).
INT4_DENSE_ROWS = 112
INT8_DENSE_ROWS = 48
PREFILL_ROWS = min(INT4_DENSE_ROWS, INT8_DENSE_ROWS)  # under this many rows every form runs its int kernel


class Form(ABC):
    """One linear weight ``[N, K]`` held packed; ``x [M, K] -> [M, N]`` in x's dtype."""

    name: str
    shape: tuple[int, int]

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]: ...

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


FORMS: dict[str, type[Form]] = {}


def _register(cls):
    FORMS[cls.name] = cls
    return cls


@_register
class Dense(Form):
    name = "dense"

    def __init__(self, w: Tensor):
        self.w = w.contiguous()
        self.shape = tuple(w.shape)

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.w.dtype), self.w)

    def dequantize(self, dtype=torch.bfloat16) -> Tensor:
        return self.w.to(dtype)

    def tensors(self):
        return {"w": self.w}

    @classmethod
    def load(cls, t: dict[str, Tensor]):
        return cls(t["w"])


@_register
class Int8(Form):
    name = "int8"

    def __init__(self, q: Tensor, scale: Tensor):
        self.q, self.scale = q.contiguous(), scale.contiguous()   # [N, K] int8, [N] bf16
        self.shape = tuple(q.shape)

    @classmethod
    def quantize(cls, w: Tensor) -> Int8:
        """Symmetric per-channel int8 of float rows ``w [N, K]``."""
        w = w.float()
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scale.to(torch.bfloat16))

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] >= INT8_DENSE_ROWS:
            return F.linear(x, self.dequantize(x.dtype))
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale.to(x.dtype))

    def dequantize(self, dtype=torch.bfloat16) -> Tensor:
        return torch.mul(self.q, self.scale.to(dtype)[:, None])

    def tensors(self):
        return {"q": self.q, "scale": self.scale}

    @classmethod
    def load(cls, t):
        return cls(t["q"], t["scale"])


@_register
class Int4(Form):
    name = "int4"

    def __init__(self, packed: Tensor, nibbles: Tensor, sz: Tensor):
        self.packed = packed            # torch's CPU int4 tile layout (opaque), [N, K/2] uint8
        self.nibbles = nibbles          # [N/2, K] uint8: code (n, k) low, code (n + N/2, k) high
        self.sz = sz.contiguous()       # [K/32, N, 2] bf16: scale, zero
        self.shape = (nibbles.shape[0] * 2, nibbles.shape[1])

    @classmethod
    def from_codes(cls, q: Tensor, scale: Tensor, zero: Tensor) -> Int4:
        """``q [N, K]`` codes 0..15 (N even), ``scale, zero [N, K/32]`` float32:
        w = (q-8)*scale + zero."""
        q = q.to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 2)
        h = q.shape[0] // 2
        sz = torch.stack([scale, zero], -1).transpose(0, 1).to(torch.bfloat16)
        return cls(packed, (q[:h] | (q[h:] << 4)).contiguous(), sz)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] >= INT4_DENSE_ROWS or x.dtype != torch.bfloat16:
            return F.linear(x, self.dequantize(x.dtype))
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.sz)

    def codes(self, lo: int = 0, hi: int | None = None) -> Tensor:
        """``q - 8`` as int8 for the rows ``lo:hi`` and ``N/2 + lo:N/2 + hi`` (all rows by
        default), ``[2, hi - lo, K]``. The two nibbles of a byte are a whole block of rows apart,
        so the unpacking is a few contiguous int32 passes (4 codes a lane), not byte-wise ops."""
        v = self.nibbles[lo:hi]
        rows, k = v.shape
        v = v.reshape(-1).view(torch.int32)
        out = torch.empty(2, v.numel(), dtype=torch.int32)
        torch.bitwise_and(v, 0x0F0F0F0F, out=out[0])
        torch.bitwise_right_shift(v, 4, out=out[1])
        out[1] &= 0x0F0F0F0F
        out += 0x78787878                 # per byte: q + 120 (no carry: q + 120 <= 135)
        out ^= -0x7F7F7F80                # flip each byte's top bit: q + 120 - 128 = q - 8
        return out.view(torch.int8).view(2, rows, k)

    def dequantize(self, dtype=torch.bfloat16) -> Tensor:
        n, k = self.shape
        scale = self.sz[..., 0].t().to(dtype).contiguous()[..., None]          # [N, K/32, 1]
        zero = self.sz[..., 1].t().to(dtype).contiguous()[..., None]
        w = self.codes().view(n, k // GROUP, GROUP).to(dtype)
        return w.mul_(scale).add_(zero).view(n, k)

    def tensors(self):
        return {"packed": self.packed, "nibbles": self.nibbles, "sz": self.sz}

    @classmethod
    def load(cls, t):
        return cls(t["packed"], t["nibbles"], t["sz"])


@_register
class Int4Pair(Form):
    """An 8-bit-code weight held exactly in two int4 halves (Q8_0, Q5_0, Q5_1 blocks of 32):
    a code ``c = 16*h + l`` with ``l`` in 0..15 is ``(h+8 - 8) * 16d`` + ``(l - 8) * d + (8d + m)``,
    two int4 groups of 32 side by side along K, so one int4 kernel call over ``[x, x]`` computes
    ``x @ (d*c + m)``: the same bytes as int8, codes exact, only the scales rounded to bf16."""

    name = "int4pair"

    def __init__(self, inner: Int4):
        self.inner = inner               # [N, 2K]: high halves, then low halves
        self.shape = (inner.shape[0], inner.shape[1] // 2)

    @classmethod
    def from_codes(cls, c: Tensor, d: Tensor, m: Tensor) -> Int4Pair:
        """``c [N, K]`` integer codes in -128..127, ``d, m [N, K/32]`` float32: w = d*c + m."""
        c = c.to(torch.int32)
        h, lo = torch.div(c, 16, rounding_mode="floor"), c.remainder(16)
        return cls(Int4.from_codes(torch.cat([h + 8, lo], 1), torch.cat([16 * d, d], 1),
                                   torch.cat([torch.zeros_like(d), 8 * d + m], 1)))

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] >= INT4_DENSE_ROWS or x.dtype != torch.bfloat16:
            return F.linear(x, self.dequantize(x.dtype))
        return self.inner(torch.cat([x, x], -1))

    def dequantize(self, dtype=torch.bfloat16) -> Tensor:
        w = self.inner.dequantize(torch.float32)
        k = self.shape[1]
        return (w[:, :k] + w[:, k:]).to(dtype)

    def tensors(self):
        return self.inner.tensors()

    @classmethod
    def load(cls, t):
        return cls(Int4.load(t))


def fuse(forms: list[Form]) -> Form | None:
    """One form holding ``forms`` stacked along N (q|k|v, gate|up): one kernel call instead of
    three or two per layer. None when they are not all the same kind of form."""
    kinds = {f.name for f in forms}
    if len(kinds) != 1 or (kinds == {"dense"} and len({f.w.dtype for f in forms}) != 1):
        return None
    kind = kinds.pop()
    if kind == "dense":
        return Dense(torch.cat([f.w for f in forms]))
    if kind == "int8":
        return Int8(torch.cat([f.q for f in forms]), torch.cat([f.scale for f in forms]))
    if kind == "int4pair":
        return Int4Pair(fuse([f.inner for f in forms]))
    q = torch.cat([f.codes().reshape(f.shape) for f in forms]).to(torch.int32) + 8
    sz = torch.cat([f.sz for f in forms], 1)
    return Int4.from_codes(q, sz[..., 0].t().float(), sz[..., 1].t().float())


# -- GGUF tensors -> forms ----------------------------------------------------------------------

def _f16(b: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(b).view(np.float16).astype(np.float32))[..., 0]


def _q4_0(data: np.ndarray, n: int, k: int):
    b = data.reshape(n, k // 32, 18)
    d = _f16(b[..., 0:2])
    qs = torch.from_numpy(np.ascontiguousarray(b[..., 2:]))
    q = torch.cat([qs & 15, qs >> 4], -1).reshape(n, k)
    return q, d, torch.zeros_like(d)


def _q4_1(data: np.ndarray, n: int, k: int):
    b = data.reshape(n, k // 32, 20)
    d, m = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    qs = torch.from_numpy(np.ascontiguousarray(b[..., 4:]))
    q = torch.cat([qs & 15, qs >> 4], -1).reshape(n, k)
    return q, d, m + 8 * d


def _q4_k(data: np.ndarray, n: int, k: int):
    from gguf.quants import Q4_K

    nb = n * (k // 256)
    b = data.reshape(nb, 144)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
    qs = torch.from_numpy(np.ascontiguousarray(b[:, 16:])).reshape(nb, 4, 1, 32)
    q = torch.cat([qs & 15, qs >> 4], 2).reshape(n, k)          # sub-block 2j low, 2j+1 high nibbles
    scale = d[:, None] * torch.from_numpy(sc.astype(np.float32))             # [nb, 8]
    zero = 8 * scale - dmin[:, None] * torch.from_numpy(mn.astype(np.float32))
    return q, scale.reshape(n, k // 32), zero.reshape(n, k // 32)


INT4_READERS: dict[str, Callable] = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k}


def _block_codes(data: np.ndarray, qtype, n: int, k: int, with_min: bool):
    """Integer codes ``c`` of a scaled-integer block type (blocks of 32, fp16 ``d`` first, then
    ``m`` for the ``_1`` types; ``w = d*c + m``), recovered exactly from gguf-py's reference
    dequantization as ``round((w - m) / d)`` (|c| <= 127: float32 holds the quotient to far
    better than 0.5)."""
    b = data.reshape(n, k // 32, -1)
    d = _f16(b[..., 0:2])
    m = _f16(b[..., 2:4]) if with_min else torch.zeros_like(d)
    w = dequantize_rows(data, qtype).reshape(n, k // 32, 32)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.round((w - m[..., None]) / safe[..., None]).reshape(n, k), d, m


# type -> whether it has a min: Q8_0 w = d*c (c -127..127); Q5_0 w = d*c (c -16..15);
# Q5_1 w = d*c + m (c 0..31)
PAIR_TYPES = {"Q8_0": False, "Q5_0": False, "Q5_1": True}


def dequantize_rows(data: np.ndarray, qtype) -> Tensor:
    """float32 rows of any GGUF tensor (gguf-py's reference dequantization)."""
    from gguf.quants import dequantize

    return torch.from_numpy(np.ascontiguousarray(dequantize(np.asarray(data), qtype), dtype=np.float32))


def from_gguf(tensor, dtype: torch.dtype, perm: Tensor | None = None, chunk: int = 8192) -> Form:
    """A GGUF linear tensor (gguf-py ``ReaderTensor``, ggml shape [K, N]) as a packed form.
    ``perm`` reorders output rows (undoing llama.cpp's q/k permutation). Row chunks keep the
    float32 transient of a re-quantized tensor small."""
    k, n = int(tensor.shape[0]), int(tensor.shape[1])
    kind = tensor.tensor_type.name
    data = np.asarray(tensor.data)  # a plain view: numpy's memmap subclass is slow to slice
    if kind in INT4_READERS and k % GROUP == 0 and n % 2 == 0 and dtype == torch.bfloat16:
        q, scale, zero = INT4_READERS[kind](data, n, k)
        if perm is not None:
            q, scale, zero = q[perm], scale[perm], zero[perm]
        return Int4.from_codes(q, scale, zero)
    if kind in PAIR_TYPES and k % GROUP == 0 and n % 16 == 0 and dtype == torch.bfloat16:  # the int4 packer's N tiles
        c, d, m = _block_codes(data, tensor.tensor_type, n, k, PAIR_TYPES[kind])
        if perm is not None:
            c, d, m = c[perm], d[perm], m[perm]
        return Int4Pair.from_codes(c, d, m)
    if kind in ("F32", "F16"):
        w = torch.from_numpy(data.astype(np.float32)).reshape(n, k)
        return Dense((w[perm] if perm is not None else w).to(dtype))
    if kind == "BF16" or dtype == torch.float32:
        w = torch.cat([dequantize_rows(data[i:i + chunk], tensor.tensor_type) for i in range(0, n, chunk)])
        w = w.reshape(n, k)
        return Dense((w[perm] if perm is not None else w).to(dtype))
    parts = [Int8.quantize(dequantize_rows(data[i:i + chunk], tensor.tensor_type).reshape(-1, k))
             for i in range(0, n, chunk)]
    q, s = torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts])
    if perm is not None:
        q, s = q[perm], s[perm]
    return Int8(q, s)


def qk_perm(n_head: int, rows: int) -> Tensor:
    """Undo llama.cpp's ``LlamaModel.permute`` of q/k rows (convert_hf_to_gguf.py): GGUF row
    ``h*hd + 2i + j`` is Hugging Face row ``h*hd + j*hd/2 + i``, so rope can stay one layout."""
    hd = rows // n_head
    return torch.arange(rows).reshape(n_head, hd // 2, 2).transpose(1, 2).reshape(rows)


class Embedding:
    """Token embeddings: looked up by id, never dequantized whole. GGUF rows stay in their
    quantized blocks (exact dequantization of just the rows asked for); dense ones are a table."""

    def __init__(self, table: Tensor, qtype=None, dim: int = 0):
        self.table, self.qtype = table, qtype        # [V, D] float, or [V, bytes] uint8 blocks
        self.dim = dim or int(table.shape[1])

    def __call__(self, ids: Tensor) -> Tensor:
        rows = self.table[ids.reshape(-1)]
        if self.qtype is None:
            out = rows.float()
        else:
            out = dequantize_rows(rows.numpy(), self.qtype).reshape(-1, self.dim)
        return out.reshape(*ids.shape, self.dim)

    def rows(self, start: int, stop: int) -> Tensor:
        return self(torch.arange(start, stop))
