"""Token files -> micro-batches for the shared loop (``tuning.loop.train`` reads ``len()`` and
``epoch(epoch, start)``, as it does ``tuning.batches.Batches``).

The token stream is cut into non-overlapping blocks of ``max_length`` tokens; a block may span
the end of one document and the start of the next (the end-of-text token between them tells
the model), as in GPT-2 and nanoGPT. Each epoch visits the blocks in an order fixed by
(seed, epoch), and the objective's random masks by (seed, epoch, batch), so a resumed run sees
exactly what an uninterrupted one would. Only the blocks of one batch are read from the memory
map at a time.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..tuning.batches import Batch
from .objectives import Objective
from .tokenizer import Special


class BlockBatches:
    def __init__(self, tokens: np.ndarray, length: int, batch_size: int, objective: Objective,
                 settings: Any, special: Special, seed: int = 0, shuffle: bool = True,
                 max_blocks: int | None = None, rank: int = 0, world: int = 1):
        self.tokens, self.length, self.batch_size = tokens, length, batch_size
        self.objective, self.settings, self.special = objective, settings, special
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.blocks = len(tokens) // length
        if max_blocks is not None:
            self.blocks = min(self.blocks, max_blocks)

    def order(self, epoch: int) -> list[list[int]]:
        idx = list(range(self.blocks))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(idx)
        batches = [idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        if self.world > 1:  # every rank as many batches (repeating the first, as DistributedSampler pads)
            short = -len(batches) % self.world
            batches = (batches + batches[:short])[self.rank::self.world]
        return batches

    def __len__(self) -> int:
        n = -(-self.blocks // self.batch_size)
        return -(-n // self.world)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for i, b in enumerate(self.order(epoch)[start:], start):
            blocks = np.stack([self.tokens[j * self.length:(j + 1) * self.length] for j in b])  # [B, L]
            gen = torch.Generator().manual_seed(_seed(self.seed, epoch, i, self.rank))
            inputs = self.objective.collate(blocks, self.settings, self.special, gen)
            yield Batch(inputs, int(blocks.size))

    @property
    def token_count(self) -> int:
        return self.blocks * self.length


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")
