"""Self-attention weights: for each query token, how much it takes from each key token, per head,
in one layer (the softmax(QK^T / sqrt(d)) matrix of Vaswani et al. 2017, sec. 3.2.1).

The fast kernels (SDPA, flash attention) never build that matrix, so transformers returns no
weights through them; the model is switched to its "eager" attention for the one forward pass
and switched back. Encoder-decoder models show their encoder's self-attention over the text.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..errors import OficinaError
from .common import name_of, pick
from .tokens import Token, encode


@dataclass
class Attention:
    text: str
    tokens: list[Token]
    layer: int
    layers: int
    part: str  # "self-attention" | "encoder self-attention"
    causal: bool  # a token sees only itself and the tokens before it
    weights: torch.Tensor = field(repr=False)  # [heads, n, n]: row = query token, column = key

    @property
    def heads(self) -> int:
        return self.weights.shape[0]

    def map(self, head: int | None = None) -> torch.Tensor:
        """[n, n] weights of one head, or their mean over the layer's heads (``None``)."""
        if head is None:
            return self.weights.mean(0)
        return self.weights[pick(head, self.heads, "head", f"layer {self.layer}")]

    def top(self, token: int, k: int = 5, head: int | None = None) -> list[tuple[Token, float]]:
        """The ``k`` tokens that ``token`` (a sequence index) attends to most, largest first."""
        row = self.map(head)[token]
        w, i = torch.topk(row, min(k, row.numel()))
        return [(self.tokens[j], float(x)) for x, j in zip(w.tolist(), i.tolist()) if x > 0]

    def to_dict(self, head: int | None = None) -> dict:
        return {"text": self.text, "tokens": [t.text for t in self.tokens], "layer": self.layer,
                "layers": self.layers, "heads": self.heads, "part": self.part,
                "head": "mean" if head is None else head, "weights": self.map(head).tolist()}


def attention(model, text: str, layer: int = -1) -> Attention:
    """All heads of one ``layer`` (negative counts from the end) for ``text``."""
    t = encode(model, text)
    kind = model.info.kind
    weights = _weights(model, t.ids)
    L = pick(layer, len(weights), "layer", name_of(model))
    part = "encoder self-attention" if kind == "encoder-decoder" else "self-attention"
    return Attention(text, t.tokens, L, len(weights), part, kind == "decoder-only",
                     weights[L][0].float().cpu())


def find_token(att: Attention, which: int | str | None) -> int:
    """A sequence index from an index (negative from the end), a piece of the text (the token
    covering its last character, at its first occurrence), or None for the last token."""
    n = len(att.tokens)
    if which is None:
        return n - 1
    if isinstance(which, int) or str(which).lstrip("-").isdigit():
        return pick(int(which), n, "token", "the text")
    at = att.text.find(str(which))
    if at >= 0:
        last = at + len(str(which)) - 1
        for tok in att.tokens:
            if tok.start is not None and tok.start <= last < tok.end:
                return tok.index
    raise OficinaError(f"{which!r} is not in the text; give a token index 0..{n - 1} or a word of it")


@torch.inference_mode()
def _weights(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """Per layer, [1, heads, n, n]."""
    tm = model.torch_model
    x = torch.tensor([ids], device=next(tm.parameters()).device)
    none = OficinaError(f"{name_of(model)} ({model.info.architecture}) does not expose attention "
                        f"weights: it has no attention layers, or they do not return them")
    with _eager(tm, model):
        try:
            if model.info.kind == "encoder-decoder":
                out = tm.get_encoder()(input_ids=x, output_attentions=True)
            else:
                out = tm(input_ids=x, output_attentions=True, use_cache=False)
        except TypeError:  # a forward() that takes no output_attentions at all
            raise none from None
    found = getattr(out, "attentions", None)
    if not found or any(a is None for a in found):
        raise none
    return found


@contextlib.contextmanager
def _eager(tm, model):
    """Run with the eager attention implementation, the one that returns its weights."""
    previous = getattr(tm.config, "_attn_implementation", None)
    if previous in (None, "eager") or not hasattr(tm, "set_attn_implementation"):
        yield
        return
    try:
        tm.set_attn_implementation("eager")
    except (ValueError, ImportError, NotImplementedError) as e:
        raise OficinaError(f"{name_of(model)} has no eager attention to read weights from: "
                           f"{str(e).splitlines()[0]}") from None
    try:
        yield
    finally:
        tm.set_attn_implementation(previous)

