"""How big a config is before anything is allocated: the parameter count (the model built on
PyTorch's meta device, which has shapes but no storage) and an estimate of training memory.

Training memory with AdamW in fp32 (what the shared loop keeps, also under bf16 autocast):
weights 4 bytes, gradients 4, the two Adam moments 8 = 16 bytes a parameter (the same 16 bytes
ZeRO counts for mixed-precision Adam, Rajbhandari et al. 2020, §3.1). Activations kept for the
backward pass follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", §4.1): s·b·h·(34 + 5·a·s/h) bytes a layer in 16-bit, twice that in fp32,
plus the logits and their softmax gradient (b·s·V, fp32). It is an estimate: the loop measures
the real peak and the run reports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ArchConfig


@dataclass(frozen=True)
class Size:
    parameters: int
    embedding_parameters: int
    weights: int          # bytes of fp32 weights (the saved model's size)
    optimizer: int        # gradients + AdamW moments
    activations: int
    total: int


def build(hf_config, model_class: str, meta: bool = False) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, model_class)
    if meta:
        with torch.device("meta"):
            return cls(hf_config)
    return cls(hf_config)


def estimate(arch: ArchConfig, hf_config, model_class: str, batch_size: int, length: int,
             precision: str = "fp32", checkpointing: bool = False) -> Size:
    model = build(hf_config, model_class, meta=True)
    params = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or n.endswith("shared.weight"))
    s, b, h, a = length, batch_size, arch.embedding_length, arch.heads
    per_layer = s * b * h * (34 + 5 * a * s / h) * (1 if precision == "bf16" else 2)
    layers = arch.layers + (arch.decoder_layers or 0) * 1.5  # a decoder layer adds cross-attention
    if checkpointing:
        per_layer, layers = s * b * h * 4, layers + 1  # only each layer's input is kept
    logits = 2 * s * b * (arch.vocab_size or 0) * 4
    weights = 4 * params
    optimizer = 12 * params
    act = int(per_layer * layers + logits)
    return Size(params, embed, weights, optimizer, act, weights + optimizer + act)
