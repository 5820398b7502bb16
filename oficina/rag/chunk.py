"""Documents -> chunks that fit the embedding model's window, each knowing its source, page,
section and character span in the document's extracted text.

Windows are counted in the embedder's own tokens (MiniLM: word pieces) through the fast
tokenizer's offsets, so ``chunk_tokens`` is exact, not a words-times-1.3 guess. A window ends at
the last sentence or line break in its second half when there is one (a chunk that stops
mid-sentence embeds worse), and the next starts ``overlap`` tokens earlier.
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
            if j < len(spans):  # prefer a sentence end in the second half of the window
                for cut in range(j, i + chunk_tokens // 2, -1):
                    if _breaks_after(body, spans[cut - 1][1]):
                        j = cut
                        break
            s, e = spans[i][0], spans[j - 1][1]
            text = body[s:e]
            if text.strip():
                chunks.append(Chunk(text, sec.start + s, sec.start + e, sec.page, sec.title, j - i))
            if j >= len(spans):
                break
            i = max(j - overlap, i + 1)
    return chunks
