"""Embeddings: every token becomes a vector of ``embedding_length`` numbers (a row of the
embedding table), and a whole text one vector, pooled from the last layer's hidden states.

Pooling follows sentence-transformers' ``Pooling`` module (mean over tokens, the first [CLS]
token, or the last token) and, for models that ship a ``1_Pooling/config.json``, uses the mode
written there, so a sentence-transformers model gives the vectors it was trained to give.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import OficinaError
from .tokens import Token, encode

# pooling name -> [n, d] hidden states -> [d]
POOLINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda h: h.mean(0),
    "cls": lambda h: h[0],
    "last": lambda h: h[-1],
}
# sentence-transformers 1_Pooling/config.json keys -> our names
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
             "pooling_mode_lasttoken": "last"}


@dataclass
class Embedding:
    text: str
    tokens: list[Token]
    pooling: str
    token_vectors: torch.Tensor = field(repr=False)  # [n, d] input embeddings, one row per token
    sentence: torch.Tensor = field(repr=False)  # [d] pooled last hidden states

    @property
    def embedding_length(self) -> int:
        return self.sentence.numel()

    def to_dict(self, tokens: bool = False) -> dict:
        d = {"text": self.text, "embedding_length": self.embedding_length, "pooling": self.pooling,
             "sentence": self.sentence.tolist()}
        if tokens:
            d["tokens"] = [{"index": t.index, "id": t.id, "text": t.text, "vector": v}
                           for t, v in zip(self.tokens, self.token_vectors.tolist())]
        return d


@dataclass
class Similarity:
    text_a: str
    text_b: str
    cosine: float
    pooling: str
    embedding_length: int

    def to_dict(self) -> dict:
        return {"text_a": self.text_a, "text_b": self.text_b, "cosine": self.cosine,
                "pooling": self.pooling, "embedding_length": self.embedding_length}


def embed(model, text: str, pooling: str | None = None) -> Embedding:
    """Input embeddings of each token of ``text`` and its pooled sentence vector (float32, CPU).
    ``pooling``: one of ``POOLINGS``; None = the model's own, else mean."""
    pooling = pooling or default_pooling(model)
    if pooling not in POOLINGS:
        raise OficinaError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    t = encode(model, text)
    vectors, hidden = _vectors(model, t.ids)
    return Embedding(text, t.tokens, pooling, vectors, POOLINGS[pooling](hidden))


def similarity(model, text_a: str, text_b: str, pooling: str | None = None) -> Similarity:
    """Cosine similarity of the two texts' sentence vectors, in [-1, 1]."""
    a, b = embed(model, text_a, pooling), embed(model, text_b, pooling)
    cos = float(torch.nn.functional.cosine_similarity(a.sentence.double(), b.sentence.double(), 0))
    return Similarity(text_a, text_b, cos, a.pooling, a.embedding_length)


def default_pooling(model) -> str:
    folder = getattr(getattr(model, "loaded", None), "folder", None)
    cfg = Path(folder) / "1_Pooling" / "config.json" if folder else None
    if cfg is not None and cfg.is_file():
        try:
            modes = json.loads(cfg.read_text())
        except (OSError, ValueError):
            modes = {}
        for key, name in _ST_MODES.items():
            if isinstance(modes, dict) and modes.get(key):
                return name
    return "mean"


@torch.inference_mode()
def _vectors(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, d] input embeddings, [n, d] last hidden states)."""
    tm = model.torch_model
    x = torch.tensor([ids], device=next(tm.parameters()).device)
    table = tm.get_input_embeddings()(x)[0]
    if model.info.kind == "encoder-decoder":
        hidden = tm.get_encoder()(input_ids=x).last_hidden_state
    elif model.info.kind == "encoder-only":
        hidden = tm(input_ids=x).last_hidden_state
    else:
        hidden = tm(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states[-1]
    return table.float().cpu(), hidden[0].float().cpu()
