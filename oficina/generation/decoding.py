"""One sequence's decoding state, shared by the single-stream loop (``engine.Engine``) and the
server's scheduler: what to do with the logits a runner returned for this sequence.

A ``Decoding`` is built from the request (``Options``, prompt ids) and the model's tokenizer and
end ids; it owns the ``Sampler``, the ``StopMatcher``, the ``Detokenizer``, the token budget
(``num_predict`` and ``num_ctx``) and the ``Stats``. The loop around it only moves tokens between
``Decoding.step`` and ``Runner.decode``, so B sequences decoded together each keep their own
seed, penalties, stops and budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor

from ..options import Options
from ..stats import Stats
from .sampling import Sampler
from .text import Detokenizer, StopMatcher


class LogitsProcessor(Protocol):
    """A constraint on what may come next (the server's JSON-schema grammar): ``__call__`` masks
    the row in place or returns a new one (``-inf`` for forbidden ids) before sampling;
    ``accept`` is told the token that was chosen, so it can advance its state."""

    def __call__(self, logits: Tensor) -> Tensor: ...

    def accept(self, token: int) -> None: ...


def fit_prompt(ids: list[int], opts: Options, limit: int, keep: int = 0) -> tuple[list[int], str | None]:
    """Make the prompt fit the context window, never silently.

    Like Ollama, the first ``keep`` tokens (e.g. BOS) stay and the oldest tokens after them are
    dropped; room is left for the answer (num_predict, or a quarter of the window).
    Returns the ids and a sentence saying what was kept, or None when nothing was cut.
    """
    n_ctx = min(opts.num_ctx, limit) if limit else opts.num_ctx
    reserve = min(opts.num_predict, n_ctx // 2) if opts.num_predict > 0 else max(1, n_ctx // 4)
    room = max(1, n_ctx - reserve)
    if len(ids) <= n_ctx - 1:
        return ids, None
    keep = min(keep, room // 2)
    tail = room - keep
    kept = ids[:keep] + ids[len(ids) - tail:]
    note = (f"prompt has {len(ids)} tokens but the context window is {n_ctx} (num_ctx): kept the "
            f"first {keep} and the last {tail} tokens, dropped {len(ids) - len(kept)} in between; "
            f"raise num_ctx to keep everything")
    return kept, note


class Decoding:
    """The per-sequence state between runner steps. Usage (one sequence)::

        d = Decoding(opts, tokenizer, eos_ids, ids, context_length, keep=1)
        logits = runner.prefill(slot, d.prompt, reused); d.prefilled()
        while True:
            piece, done = d.step(logits)      # sample, check end/stop/budget, detokenize
            yield piece
            if done: break
            logits = runner.decode([slot], [d.last])[0]
        tail = d.finish()                     # flush held-back text; d.stats is final
    """

    def __init__(self, opts: Options, tokenizer, eos_ids: Sequence[int], ids: Sequence[int],
                 context_length: int = 0, keep: int = 0, device: str = "cpu",
                 processor: LogitsProcessor | Callable[[Tensor], Tensor] | None = None):
        self.opts = opts
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.stats = Stats()
        self.prompt, self.stats.truncated = fit_prompt(list(ids), opts, context_length, keep)
        n_ctx = min(opts.num_ctx, context_length) if context_length else opts.num_ctx
        budget = n_ctx - len(self.prompt)
        if opts.num_predict >= 0:
            budget = min(budget, opts.num_predict)
        self.budget = max(0, budget)
        self.stats.prompt_tokens = len(self.prompt)
        self.sampler = Sampler(opts, device=device)
        self.stop = StopMatcher(opts.stop)
        self.detok = Detokenizer(tokenizer)
        self.processor = processor
        self.history = list(self.prompt)  # what the penalties look back over
        self.last: int | None = None      # the token to feed the runner next
        self.done = self.budget == 0
        if self.done:
            self.stats.done_reason = "length"
        self._t0 = time.perf_counter()
        self._t1: float | None = None

    def prefilled(self, reused: int = 0) -> None:
        """The runner has the prompt in its cache (``reused`` of it copied from a prefix)."""
        self._t1 = time.perf_counter()
        self.stats.prompt_seconds = self._t1 - self._t0
        self.stats.reused_tokens = reused

    def step(self, logits: Tensor) -> tuple[str, bool]:
        """This sequence's next-token logits ``[V]`` -> (text decided now, finished?). When not
        finished, ``self.last`` is the token to feed the runner."""
        if self.done:
            return "", True
        if self._t1 is None:
            self.prefilled()
        if self.processor is not None:
            logits = self.processor(logits)
        tok = self.sampler(logits, self.history)
        if self.processor is not None and hasattr(self.processor, "accept"):
            self.processor.accept(tok)
        if tok in self.eos_ids:
            return "", self._end("stop")
        self.stats.tokens.append(tok)
        self.history.append(tok)
        self.last = tok
        piece, hit = self.stop.feed(self.detok.add(tok))
        if hit:
            return piece, self._end("stop")
        if len(self.stats.tokens) >= self.budget:
            return piece, self._end("length")
        return piece, False

    def _end(self, reason: str) -> bool:
        self.done = True
        self.stats.done_reason = reason
        return True

    def finish(self) -> str:
        """Flush text held back (a partial stop match, an incomplete character); final stats."""
        self.done = True
        self.stats.done_reason = self.stats.done_reason or "stop"
        self.stats.eval_tokens = len(self.stats.tokens)
        if self._t1 is not None:
            self.stats.eval_seconds = time.perf_counter() - self._t1
        if self.stop.hit:
            return ""
        return self.stop.flush(self.detok.flush())
