"""``TransformersRunner``: the Runner over any transformers causal LM (the fallback).

Each slot keeps its own transformers ``DynamicCache`` (batch of one), and ``decode`` steps the
slots one after another. Left-padding B caches into one batch was measured against this on
SmolLM2 (2 threads): for the batch sizes the CLI and eval use (1-4) the per-slot loop costs the
same matrix-vector products per token, and it has no padding masks to get wrong across
transformers versions. The fast runner (``generation/fast``) is where batching pays.

transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (5.24 warns on the old
name); the name is read from the model's signature once, so either version works silently.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.compat import cache_of
from .runner import Capabilities, Runner, Scores, SlotsFull, target_logprobs


class TransformersRunner(Runner):
    def __init__(self, model: torch.nn.Module, eos_ids: Sequence[int] = (), context_length: int | None = None,
                 max_batch: int = 4, note: str | None = None, num_batch: int = 512):
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.context_length = int(context_length or 0)
        out = model.get_output_embeddings()
        self.vocab_size = int(out.weight.shape[0]) if out is not None else int(model.config.vocab_size)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep = "logits_to_keep" in params
        self.num_batch = max(1, int(num_batch))
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.capabilities = Capabilities("transformers", max_batch, dtype,
                                         architectures=("any transformers causal LM",),
                                         adapters=("lora", "ia3", "prompt", "prefix", "bottleneck"),
                                         weights=f"{dtype} torch modules", note=note)
        self._caches: list = [None] * max_batch     # per slot: a transformers Cache or None
        self._ids: list[list[int]] = [[] for _ in range(max_batch)]
        self._live = [False] * max_batch

    # -- slots --------------------------------------------------------------------------------------
    def acquire(self, ids: Sequence[int] = ()) -> tuple[int, int]:
        free = [s for s in range(len(self._live)) if not self._live[s]]
        if not free:
            raise SlotsFull(f"all {len(self._live)} sequence slots are in use")
        ids = list(ids)
        # the free slot whose cached ids share the longest prefix with the prompt (at least one
        # prompt token is always left to prefill, so there are logits to return)
        best, n = free[0], 0
        for s in free:
            k = _common(self._ids[s], ids[:-1])
            if k > n:
                best, n = s, k
        self._live[best] = True
        if n == 0:
            self._caches[best], self._ids[best] = None, []
        elif n < len(self._ids[best]):
            try:
                # a negative count removes that many tokens: transformers 5.x refuses a positive
                # (absolute) length, and 4.x reads a negative one the same way
                self._caches[best].crop(n - len(self._ids[best]))
                self._ids[best] = self._ids[best][:n]
            except (ValueError, NotImplementedError, AttributeError):  # e.g. sliding-window layers
                self._caches[best], self._ids[best], n = None, [], 0
        return best, n

    def release(self, slot: int) -> None:
        self._live[slot] = False

    def length(self, slot: int) -> int:
        return len(self._ids[slot])

    # -- forward ------------------------------------------------------------------------------------
    def _forward(self, slot: int, ids: Sequence[int], keep: int = 1) -> Tensor:
        """Append ``ids`` to the slot's cache; float32 logits ``[keep, V]`` of the last ``keep``
        positions (``[V]`` for keep=1)."""
        cache = self._caches[slot]
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
        kw = {self._cache_kw: cache, "use_cache": True}
        if self._keep:
            kw["logits_to_keep"] = keep
        start = len(self._ids[slot])
        pos = torch.arange(start, start + len(ids), device=self.device)[None]
        out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), position_ids=pos, **kw)
        self._caches[slot] = cache_of(out) or cache
        self._ids[slot].extend(int(i) for i in ids)
        return out.logits[0, -1].float() if keep == 1 else out.logits[0, -keep:].float()

    @torch.inference_mode()
    def prefill(self, slot: int, ids: Sequence[int], start: int = 0) -> Tensor:
        ids = list(ids)
        if start != len(self._ids[slot]) or self._ids[slot] != ids[:start]:
            raise ValueError(f"slot {slot} holds {len(self._ids[slot])} ids, not the prompt's first {start}")
        logits = None
        for i in range(start, len(ids), self.num_batch):
            logits = self._forward(slot, ids[i:i + self.num_batch])
        if logits is None:
            raise ValueError("prefill needs at least one new id")
        return logits

    @torch.inference_mode()
    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> Tensor:
        return torch.stack([self._forward(s, [int(t)]) for s, t in zip(slots, tokens)])

    @torch.inference_mode()
    def score(self, ids: Sequence[int], start: int = 1) -> Scores:
        """As the fast runner's: ``ids[:-1]`` in chunks through a free slot whose cached prefix
        (at most ``ids[:start-1]``) is reused; logits only for the scored positions."""
        ids = [int(i) for i in ids]
        if not 1 <= start < len(ids):
            raise ValueError(f"nothing to score: start {start} for {len(ids)} ids")
        slot, n = self.acquire(ids[:start])
        try:
            lps, hits = [], []
            for i in range(n, len(ids) - 1, self.num_batch):
                chunk = ids[i:min(i + self.num_batch, len(ids) - 1)]
                keep = i + len(chunk) - max(start - 1, i)   # scored positions in this chunk
                logits = self._forward(slot, chunk, max(keep, 1))
                if keep > 0:
                    lp, hit = target_logprobs(logits.reshape(-1, logits.shape[-1])[-keep:],
                                              ids[i + len(chunk) - keep + 1:i + len(chunk) + 1])
                    lps.append(lp)
                    hits.append(hit)
            return Scores(torch.cat(lps), torch.cat(hits))
        finally:
            self.release(slot)

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> Tensor:
        """Next-token logits [V] after ``ids`` without touching any slot."""
        kw = {"logits_to_keep": 1} if self._keep else {}
        out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=False, **kw)
        return out.logits[0, -1].float()

    def close(self) -> None:
        self._caches = [None] * len(self._caches)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
