"""One live sequence on the scheduler: the library's ``Decoding`` (sampler, stops, detokenizer,
budget, stats, grammar hook; the same state ``oficina run`` uses, so a request and the CLI with
the same options decide the same tokens) plus what the server measures around it: time in the
queue and time to the first token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..generation.decoding import Decoding, Stats


@dataclass
class Finished:
    text: str                       # the whole answer (the pieces already sent, joined, + tail)
    stats: Stats
    queue_seconds: float = 0.0      # submitted -> prefill started
    ttft_seconds: float = 0.0       # submitted -> first token decided
    seed: int = -1
    tail: str = ""                  # text held back until the end (not yet sent as a piece)
    token_times: list[float] = field(default_factory=list)  # time.monotonic() at each token (metrics' ITL)


@dataclass
class Step:
    token: int | None = None        # the id to feed to the next decode step (None when done)
    text: str = ""
    done: Finished | None = None


class Sequence:
    def __init__(self, decoding: Decoding):
        self.d = decoding
        self.prompt = decoding.prompt
        self.logits: torch.Tensor | None = None
        self.pieces: list[str] = []
        self._job = None
        self._first: float | None = None
        self.times: list[float] = []

    def start(self, logits: torch.Tensor, job, reused: int = 0) -> None:
        """The prompt is in the runner's cache; ``logits`` [V] predict the first answer token."""
        self.d.prefilled(reused)
        self.d.stats.prompt_seconds = time.monotonic() - (job.started_at or time.monotonic())
        self.logits, self._job = logits, job

    def step(self) -> Step:
        text, done = self.d.step(self.logits)
        self.times.append(time.monotonic())
        if self._first is None:
            self._first = self.times[-1]
        self.pieces.append(text)
        if done:
            return Step(text=text, done=self.finish())
        return Step(token=self.d.last, text=text)

    def finish(self, reason: str | None = None) -> Finished:
        """Close the sequence (``reason`` overrides, e.g. "timeout"), flush held-back text."""
        if reason:
            self.d.stats.done_reason = reason
        tail = self.d.finish()
        self.pieces.append(tail)
        now = time.monotonic()
        job = self._job
        queued = job.queued_at if job else now
        started = (job.started_at or now) if job else now
        return Finished("".join(self.pieces), self.d.stats, queue_seconds=started - queued,
                        ttft_seconds=(self._first or now) - queued, seed=self.d.sampler.seed, tail=tail,
                        token_times=self.times)
