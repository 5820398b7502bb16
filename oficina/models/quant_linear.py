"""Weight-only quantized linear layers: int8 per output channel, int4 in groups of 64.

The frozen base of QLoRA (Dettmers et al. 2023, §3) is stored quantized and dequantized on the
fly; only the LoRA matrices on top train. QLoRA's NF4 data type and double quantization are not
reproduced: these are plain symmetric absmax schemes (as llama.cpp's Q8_0/Q4_0 blocks), which
keep the layer small and the code short.

The trade-off on CPU: weights take 1/4 (int8) or ~1/7 (int4 with fp32 group scales) of their
fp32 bytes, but every forward and backward re-expands one layer's weight to the compute dtype,
so a step is slower than on an fp32 base. Measured on one 2-core AVX-512 machine for a
512x576 @ 576x1536 product: fp32 ``F.linear`` 48 ms, dequantize + ``F.linear`` 75 ms, torch's
``_weight_int8pack_mm`` CPU kernel 688 ms (tuned for batch-1 decoding, not training batches),
so dequantize + matmul is the kernel used here. Only one layer's expanded weight is alive at a
time: the backward pass re-expands it instead of saving it (``_DequantMatmul``).

A quant type is a ``Scheme`` subclass; defining one registers it in ``SCHEMES`` (as gguf-py's
``quants.py`` registers its block types with ``__init_subclass__``).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

SCHEMES: dict[str, "Scheme"] = {}


class Scheme:
    """A symmetric absmax scheme: ``w ≈ q * scale`` with one scale per ``group`` input columns."""

    name: str = ""
    bits: int = 0
    default_group: int | None = None  # None: one group per output row (per-channel)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        SCHEMES[cls.name] = cls()

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def group(self, in_features: int, group_size: int | None) -> int:
        g = group_size or self.default_group or in_features
        return g if in_features % g == 0 else in_features

    def quantize(self, w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``w`` [out, in] -> (stored codes, scales [out, in/group])."""
        out, inp = w.shape
        wg = w.detach().float().reshape(out, inp // group, group)
        scales = self.scales(wg)                                            # [out, in/group]
        q = torch.round(wg / scales[..., None]).clamp(-self.qmax - 1, self.qmax).to(torch.int8)
        return self.pack(q.reshape(out, inp)), scales

    def scales(self, wg: torch.Tensor) -> torch.Tensor:
        """[out, groups, group] -> one scale per group: absmax / qmax (codes -qmax..qmax)."""
        return wg.abs().amax(-1).clamp_min(1e-12) / self.qmax

    def dequantize(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        q = self.unpack(codes)                                              # [out, in] int8
        out, inp = q.shape
        groups = scales.shape[1]
        w = q.reshape(out, groups, inp // groups).to(dtype) * scales.to(dtype)[..., None]
        return w.reshape(out, inp)

    def pack(self, q: torch.Tensor) -> torch.Tensor:
        return q

    def unpack(self, codes: torch.Tensor) -> torch.Tensor:
        return codes


class Int8(Scheme):
    name, bits = "int8", 8


class Int4(Scheme):
    """Two 4-bit codes per byte, offset by 8 (low nibble = even column).

    The scale is llama.cpp's Q4_0 one (quantize_row_q4_0_ref): the group's largest-magnitude
    weight, sign included, maps to code -8, so all 16 codes are in use (absmax / 7 leaves -8
    unused). On SmolLM2-135M this cut the KL divergence from the float model by a third."""

    name, bits, default_group = "int4", 4, 64

    def scales(self, wg: torch.Tensor) -> torch.Tensor:
        signed_max = wg.gather(-1, wg.abs().argmax(-1, keepdim=True))[..., 0]
        scale = signed_max / -8
        return torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)

    def pack(self, q: torch.Tensor) -> torch.Tensor:
        u = (q + 8).to(torch.uint8)                                         # [out, in] in 1..15
        return u[:, 0::2] | (u[:, 1::2] << 4)                               # [out, in/2]

    def unpack(self, codes: torch.Tensor) -> torch.Tensor:
        low = (codes & 0x0F).to(torch.int8) - 8
        high = (codes >> 4).to(torch.int8) - 8
        return torch.stack((low, high), dim=-1).reshape(codes.shape[0], -1)


class _DequantMatmul(torch.autograd.Function):
    """y = x W^T with W re-expanded in forward and again in backward, never saved: the base is
    frozen, so only dL/dx = dL/dy W is needed."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        ctx.dtype = dtype
        return F.linear(x.to(dtype), layer.dequantize(dtype))

    @staticmethod
    def backward(ctx, grad):
        w = ctx.layer.dequantize(ctx.dtype)
        return grad.to(ctx.dtype) @ w, None


class QuantLinear(nn.Module):
    """A frozen ``nn.Linear`` stored as ``scheme`` codes + scales (buffers, so they follow
    ``.to(device)`` and ``state_dict`` but are never trained)."""

    def __init__(self, in_features: int, out_features: int, scheme: str = "int4",
                 group_size: int | None = None, bias: bool = False):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quant scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.group_size = SCHEMES[scheme].group(in_features, group_size)
        groups = in_features // self.group_size
        width = in_features // 2 if SCHEMES[scheme].bits == 4 else in_features
        dtype = torch.uint8 if SCHEMES[scheme].bits == 4 else torch.int8
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=dtype))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # peft reads these to size LoRA matrices and pick their dtype (tuners_utils.py
        # ``_get_in_out_features`` checks ``infeatures``; ``compute_dtype`` as for bnb layers).
        self.compute_dtype = torch.float32

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (a new tensor each time). For code that inspects
        ``module.weight`` (peft's dtype/device checks, T5's feed-forward dtype check); the
        forward pass does not use it."""
        return self.dequantize()

    @property
    def infeatures(self) -> int:
        return self.in_features

    @property
    def outfeatures(self) -> int:
        return self.out_features

    @classmethod
    def from_linear(cls, linear: nn.Module, scheme: str = "int4", group_size: int | None = None) -> "QuantLinear":
        """From an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2; weight stored [in, out])."""
        weight = linear.weight.T if _is_conv1d(linear) else linear.weight          # [out, in]
        q = cls(weight.shape[1], weight.shape[0], scheme, group_size, linear.bias is not None)
        codes, scales = SCHEMES[scheme].quantize(weight, q.group_size)
        q.qweight = codes.to(linear.weight.device)
        q.scales = scales.to(linear.weight.device)
        if linear.bias is not None:
            q.bias = linear.bias.detach().float().clone()
        q.compute_dtype = linear.weight.dtype
        return q

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return SCHEMES[self.scheme].dequantize(self.qweight, self.scales, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _DequantMatmul.apply(x, self)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def to_linear(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.qweight.device, dtype=self.compute_dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dequantize())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.requires_grad_(False)
        return lin

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme}, group_size={self.group_size}")


def quantize_model(model: nn.Module, scheme: str = "int4", group_size: int | None = None,
                   skip: Iterable[str] = ("lm_head", "classifier", "score")) -> int:
    """Replace every ``nn.Linear`` or GPT-2 ``Conv1D`` (except output heads named in ``skip``)
    by a ``QuantLinear`` in place; return how many were replaced."""
    skip = tuple(skip)
    targets = [(name, mod) for name, mod in model.named_modules()
               if (type(mod) is nn.Linear or _is_conv1d(mod)) and not any(s in name.split(".") for s in skip)]
    for name, mod in targets:
        _set_module(model, name, QuantLinear.from_linear(mod, scheme, group_size))
    return len(targets)


def dequantize_model(model: nn.Module) -> int:
    """Replace every ``QuantLinear`` by an ``nn.Linear`` holding its dequantized weight."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, QuantLinear)]
    for name, mod in targets:
        _set_module(model, name, mod.to_linear())
    return len(targets)


def _is_conv1d(mod: nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)
