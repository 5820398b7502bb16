"""Attention in fp32 for bf16 training on the CPU.

CPU autocast runs ``scaled_dot_product_attention`` in bf16, and torch's CPU flash-attention
backward is about 2.4x slower in bf16 than in fp32 (SmolLM2 shapes, 8 x 57 tokens: 8.5 ms against
3.5 ms with the casts, forward and backward of one layer). Attention is a small share of a step's
FLOPs next to the linear layers, so computing it in fp32 and handing bf16 back is faster and no
less precise. Registered with transformers' ``AttentionInterface`` (its extension point for
attention functions), under ``NAME``; a model opts in with ``use``.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "oficina_sdpa_fp32"


def _forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype  # bf16, or fp32 when rotary embeddings promoted it (autocast casts it back)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(dtype), weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # masks as SDPA takes them (else: none at all)


def use(model: nn.Module) -> str | None:
    """Switch a CPU model that uses torch's SDPA to the fp32 version; returns the implementation
    to restore with ``restore``, or None when nothing changed."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa" or next(model.parameters()).device.type != "cpu":
        return None
    _register()
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, AttributeError):  # a model class that does not take custom attention
        return None
    return previous


def restore(model: nn.Module, previous: str | None) -> None:
    if previous is not None:
        model.set_attn_implementation(previous)
