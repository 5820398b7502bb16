"""Embeddings: every token becomes a vector of ``embedding_length`` numbers (a row of the
embedding table), and a whole text one vector, pooled from the last layer's hidden states.

Pooling (mean over tokens, the first [CLS] token, the last token, max) has one home,
``models/pooling.py``, shared with the batched encoder of ``rag.embed``; for models that ship a
``1_Pooling/config.json`` the mode written there is the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import OficinaError
from ..models.pooling import POOLINGS, pool, spec_for
from .tokens import Token, encode


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
    ones = torch.ones(1, hidden.shape[0], dtype=torch.long)
    return Embedding(text, t.tokens, pooling, vectors, pool(pooling, hidden[None], ones)[0])


def similarity(model, text_a: str, text_b: str, pooling: str | None = None) -> Similarity:
    """Cosine similarity of the two texts' sentence vectors, in [-1, 1]."""
    a, b = embed(model, text_a, pooling), embed(model, text_b, pooling)
    cos = float(torch.nn.functional.cosine_similarity(a.sentence.double(), b.sentence.double(), 0))
    return Similarity(text_a, text_b, cos, a.pooling, a.embedding_length)


def default_pooling(model) -> str:
    return spec_for(getattr(getattr(model, "loaded", None), "folder", None)).pooling


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
