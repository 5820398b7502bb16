"""Optional re-ranking with a cross-encoder from the registry: a model whose head scores a
(question, passage) pair (``*ForSequenceClassification`` with one label, as the MS MARCO
cross-encoders of sentence-transformers are). It reads both texts together, so it orders the
candidates better than the two separate vectors did (Nogueira & Cho 2019), at one forward pass
per candidate.

No cross-encoder ships with oficina's catalogue: this is tested on a tiny random one built in
the test (order follows its logits), not on a real trained cross-encoder.
"""

from __future__ import annotations

import functools

import torch

from ..errors import OficinaError
from ..registry.registry import Registry


@functools.lru_cache(maxsize=2)
def _load(name: str, home: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer


    reg = Registry(home)
    entry = reg.find(name)
    if entry is None:
        raise OficinaError(f"re-ranker {name!r} is not in the registry")
    folder = reg.snapshot(entry)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise OficinaError(f"{name} is not a cross-encoder (a sequence-classification model): "
                           f"{str(e).splitlines()[0][:100]}") from None
    if model.config.num_labels != 1:
        raise OficinaError(f"{name} has {model.config.num_labels} labels; a cross-encoder scores "
                           f"a pair with one")
    return model, tok


@torch.inference_mode()
def scores(name: str, question: str, passages: list[str], registry) -> list[float]:
    model, tok = _load(name, str(registry.home))
    if not passages:
        return []
    enc = tok([question] * len(passages), passages, padding=True, truncation=True,
              max_length=min(512, getattr(tok, "model_max_length", 512)), return_tensors="pt")
    return model(**enc).logits[:, 0].float().tolist()


def rerank(name: str, question: str, hits: list, registry) -> list:
    for h, s in zip(hits, scores(name, question, [h.text for h in hits], registry)):
        h.rank_score = s
    return sorted(hits, key=lambda h: -h.rank_score)
