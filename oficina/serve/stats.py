"""Summaries of the conversation log for ``oficina stats``: latency percentiles, generation
speed and cost, by model and by day."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .convlog import Entry


@dataclass
class ModelStats:
    model: str
    requests: int
    failed: int
    cached: int
    latency_p50: float | None     # seconds, request in to last byte out (answered requests)
    latency_p95: float | None
    ttft_p50: float | None        # seconds to the first token
    ttft_p95: float | None
    tokens_per_s: float | None    # generated tokens per second of decoding (after the first token;
                                  # cache hits left out: they decode nothing)
    prompt_tokens: int
    output_tokens: int
    cost: float


@dataclass
class DayCost:
    day: str                      # local date, YYYY-MM-DD
    model: str
    requests: int
    tokens: int
    cost: float


def by_model(entries: list[Entry]) -> list[ModelStats]:
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.model, []).append(e)
    return [_model(m, es) for m, es in sorted(groups.items())]


def by_day(entries: list[Entry]) -> list[DayCost]:
    rows: dict[tuple[str, str], DayCost] = {}
    for e in entries:
        day = time.strftime("%Y-%m-%d", time.localtime(e.created))
        r = rows.setdefault((day, e.model), DayCost(day, e.model, 0, 0, 0.0))
        r.requests += 1
        r.tokens += e.prompt_tokens + e.output_tokens
        r.cost += e.cost or 0.0
    return [rows[k] for k in sorted(rows)]


def _model(model: str, es: list[Entry]) -> ModelStats:
    ok = [e for e in es if not e.failed]
    latency = [e.total_s for e in ok if e.total_s is not None]
    ttft = [e.ttft_s for e in ok if e.ttft_s is not None]
    decoded = [e for e in ok if not e.cached and e.output_tokens > 1 and e.total_s is not None
               and e.ttft_s is not None and e.total_s > e.ttft_s]
    seconds = sum(e.total_s - e.ttft_s for e in decoded)
    return ModelStats(
        model=model, requests=len(es), failed=len(es) - len(ok), cached=sum(e.cached for e in es),
        latency_p50=_pct(latency, 50), latency_p95=_pct(latency, 95),
        ttft_p50=_pct(ttft, 50), ttft_p95=_pct(ttft, 95),
        tokens_per_s=sum(e.output_tokens - 1 for e in decoded) / seconds if seconds > 0 else None,
        prompt_tokens=sum(e.prompt_tokens for e in es), output_tokens=sum(e.output_tokens for e in es),
        cost=sum(e.cost or 0.0 for e in es))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
