"""What comes next: the model's distribution over the next token, before and after the sampling
parameters (temperature, top_k, top_p, min_p, typical_p, penalties) reshape it.

"After" is ``generation.sampling.distribution``, the very function whose probabilities the
sampler draws from, so what is shown is what ``run`` would sample from, not a second copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generation.sampling import distribution
from ..options import Options
from .common import require
from .tokens import encode, token_text

LN2 = math.log(2.0)


@dataclass
class Candidate:
    id: int
    text: str  # the token decoded on its own, e.g. " Paris"
    logit: float
    prob: float  # softmax of the raw logits
    prob_after: float  # after the sampling parameters (0 when they remove the token)
    rank: int  # 1 = most likely before the parameters

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "logit": self.logit, "prob": self.prob,
                "prob_after": self.prob_after, "rank": self.rank}


@dataclass
class Prediction:
    text: str
    prompt_tokens: int
    options: Options
    top: list[Candidate]  # sorted by prob_after, then prob
    entropy: float  # bits, of the raw distribution
    entropy_after: float  # bits, after the parameters (0 for greedy)
    kept: int  # tokens the parameters leave with a probability above 0
    vocab_size: int
    probs: torch.Tensor = field(repr=False)  # [V] float32
    probs_after: torch.Tensor = field(repr=False)  # [V] float32

    def to_dict(self) -> dict:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens,
                "options": {k: v for k, v in self.options.to_dict().items()
                            if k in SAMPLING_PARAMS},
                "entropy_bits": self.entropy, "entropy_bits_after": self.entropy_after,
                "kept": self.kept, "vocab_size": self.vocab_size,
                "top": [c.to_dict() for c in self.top]}


# The parameters that change the next-token distribution (the rest are about length and stops).
SAMPLING_PARAMS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                   "repeat_last_n", "presence_penalty", "frequency_penalty")


def entropy_bits(probs: torch.Tensor) -> float:
    """Shannon entropy in bits; 2**H is the number of equally likely choices it is worth."""
    return float(torch.special.entr(probs.double()).sum() / LN2)


def predict(model, text: str, top: int = 10, **options: Any) -> Prediction:
    """The next token after ``text`` (as written: no chat template). ``options`` are Ollama's
    parameter names, on top of the model's own; the prompt is the penalties' history."""
    require(model, ("decoder-only", "encoder-decoder"), "next-token prediction",
            "; it has no language-model head (try `embed`)")
    opts = model.options.merged(options)
    t = encode(model, text)
    logits = next_logits(model, t.ids)                          # [V]
    probs = torch.softmax(logits, 0)
    after = distribution(logits, t.ids, opts)                   # [V]
    n = max(1, min(int(top), logits.numel()))
    best_after = torch.topk(after, n).indices
    ids = torch.cat([torch.topk(probs, n).indices, best_after[after[best_after] > 0]]).unique()
    cands = [Candidate(i, token_text(model.tokenizer, i), float(logits[i]), float(probs[i]),
                       float(after[i]), int((probs > probs[i]).sum()) + 1) for i in ids.tolist()]
    cands.sort(key=lambda c: (-c.prob_after, c.rank))
    return Prediction(text, t.count, opts, cands, entropy_bits(probs), entropy_bits(after),
                      int((after > 0).sum()), logits.numel(), probs, after)


@torch.inference_mode()
def next_logits(model, ids: list[int]) -> torch.Tensor:
    """Float32 logits [V] for the token after ``ids``. Encoder-decoder models read ``ids`` with
    the encoder and give their first output token (the decoder starts from its start token)."""
    if model.info.kind == "decoder-only":
        return model.engine.logits(ids)
    tm = model.torch_model
    dev = next(tm.parameters()).device
    start = tm.config.decoder_start_token_id
    out = tm(input_ids=torch.tensor([ids], device=dev),
             decoder_input_ids=torch.tensor([[start]], device=dev))
    return out.logits[0, -1].float()
