"""Retrieved chunks -> the sentence in them that answers the question (an extractive context).

A 135M-parameter model given whole chunks often answers from the wrong sentence: the page's
boilerplate ("Compiled by the Registry Office ...") or another workshop's record in the next
block. Cutting the retrieved chunks down to the sentence nearest the question leaves it one
sentence to read, in its numbered block, so citations still point at a retrieved chunk; the
block holding it is put first (numbered [1]). A sentence is scored with its document's title in
front (MiniLM's cosine to the question, plus 0.6 x the share of the question's rare words it
holds): "Its glass is melted in a charcoal kiln." is about the workshop the title names. On the
shipped set the answer is in block [1] for 78 of 80 questions at k=4 (71 with 0.3 x the words,
54 with the cosine alone); what this does to smollm2's answers is in docs/rag.md.

Units are sentences; a line ending in ":" keeps the table rows under it as one unit ("Prices at
the Nolley workshop door: Harbour light 24 crowns; ..."), since a row alone does not say whose
price it is. Markdown markup (headings, emphasis, table pipes, rules) is dropped from the units,
and headings alone are not candidates."""

from __future__ import annotations

import re

import numpy as np

from .retrieve import Hit

_END = re.compile(r"[.!?][\"')\]]*$")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[a-z0-9]+")
_RULE = re.compile(r"^\s*\|?\s*:?-{3,}.*$")
# question words that do not tell sentences apart
_COMMON = frozenset(["the", "a", "an", "of", "in", "on", "at", "to", "is", "was", "were", "by",
                     "for", "and", "or", "its", "it", "this", "that", "with", "from", "as", "be",
                     "are", "has", "have", "had", "which", "who", "whom", "whose", "what", "when",
                     "where", "how", "why", "does", "do", "did", "kind", "much", "many", "year",
                     "today"])


def _clean(line: str) -> str:
    line = line.strip()
    if _RULE.match(line):
        return ""
    line = re.sub(r"^#{1,6}\s+", "", line)
    if "|" in line:  # a table row (Markdown or HTML cells)
        line = " ".join(c.strip() for c in line.strip("|").split("|"))
    return line.strip("_*").strip()


def units(text: str) -> list[str]:
    """The chunk's sentences (and tables with the line that introduces them), in order."""
    lines: list[str] = []
    table = False  # inside the rows under a line that ends in ":"
    for raw in text.splitlines():
        line = _clean(raw)
        if not line:
            continue
        prev = lines[-1] if lines else ""
        if table and not _END.search(line):
            lines[-1] = f"{prev} {line}" if prev.endswith(":") else f"{prev}; {line}"
            continue
        table = line.endswith(":")
        if prev and not _END.search(prev) and not prev.endswith(":") and line[0].islower():
            lines[-1] = f"{prev} {line}"  # a wrapped line (PDF text): the sentence goes on
        else:
            lines.append(line)
    out: list[str] = []
    for line in lines:
        out += [s.strip() for s in _SPLIT.split(line) if s.strip()]
    # a heading alone ("Workshop and kiln") answers nothing and, chosen, leaves the model guessing
    kept = [u for u in out if _END.search(u) or ":" in u]
    return kept or out or ([text.strip()] if text.strip() else [])


def _rare_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _COMMON and len(w) > 2}


def focus(encoder, question: str, hits: list[Hit], keep: int = 1,
          lexical: float = 0.6) -> tuple[list[Hit], list[list[str]]]:
    """The hits re-ordered by their best unit (the block the model sees as [1] holds the best
    sentence: a small model reads "[2]" as part of the answer more often than "[1]"), and for
    each the units kept for the prompt (in the chunk's order; empty: none of its units is among
    the ``keep`` best). Score: cosine(unit, question) + ``lexical`` x the share of the
    question's rare words the unit holds."""
    per_hit = [units(h.text) for h in hits]
    flat = [(i, u) for i, us in enumerate(per_hit) for u in us]
    if not flat:
        return hits, [[] for _ in hits]
    # scored with the document's title in front: "Its glass is melted in a charcoal kiln." is
    # about the workshop the title names (the prompt shows the title in the block's header)
    titled = [f"{hits[i].title}. {u}" if hits[i].title else u for i, u in flat]
    vecs = encoder.encode([question] + titled)
    cos = vecs[1:] @ vecs[0]
    qwords = _rare_words(question)
    score = [c + (lexical * len(qwords & _rare_words(u)) / len(qwords) if qwords else 0.0)
             for c, u in zip(cos.tolist(), titled)]
    best = set(np.argsort(score)[::-1][:keep].tolist())
    kept: list[list[str]] = [[] for _ in hits]
    top = [-np.inf] * len(hits)
    for n, (i, u) in enumerate(flat):
        top[i] = max(top[i], score[n])
        if n in best:
            kept[i].append(u)
    order = sorted(range(len(hits)), key=lambda i: (not kept[i], -top[i], i))
    return [hits[i] for i in order], [kept[i] for i in order]
