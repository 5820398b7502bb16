"""One live sequence on the scheduler: sampler, stop texts, detokenizer, token budget, stats and
an optional logits processor (the grammar of structured output).

The per-sequence pieces are the library's own (``generation.sampling``, ``generation.text``,
``generation.engine.fit_prompt``), the same the single-stream ``Engine`` uses, so a request to the
server and ``oficina run`` with the same options decide the same tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..generation.engine import Stats, fit_prompt
from ..generation.sampling import Sampler
from ..generation.text import Detokenizer, StopMatcher
from ..options import Options


class LogitsProcessor(Protocol):
    """A constraint on the next token (structured output). ``mask`` returns logits with the
    disallowed ids at -inf; ``accept`` advances it by the chosen id."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor: ...

    def accept(self, token: int) -> None: ...


@dataclass
class Finished:
    text: str                       # the whole answer (the pieces already sent, joined)
    stats: Stats
    queue_seconds: float = 0.0      # submitted -> prefill started
    ttft_seconds: float = 0.0       # submitted -> first token decided
    seed: int = -1
    tail: str = ""                  # text held back until the end (not yet sent as a piece)


@dataclass
class Step:
    token: int | None = None        # the id to feed to the next decode step (None when done)
    text: str = ""
    done: Finished | None = None


@dataclass
class Sequence:
    tokenizer: object
    ids: list[int]
    opts: Options
    eos_ids: frozenset[int]
    context_length: int
    keep: int = 0
    processor: LogitsProcessor | None = None
    prompt: list[int] = field(init=False)
    logits: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.stats = Stats()
        self.prompt, self.stats.truncated = fit_prompt(list(self.ids), self.opts, self.context_length, self.keep)
        n_ctx = min(self.opts.num_ctx, self.context_length) if self.context_length else self.opts.num_ctx
        self.budget = n_ctx - len(self.prompt)
        if self.opts.num_predict >= 0:
            self.budget = min(self.budget, self.opts.num_predict)
        self.stats.prompt_tokens = len(self.prompt)
        self.sampler = Sampler(self.opts)
        self.stops = StopMatcher(self.opts.stop)
        self.detok = Detokenizer(self.tokenizer)
        self.history = list(self.prompt)
        self.pieces: list[str] = []
        self._job = None

    def start(self, logits: torch.Tensor, job) -> None:
        """The prompt is in the cache; ``logits`` [V] predict the first answer token."""
        self.logits = logits
        self._job = job
        self._t_eval = time.monotonic()
        self.stats.prompt_seconds = self._t_eval - (job.started_at or self._t_eval)
        self._first: float | None = None

    def step(self) -> Step:
        if self.budget <= 0:
            return Step(done=self.finish("length"))
        logits = self.logits
        if self.processor is not None:
            logits = self.processor.mask(logits)
        tok = self.sampler(logits, self.history)
        if self._first is None:
            self._first = time.monotonic()
        if tok in self.eos_ids:
            return Step(done=self.finish("stop"))
        if self.processor is not None:
            self.processor.accept(tok)
        self.stats.tokens.append(tok)
        self.history.append(tok)
        text, hit = self.stops.feed(self.detok.add(tok))
        self.pieces.append(text)
        if hit:
            return Step(text=text, done=self.finish("stop"))
        if len(self.stats.tokens) >= self.budget:
            return Step(text=text, done=self.finish("length"))
        return Step(token=tok, text=text)

    def finish(self, reason: str) -> Finished:
        """Close the sequence: flush held-back text (not after a stop hit) and fill the stats.
        ``reason``: stop | length | timeout."""
        tail = ""
        if not self.stops.hit:
            tail = self.stops.flush(self.detok.flush())
        self.pieces.append(tail)
        now = time.monotonic()
        s = self.stats
        s.done_reason = reason
        s.eval_tokens = len(s.tokens)
        start = getattr(self, "_t_eval", now)
        s.eval_seconds = now - start
        job = self._job
        queued = job.queued_at if job else now
        return Finished("".join(self.pieces), s,
                        queue_seconds=((job.started_at or now) - queued) if job else 0.0,
                        ttft_seconds=((self._first or now) - queued) if job else 0.0,
                        seed=self.sampler.seed, tail=tail)
