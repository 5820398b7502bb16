"""Sampling: turn one step's logits into a token id, with Ollama's parameters (``Options``).

The chain and its order are llama.cpp's default (common/common.h ``samplers``):

    penalties -> top_k -> typical_p -> top_p -> min_p -> temperature -> dist

Each step is one small function on 1-D float32 logits ``[V]`` that returns new logits, with
``-inf`` for the tokens it removes. Probabilities used by typical/top_p/min_p are the softmax of
the logits as they stand at that point of the chain, before temperature (llama.cpp applies
temperature after the truncation samplers). Each step follows the matching
``llama_sampler_*_apply`` in llama.cpp src/llama-sampling.cpp, with ``min_keep`` = 1.

For speed at large vocabularies (Gemma: 262144) ``process`` and ``Sampler`` run the steps after
top_k on the k survivors only, as llama.cpp does by shrinking its candidate array.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import Tensor

from ..options import Options

NEG_INF = float("-inf")


def _f32(logits: Tensor) -> Tensor:
    if logits.dim() != 1:
        raise ValueError(f"expected 1-D logits [V], got shape {tuple(logits.shape)}")
    return logits.to(torch.float32)


def _window(history: Sequence[int] | Tensor, opts: Options) -> Tensor | None:
    """The last ``repeat_last_n`` token ids of ``history`` as a long tensor (None when off).
    -1 means the whole context, ``num_ctx`` (Ollama docs/modelfile.md; llama.cpp ``penalty_last_n``)."""
    n = opts.num_ctx if opts.repeat_last_n == -1 else opts.repeat_last_n
    if n <= 0 or len(history) == 0:
        return None
    tail = history[-n:]
    if isinstance(tail, Tensor):
        return tail.reshape(-1).long()
    return torch.tensor(list(tail), dtype=torch.long)


# -- 1. penalties --------------------------------------------------------------------------------

def apply_penalties(logits: Tensor, history: Sequence[int] | Tensor, opts: Options) -> Tensor:
    """Repeat, frequency and presence penalties over the last ``repeat_last_n`` tokens.

    As llama.cpp ``llama_sampler_penalties_apply``: a seen token's logit is divided by
    ``repeat_penalty`` when positive and multiplied when not (CTRL, Keskar et al. 2019, only
    divides, which would make negative logits *more* likely), then
    ``count * frequency_penalty + presence_penalty`` is subtracted (OpenAI's definition).
    Work is over the <= repeat_last_n distinct history tokens, never the vocabulary.
    Ids outside ``[0, V)`` in the history are ignored.
    """
    x = _f32(logits)
    off = opts.repeat_penalty == 1.0 and opts.frequency_penalty == 0.0 and opts.presence_penalty == 0.0
    window = None if off else _window(history, opts)
    if window is None:
        return x.clone()
    window = window.to(x.device)
    window = window[(window >= 0) & (window < x.numel())]
    ids, counts = torch.unique(window, return_counts=True)                     # [U], [U]
    seen = x[ids]
    seen = torch.where(seen > 0, seen / opts.repeat_penalty, seen * opts.repeat_penalty)
    seen = seen - counts.to(seen.dtype) * opts.frequency_penalty - opts.presence_penalty
    return x.index_put((ids,), seen)


# -- 2. truncation -------------------------------------------------------------------------------

def top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits (k <= 0 or k >= V: off). Ties at the boundary keep exactly k,
    in ``torch.topk``'s order."""
    x = _f32(logits)
    if k <= 0 or k >= x.numel():
        return x.clone()
    vals, ids = torch.topk(x, k)
    return torch.full_like(x, NEG_INF).scatter(0, ids, vals)


# Sorting all 262144 ids of a Gemma vocabulary costs ~20 ms on 2 CPU cores. Large inputs are
# first bucketed by score, weighted by probability (the idea of llama.cpp's bucket sort in
# llama_sampler_top_k_impl); only the buckets up to where the mass passes p get sorted.
_BUCKETS, _PER_NAT, _SORT_ALL_BELOW = 1024, 16.0, 4096


def _ascending(score: Tensor, probs: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Ids in ascending ``score`` order (stable) with their cumulative probability, at least up
    to where it passes p: the prefix that top_p and typical_p cut. The bucketed path returns
    all ids scoring below a threshold, so it is exactly a prefix of the full sort."""
    if score.numel() > _SORT_ALL_BELOW:
        rel = (score - score.min()) * _PER_NAT                   # [V] >= 0, inf for removed
        bucket = rel.clamp(max=_BUCKETS - 1).long()
        mass = torch.zeros(_BUCKETS, dtype=probs.dtype, device=probs.device)
        mass = mass.scatter_add_(0, bucket, probs).cumsum(0)   # [B]
        last = int((mass <= p).sum()) + 1                       # one bucket of rounding margin
        if last < _BUCKETS - 1:
            sub = (bucket <= last).nonzero().squeeze(1)
            order = sub[torch.argsort(score[sub], stable=True)]
            cum = probs[order].cumsum(0)
            if cum[-1] > p:
                return order, cum
    order = torch.argsort(score, stable=True)
    return order, probs[order].cumsum(0)


def _keep(x: Tensor, ids: Tensor) -> Tensor:
    return torch.full_like(x, NEG_INF).index_put((ids,), x[ids])


def typical_p(logits: Tensor, p: float) -> Tensor:
    """Locally typical sampling (Meister et al. 2022, arXiv:2202.00666, eq. 7), as llama.cpp
    ``llama_sampler_typical_apply``: rank tokens by ``|-log p_i - H|`` (H the entropy), keep the
    shortest such prefix whose mass is strictly greater than p (llama.cpp's ``cum_sum > p``;
    top_p uses ``>=``), at least one token. p >= 1: off."""
    x = _f32(logits)
    if p >= 1.0:
        return x.clone()
    logp = torch.log_softmax(x, 0)
    probs = logp.exp()
    entropy = torch.special.entr(probs).sum()                   # entr(0) = 0 for removed tokens
    order, cum = _ascending((-logp - entropy).abs(), probs, p)  # removed tokens: inf, last
    return _keep(x, order[: min(int((cum <= p).sum()) + 1, order.numel())])


def top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest most-likely-first prefix whose
    probability adds up to >= p (llama.cpp ``llama_sampler_top_p_apply``), at least one token;
    ties in index order. p >= 1: off."""
    x = _f32(logits)
    if p >= 1.0:
        return x.clone()
    order, cum = _ascending(-x, torch.softmax(x, 0), p)
    return _keep(x, order[: min(int((cum < p).sum()) + 1, order.numel())])


def min_p(logits: Tensor, p: float) -> Tensor:
    """Drop tokens less likely than ``p x`` the most likely one (Nguyen et al. 2024,
    arXiv:2407.01082). In logit space, as llama.cpp ``llama_sampler_min_p_apply``:
    keep ``logit >= max_logit + log(p)``. p <= 0: off."""
    x = _f32(logits)
    if p <= 0.0:
        return x.clone()
    return x.masked_fill(x < x.max() + math.log(p), NEG_INF)


# -- 3. temperature ------------------------------------------------------------------------------

def temperature(logits: Tensor, t: float) -> Tensor:
    """Divide logits by t. t <= 0 is greedy (llama.cpp ``llama_sampler_temp_impl``): only the
    first maximum keeps its logit, every other token gets -inf."""
    x = _f32(logits)
    if t > 0:
        return x / t
    best = int(torch.argmax(x))                                 # first maximum: lowest id
    out = torch.full_like(x, NEG_INF)
    out[best] = x[best]
    return out


# -- the chain -----------------------------------------------------------------------------------

def _candidates(x: Tensor, opts: Options) -> tuple[Tensor | None, Tensor]:
    """Run top_k .. temperature on penalised logits ``x`` [V] (temperature > 0).
    Returns (ids [k] or None meaning all V, final logits of those ids)."""
    ids = None
    if 0 < opts.top_k < x.numel():
        x, ids = torch.topk(x, opts.top_k)                      # [k] survivors only
    if opts.typical_p < 1.0:
        x = typical_p(x, opts.typical_p)
    if opts.top_p < 1.0:
        x = top_p(x, opts.top_p)
    if opts.min_p > 0.0:
        x = min_p(x, opts.min_p)
    return ids, temperature(x, opts.temperature)


def process(logits: Tensor, history: Sequence[int] | Tensor, opts: Options) -> Tensor:
    """The whole chain up to and including temperature: final logits [V], -inf where removed.
    Temperature 0 keeps only the argmax of the penalised logits, before any truncation, as
    Ollama's sampler does (sample/samplers.go: ``if s.temperature == 0 { return greedy(tokens) }``).
    llama.cpp would take the argmax of what is left after the chain; the two differ only when
    typical_p, the one step that can drop the most likely token, is on."""
    x = apply_penalties(logits, history, opts)
    if opts.temperature <= 0:
        return temperature(x, 0.0)
    ids, vals = _candidates(x, opts)
    if ids is None:
        return vals
    return torch.full_like(x, NEG_INF).scatter(0, ids, vals)


def distribution(logits: Tensor, history: Sequence[int] | Tensor, opts: Options) -> Tensor:
    """Final probabilities [V] (float32, sums to 1); one-hot on the argmax for temperature 0."""
    return torch.softmax(process(logits, history, opts), 0)


def _seed(seed: int) -> int:
    """Ollama's seed -1 means a different run each time: draw 63 fresh bits from the OS."""
    return seed if seed >= 0 else int.from_bytes(os.urandom(8), "little") >> 1


class Sampler:
    """Draws token ids from ``distribution()`` with its own ``torch.Generator``, so the same
    seed, options and logits give the same sequence on the same device. Each sampled token
    uses exactly one uniform draw (inverse CDF); greedy (temperature 0) uses none.
    ``self.seed`` is the seed actually used (useful to replay a seed -1 run)."""

    def __init__(self, opts: Options, device: str | torch.device = "cpu") -> None:
        self.opts = opts
        self.seed = _seed(opts.seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    def __call__(self, logits: Tensor, history: Sequence[int] | Tensor) -> int:
        x = apply_penalties(logits, history, self.opts)
        if self.opts.temperature <= 0:
            return int(torch.argmax(x))
        ids, vals = _candidates(x, self.opts)
        probs = torch.softmax(vals, 0)
        keep = (probs > 0).nonzero().squeeze(1)                 # [n] surviving positions
        cdf = probs[keep].double().cumsum(0)
        u = torch.rand((), generator=self.generator, device=self.generator.device,
                       dtype=torch.float64).to(cdf.device)
        i = min(int(torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True)), keep.numel() - 1)
        pos = keep[i]
        return int(pos if ids is None else ids[pos])
