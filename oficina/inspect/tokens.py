"""Text -> tokens: each token's id, its vocabulary entry, the span of the text it covers, and the
count against the model's context length.

Spans come from the fast tokenizer's ``offset_mapping`` (character offsets into the input; special
tokens the tokenizer adds, like BOS or [CLS], cover nothing: ``(0, 0)``). A byte-level BPE token
that holds only part of a UTF-8 character still points at the whole character.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import OficinaError
from .common import name_of


@dataclass
class Token:
    index: int  # position in the sequence
    id: int  # row of the embedding table
    piece: str  # the vocabulary entry as stored: "Ġgato" (byte-level BPE), "▁gato" (SentencePiece), "##to"
    text: str  # what the token decodes to on its own: " gato"
    start: int | None  # span of the input text it covers, [start, end); None without offsets
    end: int | None
    special: bool  # added by the tokenizer (BOS, [CLS], ...) rather than read from the text

    @property
    def label(self) -> str:
        """The token as a person reads it in a table or on a plot axis: quotes show its spaces."""
        return json.dumps(self.text, ensure_ascii=False)


@dataclass
class Tokenization:
    text: str
    tokens: list[Token]
    context_length: int | None  # the model's trained window; None when it has no fixed one (T5)
    decoded: str = field(default="")  # the ids decoded back, special tokens left out

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def fits(self) -> bool:
        return self.context_length is None or self.count <= self.context_length

    @property
    def round_trip(self) -> bool:
        return self.decoded == self.text

    def to_dict(self) -> dict:
        return {"text": self.text, "count": self.count, "context_length": self.context_length,
                "fits": self.fits, "round_trip": self.round_trip, "decoded": self.decoded,
                "tokens": [asdict(t) for t in self.tokens]}


def tokenize(model, text: str, special: bool = True) -> Tokenization:
    """Split ``text`` the way ``model`` reads it. ``special``: add the tokenizer's own tokens
    (BOS, [CLS] ... [SEP]) as ``Model.encode`` does. Never fails on length: it is the way to
    find out whether a text fits."""
    tok = model.tokenizer
    fast = getattr(tok, "is_fast", False)
    enc = tok(text, add_special_tokens=special, return_offsets_mapping=fast,
              return_special_tokens_mask=True)
    ids = list(enc["input_ids"])
    spans = enc["offset_mapping"] if fast else [(None, None)] * len(ids)
    pieces = tok.convert_ids_to_tokens(ids)
    tokens = [Token(i, int(t), str(p), token_text(tok, t), s, e, bool(m))
              for i, (t, p, (s, e), m) in enumerate(zip(ids, pieces, spans, enc["special_tokens_mask"]))]
    decoded = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return Tokenization(text, tokens, model.info.context_length, decoded)


def token_text(tokenizer, token_id: int) -> str:
    """One token decoded on its own, special tokens kept (so BOS shows as "<s>")."""
    return tokenizer.decode([int(token_id)], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)


def encode(model, text: str, special: bool = True) -> Tokenization:
    """``tokenize``, for feeding the model: a one-line error when the text is empty or longer
    than the model's context length."""
    t = tokenize(model, text, special)
    if t.count == 0:
        raise OficinaError("the text has no tokens; give some text")
    if not t.fits:
        raise OficinaError(f"the text is {t.count} tokens but {name_of(model)} takes at most "
                           f"{t.context_length} (its context length); shorten it by "
                           f"{t.count - t.context_length} tokens")
    return t
