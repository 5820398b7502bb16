"""The runner: what the decode loop, evaluation and the server need from a loaded model.

A runner owns the weights and a KV cache with a fixed number of *slots*, one per live sequence
(gpt-fast's static cache; vLLM's "sequence groups" without the paging). Everything above it —
the sampler, stop handling, the detokenizer (``decoding.Decoding``), the single-stream loop
(``engine.Engine``) and the server's continuous batching — works on token ids and logits and
never touches torch modules, so the same code drives:

- ``fast``: our own decoder over packed weights (``generation/fast/``), Llama family and Gemma 3;
- ``transformers``: any transformers causal LM (the fallback, also for prompt/prefix adapters);
- ``remote``: an OpenAI-compatible upstream (the server's remote models; generates text, so it
  implements only what it can and says so in ``capabilities``).

The protocol, per sequence::

    slot, reused = runner.acquire(ids)         # a free slot; `reused` leading ids already cached
    logits = runner.prefill(slot, ids, reused) # [V] float32 after the last prompt token
    while ...:
        tok = sample(logits)
        logits = runner.decode([slot, ...], [tok, ...])[i]   # [B, V], B sequences together
    runner.release(slot)

Sequences can join (acquire + prefill) and leave (release) between any two ``decode`` steps;
that is all continuous batching needs. Runners are not thread-safe: one scheduler thread drives
each runner (the server's), or a single caller does (CLI, API, eval).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import OficinaError


class SlotsFull(OficinaError):
    """Every KV-cache slot holds a live sequence; release one first (the server queues)."""


@dataclass(frozen=True)
class Capabilities:
    name: str                        # "fast" | "transformers" | "remote"
    max_batch: int                   # slots: sequences that can be live at once
    dtype: str                       # what the matmuls run in, e.g. "int4/bf16", "float32"
    architectures: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()   # adapter methods it can apply (merged at load or live)
    weights: str = ""                # how the weights are held, e.g. "Q4_1 as int4 groups of 32"
    note: str | None = None          # why this runner was chosen (e.g. the fallback's reason)
    chunk: int = 64                  # where the server cuts a prompt longer than its prefill budget


class Scores(NamedTuple):
    """What ``Runner.score`` returns for the scored positions ``t >= start``."""

    logprobs: Tensor                 # [n] float32: log P(ids[t] | ids[:t])
    greedy: Tensor                   # [n] bool: ids[t] was the argmax (lm-eval's ``is_greedy``)


class Runner(ABC):
    """One loaded causal LM behind a fixed-size batched KV cache. See the module docstring."""

    vocab_size: int
    context_length: int              # the most tokens one slot can hold (prompt + answer)
    eos_ids: frozenset[int]
    capabilities: Capabilities

    @abstractmethod
    def acquire(self, ids: Sequence[int] = ()) -> tuple[int, int]:
        """A free slot for a new sequence whose prompt is ``ids``, and how many leading ids the
        slot's cache already holds (prefix reuse: copied from a cached sequence that starts the
        same way; 0 when none). Raises ``SlotsFull`` when every slot is live."""

    @abstractmethod
    def prefill(self, slot: int, ids: Sequence[int], start: int = 0) -> Tensor:
        """Append ``ids[start:]`` to the slot's cache (which holds ``ids[:start]``) and return the
        float32 logits ``[V]`` after the last id. Long prompts run in chunks of ``num_batch``."""

    def fill_many(self, parts: Sequence[tuple[int, Sequence[int], int]]) -> None:
        """Append each part's ``ids[start:]`` to its slot's cache ``(slot, ids, start)``, no
        logits wanted: the server's batched prefill of every prompt that arrived together (the
        last id of a prompt then goes through ``decode``). This default prefills them one by one;
        runners that can run them in one pass override it (``FastRunner``: one weight pass)."""
        for slot, ids, start in parts:
            self.prefill(slot, ids, start)

    def prepare_serving(self) -> int:
        """Called once when a server starts driving this runner: set up what its batched
        prefill wants; returns the bytes of memory that takes beyond the weights."""
        return 0

    @abstractmethod
    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> Tensor:
        """One step for B live sequences together: append ``tokens[i]`` to ``slots[i]`` and return
        float32 logits ``[B, V]`` in the same order. Slots may hold different lengths."""

    @abstractmethod
    def release(self, slot: int) -> None:
        """The sequence in ``slot`` is done; the slot is free (its cache may serve as a prefix)."""

    @abstractmethod
    def length(self, slot: int) -> int:
        """Tokens the slot's cache holds now."""

    @abstractmethod
    def score(self, ids: Sequence[int], start: int = 1) -> Scores:
        """Log-probabilities ``[len(ids) - start]`` of ``ids[t]`` given ``ids[:t]`` for each
        ``t >= start``, in float32, and whether each was the argmax (evaluation's
        log-likelihoods). Runs in a free slot and leaves ``ids[:-1]`` cached there, so scoring
        several continuations of one context in a row reuses the context's KV (prefix reuse, as
        ``acquire``); raises ``SlotsFull`` when no slot is free."""

    def close(self) -> None:
        """Free the weights and caches (the server's keep_alive expiry)."""


def target_logprobs(logits: Tensor, targets: Sequence[int]) -> tuple[Tensor, Tensor]:
    """log-softmax of ``logits [n, V]`` at ``targets``, and whether each target was the argmax
    (the one reduction behind both runners' ``score``)."""
    t = torch.tensor(list(targets), device=logits.device)[:, None]
    logits = logits.float()
    lp = logits.gather(-1, t)[:, 0] - torch.logsumexp(logits, -1)
    return lp, logits.argmax(-1) == t[:, 0]
