"""A stop-gap runner over a transformers causal LM: one DynamicCache per slot, decode steps run
slot by slot. Only used until the engine's batched runner is available (see ``pool.open_runner``);
it keeps the server correct, not fast."""

from __future__ import annotations

from typing import Sequence

import warnings

import torch
from torch import Tensor

from ..generation.runner import Capabilities, Runner, SlotsFull


class StopgapRunner(Runner):
    def __init__(self, model: torch.nn.Module, eos_ids, context_length: int, vocab_size: int, slots: int = 8):
        self.model = model
        self.eos_ids = frozenset(eos_ids)
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.capabilities = Capabilities("transformers", slots, str(next(model.parameters()).dtype).removeprefix("torch."),
                                         note="stop-gap: one sequence per forward pass")
        self._past: dict[int, object] = {}
        self._len: dict[int, int] = {}
        self._device = next(model.parameters()).device

    def acquire(self, ids: Sequence[int] = ()) -> tuple[int, int]:
        for slot in range(self.capabilities.max_batch):
            if slot not in self._past:
                self._past[slot] = None
                self._len[slot] = 0
                return slot, 0
        raise SlotsFull("every slot is live")

    @torch.inference_mode()
    def _forward(self, slot: int, ids: Sequence[int]) -> Tensor:
        with warnings.catch_warnings():   # transformers 5.x renames past_key_values; same object
            warnings.simplefilter("ignore", FutureWarning)
            out = self.model(input_ids=torch.tensor([list(ids)], device=self._device),
                             past_key_values=self._past[slot], use_cache=True)
        self._past[slot] = out.past_key_values
        self._len[slot] += len(ids)
        return out.logits[0, -1].float()

    def prefill(self, slot: int, ids: Sequence[int], start: int = 0) -> Tensor:
        return self._forward(slot, ids[start:])

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> Tensor:
        return torch.stack([self._forward(s, [t]) for s, t in zip(slots, tokens)])

    def release(self, slot: int) -> None:
        self._past.pop(slot, None)
        self._len.pop(slot, None)

    def length(self, slot: int) -> int:
        return self._len[slot]

    @torch.inference_mode()
    def score(self, ids: Sequence[int], start: int = 1) -> Tensor:
        logits = self.model(input_ids=torch.tensor([list(ids)], device=self._device)).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1)
        tgt = torch.tensor(list(ids[1:]), device=logp.device)
        return logp.gather(1, tgt[:, None])[:, 0][start - 1:]

    def close(self) -> None:
        self._past.clear()
