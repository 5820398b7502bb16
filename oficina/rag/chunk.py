"""Documents -> chunks that fit the embedding model's window, each knowing its source, page,
section and character span in the document's extracted text.

Windows are counted in the embedder's own tokens (MiniLM: word pieces) through the fast
tokenizer's offsets, so ``chunk_tokens`` is exact, not a words-times-1.3 guess. A window ends at
the last sentence or line break in its second half when there is one (a chunk that stops
mid-sentence embeds worse), else at a word end, and the next starts about ``overlap`` tokens
earlier, on a whole word.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OficinaError
from ..formats.documents import Document


@dataclass
class Chunk:
    text: str
    start: int  # span in Document.text: text == document.text[start:end]
    end: int
    page: int | None
    section: str | None
    tokens: int


def _breaks_after(text: str, end: int) -> bool:
    """Whether a sentence or line ends at character ``end``."""
    before = text[end - 1:end]
    after = text[end:end + 1]
    return before in (".", "!", "?", "\n", ":", ";") and (after == "" or after.isspace()) \
        or after == "\n"


def _word_end(text: str, spans: list[tuple[int, int]], cut: int) -> bool:
    """Whether cutting before token ``cut`` falls between words (not inside one)."""
    return cut >= len(spans) or spans[cut][0] > spans[cut - 1][1] or \
        not text[spans[cut][0]:spans[cut][0] + 1].isalnum() or \
        not text[spans[cut - 1][1] - 1:spans[cut - 1][1]].isalnum()


def chunk_document(doc: Document, tokenizer, chunk_tokens: int, overlap: int) -> list[Chunk]:
    if chunk_tokens < 8 or not 0 <= overlap < chunk_tokens // 2 + 1:
        raise OficinaError(f"chunk of {chunk_tokens} tokens with overlap {overlap}: need "
                           f"chunk_tokens >= 8 and 0 <= overlap <= chunk_tokens / 2")
    chunks = []
    for sec in doc.sections:
        body = doc.text[sec.start:sec.end]
        enc = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(s, e) for s, e in enc["offset_mapping"] if e > s]
        i = 0
        while i < len(spans):
            j = min(i + chunk_tokens, len(spans))
            if j < len(spans):  # prefer a sentence end in the second half, else a word end
                j = next((c for c in range(j, i + chunk_tokens // 2, -1)
                          if _breaks_after(body, spans[c - 1][1])), None) or \
                    next((c for c in range(j, i, -1) if _word_end(body, spans, c)), j)
            s, e = spans[i][0], spans[j - 1][1]
            text = body[s:e]
            if text.strip():
                chunks.append(Chunk(text, sec.start + s, sec.start + e, sec.page, sec.title, j - i))
            if j >= len(spans):
                break
            nxt = max(j - overlap, i + 1)
            while nxt < j and not _word_end(body, spans, nxt):  # start on a whole word
                nxt += 1
            i = nxt
    return chunks
