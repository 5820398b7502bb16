"""The decode loop: prefill the prompt once, then one token at a time with the KV cache.

Written here rather than calling ``transformers.generate`` so that every parameter means exactly
what Ollama's documentation says (see ``sampling.py``) and so later work can make it faster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from ..models.compat import cache_arg, cache_of
from ..options import Options
from .sampling import Sampler
from .text import StopMatcher, Detokenizer


@dataclass
class Stats:
    prompt_tokens: int = 0
    eval_tokens: int = 0
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    done_reason: str = ""  # "stop" (end token or stop text) | "length" (num_predict or num_ctx)
    truncated: str | None = None  # what was dropped from the prompt, when it did not fit
    tokens: list[int] = field(default_factory=list)  # the generated ids


@dataclass
class Output:
    text: str
    tokens: list[int]
    stats: Stats = field(default_factory=Stats)


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


class Engine:
    """Generation on one loaded causal LM (batch of one)."""

    def __init__(self, model: torch.nn.Module, tokenizer, eos_ids: Sequence[int], context_length: int | None):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = set(int(i) for i in eos_ids)
        self.context_length = context_length or 0
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits [V] after ``ids`` (no cache kept)."""
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)
        return out.logits[0, -1].float()

    def stream(self, ids: list[int], opts: Options, keep: int = 0) -> Iterator[str | Stats]:
        """Yield text pieces as they are decided, then the final ``Stats``."""
        stats = Stats()
        ids, stats.truncated = fit_prompt(ids, opts, self.context_length, keep)
        n_ctx = min(opts.num_ctx, self.context_length) if self.context_length else opts.num_ctx
        budget = n_ctx - len(ids)
        if opts.num_predict >= 0:
            budget = min(budget, opts.num_predict)
        stats.prompt_tokens = len(ids)
        sampler = Sampler(opts, device=self.device)
        stop = StopMatcher(opts.stop)
        detok = Detokenizer(self.tokenizer)
        history = list(ids)
        generated = stats.tokens
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            past, logits = cache_of(out), out.logits[0, -1].float()
            stats.prompt_seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            stats.done_reason = "length"
            while len(generated) < budget:
                tok = sampler(logits, history)
                if tok in self.eos_ids:
                    stats.done_reason = "stop"
                    break
                generated.append(tok)
                history.append(tok)
                piece, hit = stop.feed(detok.add(tok))
                if piece:
                    yield piece
                if hit:
                    stats.done_reason = "stop"
                    break
                if len(generated) >= budget:
                    break
                out = self.model(input_ids=torch.tensor([[tok]], device=self.device),
                                 use_cache=True, **{cache_arg(self.model): past})
                past, logits = cache_of(out), out.logits[0, -1].float()
            stats.eval_tokens = len(generated)
            stats.eval_seconds = time.perf_counter() - t1
        if not stop.hit:
            tail = stop.flush(detok.flush())
            if tail:
                yield tail
        yield stats

    def generate(self, ids: list[int], opts: Options, keep: int = 0) -> Output:
        pieces, stats = [], Stats()
        for item in self.stream(ids, opts, keep):
            if isinstance(item, Stats):
                stats = item
            else:
                pieces.append(item)
        return Output("".join(pieces), stats.tokens, stats)
