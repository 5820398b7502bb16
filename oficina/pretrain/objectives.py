"""What a family learns from raw text: one row per objective. An objective turns blocks of
token ids into a batch (``collate``), says which loss trains it (the tuning tasks' losses: the
loop is shared) and checks, before any compute, that the tokenizer has what it needs.

- next-token (decoder-only): predict every token from the ones before it (GPT, Radford et al. 2018).
- masked-token (encoder-only): 15% of tokens are chosen; of those 80% become <mask>, 10% a
  random token, 10% stay; the model predicts the originals (BERT, Devlin et al. 2019, §3.1).
- span-corruption (encoder-decoder): random spans covering 15% of the tokens, 3 tokens long on
  average, are each replaced by one sentinel in the input; the target lists each sentinel
  followed by the tokens it hid (T5, Raffel et al. 2020, §3.1.4 and t5.data.preprocessors
  ``random_spans_noise_mask``).

Masks are drawn from a generator seeded by (seed, epoch, batch), so a resumed run and the
validation set see the same masks every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from ..errors import InvalidOptions
from ..tuning.tasks import IGNORE, causal_loss, model_loss
from .tokenizer import Special


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    config: type                                                   # its settings dataclass
    collate: Callable[[np.ndarray, Any, Special, torch.Generator], dict[str, torch.Tensor]]
    loss: Callable[[torch.nn.Module, dict], torch.Tensor]          # mean over predicted tokens
    targets: Callable[[dict], int]                                 # how many tokens a batch predicts
    check: Callable[[Any, Special, int], None] = lambda cfg, sp, length: None


OBJECTIVES: dict[str, Objective] = {}


def register(o: Objective) -> Objective:
    OBJECTIVES[o.name] = o
    return o


def objective(name: str) -> Objective:
    return OBJECTIVES[name]


def _ids(blocks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(blocks, dtype=np.int64))


# -- next token -----------------------------------------------------------------------------------
@dataclass
class NextTokenConfig:
    pass


def next_token(blocks: np.ndarray, cfg: NextTokenConfig, sp: Special, gen: torch.Generator) -> dict:
    ids = _ids(blocks)                           # [B, L]; the model shifts labels by one itself
    return {"input_ids": ids, "labels": ids.clone()}


register(Objective(
    name="next-token", summary="predict each token from the ones before it", config=NextTokenConfig,
    collate=next_token, loss=causal_loss, targets=lambda b: int((b["labels"][:, 1:] != IGNORE).sum()),
))


# -- masked tokens --------------------------------------------------------------------------------
@dataclass
class MaskedConfig:
    mask_probability: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.mask_probability < 1:
            raise InvalidOptions(f"objective.mask_probability must be in (0, 1) (got {self.mask_probability})")


def masked(blocks: np.ndarray, cfg: MaskedConfig, sp: Special, gen: torch.Generator) -> dict:
    ids = _ids(blocks)                                                     # [B, L]
    special = torch.isin(ids, torch.tensor(sorted(sp.all), dtype=torch.long))
    chosen = (torch.rand(ids.shape, generator=gen) < cfg.mask_probability) & ~special
    # every row predicts at least one token (a row with none would make the mean loss 0/0)
    scores = torch.rand(ids.shape, generator=gen).masked_fill(special, -1)
    first = torch.zeros_like(chosen).scatter_(1, scores.argmax(1, keepdim=True), True) & ~special
    chosen |= first & ~chosen.any(1, keepdim=True)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    r = torch.rand(ids.shape, generator=gen)
    inputs = ids.masked_fill(chosen & (r < 0.8), sp.mask)
    random_ids = torch.randint(0, sp.vocab, ids.shape, generator=gen)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}


def _check_masked(cfg: MaskedConfig, sp: Special, length: int) -> None:
    if sp.mask is None:
        raise InvalidOptions("tokenizer: masked-token pretraining needs a mask token and this tokenizer "
                             "has none (oficina tokenizer train adds <mask>)")


register(Objective(
    name="masked-token", summary="predict the 15% of tokens that were masked or swapped",
    config=MaskedConfig, collate=masked, loss=model_loss,
    targets=lambda b: int((b["labels"] != IGNORE).sum()), check=_check_masked,
))


# -- span corruption ------------------------------------------------------------------------------
@dataclass
class SpanConfig:
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.noise_density < 1:
            raise InvalidOptions(f"objective.noise_density must be in (0, 1) (got {self.noise_density})")
        if self.mean_span_length < 1:
            raise InvalidOptions(f"objective.mean_span_length must be at least 1 (got {self.mean_span_length})")

    def spans(self, length: int) -> tuple[int, int]:
        """(noise tokens, spans) for a block of ``length`` tokens, as T5 rounds them."""
        noise = min(max(round(length * self.noise_density), 1), length - 1)
        return noise, max(1, min(round(noise / self.mean_span_length), noise, length - noise))


def _segments(n: int, parts: int, gen: torch.Generator) -> list[int]:
    """A random split of ``n`` items into ``parts`` non-empty runs; their lengths."""
    cuts = (torch.randperm(n - 1, generator=gen)[:parts - 1] + 1).tolist() if parts > 1 else []
    edges = [0, *sorted(cuts), n]
    return [b - a for a, b in pairwise(edges)]


def span_corruption(blocks: np.ndarray, cfg: SpanConfig, sp: Special, gen: torch.Generator) -> dict:
    sources, targets = [], []
    for row in np.asarray(blocks, dtype=np.int64).tolist():
        noise, spans = cfg.spans(len(row))
        keep_runs = _segments(len(row) - noise, spans, gen)
        noise_runs = _segments(noise, spans, gen)
        src, tgt, pos = [], [], 0
        for k, (keep, drop) in enumerate(zip(keep_runs, noise_runs)):  # T5 starts with kept text
            src += row[pos:pos + keep] + [sp.sentinels[k]]
            tgt += [sp.sentinels[k]] + row[pos + keep:pos + keep + drop]
            pos += keep + drop
        sources.append(src + [sp.eos])
        targets.append(tgt + [sp.eos])
    width, t_width = max(map(len, sources)), max(map(len, targets))
    ids = torch.full((len(sources), width), sp.pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(targets), t_width), IGNORE, dtype=torch.long)
    for i, (s, t) in enumerate(zip(sources, targets)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        labels[i, :len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _check_span(cfg: SpanConfig, sp: Special, length: int) -> None:
    if sp.eos is None:
        raise InvalidOptions("tokenizer: span corruption ends inputs and targets with an end-of-text "
                             "token and this tokenizer has none")
    _, spans = cfg.spans(length)
    if spans > len(sp.sentinels):
        raise InvalidOptions(f"objective.mean_span_length: span corruption of {length}-token blocks makes "
                             f"{spans} spans, each needing its own sentinel token, but the tokenizer has "
                             f"{len(sp.sentinels)} (<extra_id_0>, ...); raise mean_span_length, lower "
                             f"noise_density or train.max_length, or train a tokenizer with --sentinels {spans}")


register(Objective(
    name="span-corruption", summary="rebuild the spans hidden behind sentinel tokens",
    config=SpanConfig, collate=span_corruption, loss=model_loss,
    targets=lambda b: int((b["labels"] != IGNORE).sum()), check=_check_span,
))
