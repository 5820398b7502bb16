"""``grounding``: which sentences of an answer the given sources do not support.

The score of an answer sentence is lexical support: the share of its content words (words of 3+
letters that are not English or Portuguese stop words, compared by their first 6 letters so that
"capital"/"capitals" and "fundada"/"fundado" meet) that occur in the sources, except that a number
in the sentence that appears nowhere in the sources makes the score 0 -- an invented date or
amount is the hallucination that matters most and word overlap would miss it. A sentence scoring
under ``THRESHOLD`` (0.6) is unsupported. This is the overlap half of "entailment or overlap": it
catches invented facts and numbers, not a negation that reuses the sources' words.

As a guard it reads ``context["sources"]`` (a text or a list of texts) and flags, with one span
per unsupported sentence; ``score`` is the share of the answer's sentences that are unsupported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .guard import Guard, Span, Verdict, register

THRESHOLD = 0.6
STOP = frozenset(["the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our", "out", "has", "him", "his", "how", "its", "may", "new", "now", "old", "see", "two", "who", "did", "get", "let", "say", "she", "too", "use", "that", "with", "have", "this", "will", "your", "from", "they", "been", "were", "what", "when", "where", "which", "while", "would", "there", "their", "them", "then", "than", "also", "into", "just", "more", "most", "some", "such", "only", "very", "over", "about", "after", "again", "being", "both", "each", "does", "doing", "down", "further", "here", "same", "should", "these", "those", "through", "under", "until", "what", "why", "because", "could", "other", "que", "para", "com", "uma", "umas", "uns", "por", "mais", "como", "mas", "foi", "ser", "são", "está", "estão", "tem", "têm", "isso", "este", "esta", "esse", "essa", "aquele", "aquela", "pelo", "pela", "pelos", "pelas", "dos", "das", "nos", "nas", "num", "numa", "seu", "sua", "seus", "suas", "ele", "ela", "eles", "elas", "você", "vocês", "também", "muito", "muita", "entre", "sobre", "quando", "onde", "qual", "quais", "porque", "já", "não", "sim", "até", "depois"])
_WORD = re.compile(r"[^\W\d_]{3,}|\d+(?:[.,]\d+)*", re.UNICODE)
_BREAK = re.compile(r"(?<=[.!?])[ \t]+|\s*\n\s*")


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: text up to ., ! or ? followed by a blank, or a line break;
    blanks around it excluded. ("3.5" and "e.g.," do not end a sentence.)"""
    out, pos = [], 0
    for m in list(_BREAK.finditer(text)) + [None]:
        end = m.start() if m else len(text)
        a, b = pos, end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
        pos = m.end() if m else len(text)
    return out


def _terms(text: str) -> tuple[set[str], set[str]]:
    words, numbers = set(), set()
    for w in _WORD.findall(text.lower()):
        if w[0].isdigit():
            numbers.add(w.replace(",", "."))
        elif w not in STOP:
            words.add(w[:6])
    return words, numbers


@dataclass(frozen=True)
class Support:
    start: int
    end: int
    text: str
    score: float
    supported: bool


def support(answer: str, sources: str | Sequence[str]) -> list[Support]:
    """The support score of each sentence of ``answer`` against ``sources``."""
    src = sources if isinstance(sources, str) else "\n".join(sources)
    src_words, src_numbers = _terms(src)
    out = []
    for a, b in sentences(answer):
        words, numbers = _terms(answer[a:b])
        if numbers - src_numbers:
            score = 0.0
        elif not words and not numbers:
            score = 1.0  # "Yes." -- nothing to check
        else:
            score = (len(words & src_words) + len(numbers)) / (len(words) + len(numbers))
        out.append(Support(a, b, answer[a:b], score, score >= THRESHOLD))
    return out


class Grounding(Guard):
    lookback = 0  # sentences are scored one by one against the sources

    def check(self, text: str, context: Mapping[str, Any] | None = None) -> Verdict:
        sources = (context or {}).get("sources")
        if not sources:
            return Verdict("allow", guard=self.name)
        found = support(text, sources)
        bad = [s for s in found if not s.supported]
        if not bad:
            return Verdict("allow", guard=self.name)
        return Verdict("flag", "ungrounded", len(bad) / len(found),
                       tuple(Span(s.start, s.end, "ungrounded") for s in bad), self.name)


@register("grounding", "flags answer sentences the sources (context['sources']) do not support")
def _make(arg: str | None) -> Guard:
    return Grounding()
