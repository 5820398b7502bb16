"""Examples -> micro-batches, in an order fixed by (seed, epoch), so a resumed run sees exactly
the batches an uninterrupted one would.

- Padding goes to the longest example of the batch; grouping examples of similar length first
  (as transformers' ``LengthGroupedSampler``: sort inside random mega-batches) wastes less.
- Packing puts several short causal-LM examples into one row. Each keeps its own positions
  (``position_ids`` restart at 0), and with no attention mask transformers reads that as packed
  sequences and masks attention between them (``masking_utils.find_packed_sequence_indices``).
- Under ``torchrun`` every rank takes every ``world``-th micro-batch of the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .tasks import IGNORE, Example

MEGA = 16  # batches per length-sorted mega-batch


@dataclass
class Row:
    ids: list[int]
    target: list[int] | int
    positions: list[int] | None = None  # packed rows: position of each token in its example


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    tokens: int  # real (not padding) input tokens


def pack(examples: list[Example], max_length: int, seed: int) -> list[Row]:
    """Greedy packing in a seeded order; no example is split. The first token of every packed
    example gets no label, so no example learns from its neighbour's last token."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows, ids, target, pos = [], [], [], []
    for i in order:
        ex = examples[i]
        if ids and len(ids) + len(ex.ids) > max_length:
            rows.append(Row(ids, target, pos))
            ids, target, pos = [], [], []
        ids += ex.ids
        target += [IGNORE] + list(ex.target[1:])
        pos += list(range(len(ex.ids)))
    if ids:
        rows.append(Row(ids, target, pos))
    return rows


def collate(rows: list[Row], pad_id: int) -> Batch:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
        mask[i, :len(r.ids)] = 1
    inputs: dict[str, torch.Tensor] = {"input_ids": ids}
    if rows[0].positions is not None:
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            pos[i, :len(r.ids)] = torch.tensor(r.positions)
            pos[i, len(r.ids):] = torch.arange(width - len(r.ids))  # padding: a sequence of its own
        inputs["position_ids"] = pos
    else:
        inputs["attention_mask"] = mask
    if isinstance(rows[0].target, int):
        inputs["labels"] = torch.tensor([r.target for r in rows], dtype=torch.long)
    else:
        t_width = max(len(r.target) for r in rows)
        labels = torch.full((len(rows), t_width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, :len(r.target)] = torch.tensor(r.target)
        inputs["labels"] = labels
    return Batch(inputs, int(mask.sum()))


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This rank's share of ``batches``: every rank gets as many (repeating the first ones, as
    torch's DistributedSampler pads)."""
    if world <= 1:
        return batches
    short = -len(batches) % world
    return (batches + batches[:short])[rank::world]


def per_rank(rows: int, batch_size: int, world: int) -> int:
    """How many batches of ``rows`` one rank gets."""
    batches = -(-rows // batch_size)
    return -(-batches // world)


class Batches:
    """The micro-batches of every epoch, deterministic in (seed, epoch, rank, world)."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int = 0,
                 shuffle: bool = True, group_by_length: bool = True, packing: int | None = None,
                 rank: int = 0, world: int = 1):
        self.rows = (pack(examples, packing, seed) if packing
                     else [Row(e.ids, e.target) for e in examples])
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.shuffle, self.group = shuffle, group_by_length
        self.rank, self.world = rank, world

    def order(self, epoch: int) -> list[list[int]]:
        n, bs = len(self.rows), self.batch_size
        rng = random.Random(f"{self.seed}/{epoch}")
        idx = list(range(n))
        if self.shuffle:
            rng.shuffle(idx)
        if self.group:
            length = lambda i: len(self.rows[i].ids)
            mega = bs * MEGA
            idx = [i for s in range(0, n, mega) for i in sorted(idx[s:s + mega], key=length, reverse=True)]
        batches = [idx[s:s + bs] for s in range(0, n, bs)]
        if self.group and self.shuffle:
            rng.shuffle(batches)
        return shard(batches, self.rank, self.world)

    def __len__(self) -> int:
        return per_rank(len(self.rows), self.batch_size, self.world)

    def epoch(self, epoch: int, start: int = 0):
        """Micro-batches of ``epoch`` from index ``start`` (collated lazily)."""
        for b in self.order(epoch)[start:]:
            yield collate([self.rows[i] for i in b], self.pad_id)

    @property
    def tokens(self) -> int:
        return sum(len(r.ids) for r in self.rows)
