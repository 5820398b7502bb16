"""Guards on a stream of generated text, and on the prompt before it.

Text is held back only as long as some guard cannot decide on it yet -- the way stop sequences
hold back a possible prefix (``generation/text.py``): each guard's ``hold(text)`` says from where
the text so far is undecided (pii: the trailing digit groups and the unfinished word; classifiers
and rules: the unfinished sentence). Everything before the earliest such point is checked and
released (redacted where a guard redacts). A block stops generation: the offending text is never
released and the final ``Stats`` says ``done_reason = "guard:NAME:CATEGORY"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..stats import Stats
from .guard import Guard, Verdict, check, combine, get_guard, redact


def done_reason(v: Verdict) -> str:
    return f"guard:{v.guard}:{v.category or 'blocked'}"


def check_input(text: str, guards: Sequence[str | Guard],
                context: Mapping[str, Any] | None = None) -> tuple[str, Verdict]:
    """The prompt as the model should see it (redacted where a guard redacts) and the verdict."""
    v = check(text, list(guards), context)
    return (v.redacted if v.verdict == "redact" and v.redacted is not None else text), v


class GuardedStream:
    """Wraps the engine's items (text pieces, then one ``Stats``); iterate it like the engine."""

    def __init__(self, items: Iterator[Any], guards: Sequence[str | Guard],
                 context: Mapping[str, Any] | None = None):
        self.items = items
        self.guards = [get_guard(g) for g in guards]
        self.context = context
        self.text = ""  # everything generated so far (raw)
        self.released = 0  # raw characters already decided and released
        self.verdicts: list[Verdict] = []  # flags and redactions seen, in order
        self.blocked: Verdict | None = None

    def _decide(self, upto: int) -> tuple[str, Verdict | None]:
        """Check text[:upto]; return the new released piece, or the blocking verdict."""
        if upto <= self.released:
            return "", None
        # each guard reads only as far back as it needs, so a long answer is not re-read whole
        # at every sentence (quadratic for a classifier)
        found = []
        for g in self.guards:
            start = 0 if g.lookback is None else max(0, self.released - g.lookback)
            v = g.check(self.text[start:upto], self.context)
            if start:
                v = dataclasses.replace(v, spans=tuple(dataclasses.replace(
                    x, start=x.start + start, end=x.end + start) for x in v.spans))
            found.append(v)
        v = combine(self.text[:upto], found)
        if v.blocked:
            return "", v
        piece = self.text[self.released:upto]
        if v.verdict != "allow":
            new = [s for s in v.spans if s.start >= self.released]
            if new and (not self.verdicts or self.verdicts[-1] != v):
                self.verdicts.append(v)
            if v.verdict == "redact":
                shifted = [dataclasses.replace(s, start=s.start - self.released, end=s.end - self.released)
                           for s in new]
                piece = redact(piece, shifted)
        self.released = upto
        return piece, None

    def feed(self, text: str) -> tuple[str, Verdict | None]:
        """Take generated ``text``; return what can be released now, or the blocking verdict."""
        self.text += text
        upto = min(g.hold(self.text) for g in self.guards) if self.guards else len(self.text)
        piece, v = self._decide(upto)
        self.blocked = v
        return piece, v

    def finish(self) -> tuple[str, Verdict | None]:
        """The end of the answer: decide on whatever was held back."""
        piece, v = self._decide(len(self.text))
        self.blocked = v
        return piece, v

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            if isinstance(item, Stats):
                piece, v = self.finish()
                if v is not None:
                    item = dataclasses.replace(item, done_reason=done_reason(v))
                elif piece:
                    yield piece
                yield item
                return
            piece, v = self.feed(item)
            if v is not None:
                close = getattr(self.items, "close", None)
                if close:
                    close()  # stop decoding: nothing after a block is wanted
                yield Stats(done_reason=done_reason(v))
                return
            if piece:
                yield piece
