"""``oficina quantize`` folders (``models/torch_quant.py``) into the fast decoder's packed forms.

Such a folder stores each quantized linear as ``<name>.qweight`` + ``<name>.scales`` (float32,
one per group of input columns; ``models/quant_linear.py``): int8 codes ``w = q * scale``, or int4
codes offset by 8, two per byte, low nibble = even column, ``w = (u - 8) * scale``. They map to
``weights.py``'s forms as follows:

| folder | form | exact? |
|---|---|---|
| int4, groups a multiple of 32 (default 64) | ``Int4`` in groups of 32, each scale repeated, zero 0 | codes exact; scales rounded to bf16 |
| int8 per output channel (the default) | ``Int8`` | codes exact; scales rounded to bf16 |
| int8 in groups, int4 in other groups | ``Int8`` per channel | measured: dequantized, re-quantized to 8 bits |
| fp16 / bf16 | dense (the ordinary safetensors path) | bf16 exact, fp16 rounded to bf16 |

With ``dtype=float32`` (CPUs without bf16, the parity tests) every quantized linear is held as
its float32 dequantization, the very weight the transformers path multiplies by.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...models.quant_linear import SCHEMES
from .weights import GROUP, Form, Int4, Int8


def quantized_form(qweight: Tensor, scales: Tensor, scheme: str, dtype: torch.dtype) -> Form | Tensor:
    """One ``QuantLinear``'s stored codes and scales as a packed form (or, at float32, the
    dequantized weight, which ``from_state`` makes dense)."""
    if dtype == torch.float32:
        return SCHEMES[scheme].dequantize(qweight, scales, torch.float32)
    n, groups = scales.shape
    if scheme == "int4":
        k = qweight.shape[1] * 2
        if (k // groups) % GROUP == 0:
            codes = torch.stack([qweight & 15, qweight >> 4], -1).reshape(n, k)
            scale = scales.float().repeat_interleave(k // groups // GROUP, 1)
            return Int4.from_codes(codes, scale, torch.zeros_like(scale))
    elif scheme == "int8" and groups == 1:
        return Int8(qweight, scales[:, 0].to(torch.bfloat16))
    return Int8.quantize(SCHEMES[scheme].dequantize(qweight, scales, torch.float32))


def unpack_state(state: dict[str, Tensor], meta: dict, dtype: torch.dtype) -> dict[str, Tensor | Form]:
    """The folder's state dict with each ``<m>.qweight`` / ``<m>.scales`` pair replaced by
    ``<m>.weight``: a packed form (or float32 weight); everything else as stored."""
    out: dict[str, Tensor | Form] = {}
    for name, t in state.items():
        if name.endswith(".scales"):
            continue
        if name.endswith(".qweight"):
            base = name[:-len(".qweight")]
            out[base + ".weight"] = quantized_form(t, state[base + ".scales"], meta["to"], dtype)
        else:
            out[name] = t
    return out
