"""The forgetting check: perplexity on general text before and after tuning. Tuning on a narrow
set can cost general ability (catastrophic forgetting, e.g. Luo et al. 2023, "An Empirical
Study of Catastrophic Forgetting in LLMs during Continual Fine-tuning"); a rise in perplexity on
unrelated text is the cheapest sign of it. The text shipped is ``data/tune/general.txt``.
"""

from __future__ import annotations

import math
from importlib import resources

import torch
from torch import nn


def general_text() -> str:
    return resources.files("oficina.data").joinpath("tune/general.txt").read_text()


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, text: str | None = None, max_length: int = 256) -> float:
    """exp(mean next-token loss) over ``text`` cut into windows of ``max_length`` tokens."""
    text = text if text is not None else general_text()
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(ids), max_length):
        chunk = torch.tensor([ids[s:s + max_length]], device=device)
        if chunk.shape[1] < 2:
            continue
        loss = model(input_ids=chunk, labels=chunk, use_cache=False).loss
        total += float(loss) * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    model.train(was_training)
    return math.exp(total / count) if count else float("nan")
