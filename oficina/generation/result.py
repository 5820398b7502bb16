"""What a generation call returns: a ``Stream`` of text pieces whose ``stats`` (and guard
``verdicts``) are set when it ends, or a ``Reply`` — the whole text, a ``str`` — carrying them.
Each call has its own, so threads sharing a model never read each other's numbers."""

from __future__ import annotations

from typing import Callable, Iterator

from .decoding import Stats


class Reply(str):
    """A generated answer: the text (a str), with its call's ``stats`` and guard ``verdicts``."""

    stats: Stats | None = None
    verdicts: list = []


class Stream:
    """One call's answer as it is decided: iterate it for the text pieces; ``stats`` (and the
    guards' ``verdicts``) are set when it ends, ``text`` is what came so far."""

    def __init__(self, remember: Callable[[Stats, list], None] | None = None):
        self._remember, self._items = remember, iter(())
        self.stats: Stats | None = None
        self.verdicts: list = []
        self._pieces: list[str] = []

    def over(self, items: Iterator[str]) -> "Stream":
        self._items = items
        return self

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        piece = next(self._items)
        self._pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def finished(self, stats: Stats) -> None:
        self.stats = stats
        if self._remember is not None:  # the model's ``last_stats`` for this thread
            self._remember(stats, self.verdicts)

    def reply(self) -> Reply:
        for _ in self:
            pass
        out = Reply(self.text)
        out.stats, out.verdicts = self.stats, self.verdicts
        return out
