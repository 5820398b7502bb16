"""Preference pairs: ``{"prompt", "chosen", "rejected"}`` records (JSONL, or CSV with those
columns), read with the tuning readers so every error names ``file:line``; encoded as the model
will see them at run time (its chat template, or the plain transcript for models without one),
with labels on the answer only; and batched with each pair's chosen and rejected answers in the
same micro-batch (chosen rows first, then rejected rows in the same order).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FormatError
from ..tuning import data as tdata
from ..tuning.batches import Batch, Row, collate, per_rank, shard
from ..tuning.tasks import IGNORE, Context, Example, encode_causal, unwrap

FIELDS = tdata.SHAPES["preference"][0]
SHAPE = "preference"
Pair = tuple[Example, Example]  # (chosen, rejected)


def read(path: str | Path) -> tdata.Dataset:
    """The pairs of a .jsonl or .csv file: ``tuning.data`` reads and checks the records (so
    ``data.split`` and the registry lineage treat it like any training file); a pair whose two
    answers are the same is refused, since it teaches no preference."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in (".jsonl", ".csv"):
        raise FormatError(f"{p}: preference pairs come in .jsonl or .csv (got {p.suffix or 'no suffix'})")
    ds = tdata.read(p)
    if ds.shape != SHAPE:
        raise FormatError(f"{ds.records[0].where}: {ds.shape} records are not preference pairs; "
                          f"expected {{{', '.join(FIELDS)}}}")
    same = [r.where for r in ds.records if r.fields["chosen"].strip() == r.fields["rejected"].strip()]
    if same:
        more = f" (and {len(same) - 1} more: {', '.join(w.rsplit(':', 1)[1] for w in same[1:6])}" \
               f"{', ...' if len(same) > 6 else ''})" if len(same) > 1 else ""
        raise FormatError(f"{same[0]}: chosen and rejected are the same answer{more}; a pair with no "
                          f"difference teaches no preference: fix or remove it")
    return ds


def encode(ds: tdata.Dataset, ctx: Context) -> list[Pair]:
    """Each pair as two conversations: the prompt as the user's turn, the answer as the
    assistant's, labels on the answer tokens only."""
    ctx = dataclasses.replace(ctx, train_on="answers", split_long=False)
    return [(answer(r.fields["prompt"], r.fields["chosen"], ctx, r.where),
             answer(r.fields["prompt"], r.fields["rejected"], ctx, r.where)) for r in ds.records]


def answer(prompt: str, text: str, ctx: Context, where: str = "<answer>") -> Example:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    (ex,) = encode_causal(tdata.Record({"messages": messages}, where), "chat", ctx)
    return ex


class PairBatches:
    """Micro-batches of pairs in an order fixed by (seed, epoch), for ``tuning.loop.train``.
    ``extra`` holds per-answer numbers that travel with the batch (DPO's reference log-probs)."""

    def __init__(self, pairs: list[Pair], batch_size: int, pad_id: int, seed: int = 0, shuffle: bool = True,
                 extra: dict[str, list[tuple[float, float]]] | None = None, rank: int = 0, world: int = 1):
        self.pairs, self.batch_size, self.pad_id, self.seed = pairs, batch_size, pad_id, seed
        self.shuffle, self.extra, self.rank, self.world = shuffle, extra or {}, rank, world

    def order(self, epoch: int) -> list[list[int]]:
        idx = list(range(len(self.pairs)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(idx)
        return shard([idx[s:s + self.batch_size] for s in range(0, len(idx), self.batch_size)],
                     self.rank, self.world)

    def __len__(self) -> int:
        return per_rank(len(self.pairs), self.batch_size, self.world)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for b in self.order(epoch)[start:]:
            yield self.batch(b)

    def batch(self, idx: list[int]) -> Batch:
        rows = [Row(self.pairs[i][0].ids, self.pairs[i][0].target) for i in idx] + \
               [Row(self.pairs[i][1].ids, self.pairs[i][1].target) for i in idx]
        b = collate(rows, self.pad_id)                                # [2B, T]
        for name, values in self.extra.items():
            b.inputs[name] = torch.tensor([values[i][0] for i in idx] + [values[i][1] for i in idx])
        return b


def sequence_logps(model: nn.Module, batch: dict) -> torch.Tensor:
    """log p(answer | prompt) of every row: the sum of the log-probabilities of its labelled
    tokens. [N]"""
    labels = batch["labels"]                                         # [N, T]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")} | {"use_cache": False}
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE                           # positions that predict a label
    target = labels[:, 1:][keep[:, :-1]]                             # [K]
    rows = keep.nonzero(as_tuple=True)[0]                            # [K] row of each kept position
    if "logits_to_keep" in _signature(unwrap(model)):
        # logits only where an answer token is predicted (as tuning.tasks.causal_loss does)
        logits = model(**inputs, logits_to_keep=keep).logits        # [K, V]
    else:
        logits = model(**inputs).logits[keep]                        # [K, V]
    logp = -F.cross_entropy(logits.float(), target, reduction="none")  # [K]
    return torch.zeros(len(labels), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def _signature(model: nn.Module):
    import inspect

    return inspect.signature(model.forward).parameters


@torch.no_grad()
def score_pairs(model: nn.Module, pairs: list[Pair], batch_size: int, pad_id: int, fn) -> list[tuple[float, float]]:
    """``fn(model, batch) -> [2B]`` for every pair, in order, in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = PairBatches(pairs, batch_size, pad_id, shuffle=False)
    out: list[tuple[float, float]] = []
    for idx in batches.order(0):
        b = batches.batch(idx)
        values = fn(model, {k: v.to(device) for k, v in b.inputs.items()}).float().tolist()
        n = len(idx)
        out += list(zip(values[:n], values[n:]))
    model.train(was)
    return out
