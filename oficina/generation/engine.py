"""The single-stream decode loop: prefill the prompt once, then one token at a time, over any
``Runner`` (``runner.py``), with the per-sequence state in ``decoding.Decoding``.

Written here rather than calling ``transformers.generate`` so that every parameter means exactly
what Ollama's documentation says (see ``sampling.py``) and the same loop drives our fast decoder
and transformers alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..options import Options
from .decoding import Decoding, Stats, fit_prompt  # noqa: F401  (re-exported: Stats, fit_prompt)
from .hf_runner import TransformersRunner
from .runner import Runner


@dataclass
class Output:
    text: str
    tokens: list[int]
    stats: Stats = field(default_factory=Stats)


class Engine:
    """Generation on one loaded causal LM, one sequence at a time. ``model`` is a ``Runner``, or
    a transformers module (wrapped in a ``TransformersRunner``)."""

    def __init__(self, model: Runner | torch.nn.Module, tokenizer, eos_ids: Sequence[int] = (),
                 context_length: int | None = None):
        if not isinstance(model, Runner):
            model = TransformersRunner(model, eos_ids, context_length, max_batch=1)
        self.runner = model
        self.tokenizer = tokenizer
        self.eos_ids = {int(i) for i in eos_ids} | set(model.eos_ids)
        self.context_length = context_length or model.context_length or 0

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits [V] after ``ids`` (no slot kept)."""
        if hasattr(self.runner, "logits"):
            return self.runner.logits(ids)
        slot, reused = self.runner.acquire(ids)
        try:
            return self.runner.prefill(slot, ids, reused)
        finally:
            self.runner.release(slot)

    def stream(self, ids: list[int], opts: Options, keep: int = 0, processor=None) -> Iterator[str | Stats]:
        """Yield text pieces as they are decided, then the final ``Stats``."""
        d = Decoding(opts, self.tokenizer, self.eos_ids, ids, self.context_length, keep,
                     processor=processor)
        if d.done:  # no room for even one token
            tail = d.finish()
            if tail:
                yield tail
            yield d.stats
            return
        runner = self.runner
        slot, reused = runner.acquire(d.prompt)
        try:
            logits = runner.prefill(slot, d.prompt, reused)
            d.prefilled(reused)
            while True:
                piece, done = d.step(logits)
                if piece:
                    yield piece
                if done:
                    break
                logits = runner.decode([slot], [d.last])[0]
        finally:
            runner.release(slot)
        tail = d.finish()
        if tail:
            yield tail
        yield d.stats

    def generate(self, ids: list[int], opts: Options, keep: int = 0) -> Output:
        pieces, stats = [], Stats()
        for item in self.stream(ids, opts, keep):
            if isinstance(item, Stats):
                stats = item
            else:
                pieces.append(item)
        return Output("".join(pieces), stats.tokens, stats)
