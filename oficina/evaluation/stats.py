"""Uncertainty: standard errors for means of item scores, bootstrap for corpus-level scores,
and paired differences between two models scored on the same items.

Conventions follow lm-evaluation-harness (lm_eval/api/metrics.py): ``mean_stderr`` is the sample
standard deviation (n - 1) over sqrt(n); ``bootstrap_stderr`` resamples items with replacement.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
Z95 = 1.96


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_stderr(xs: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def bootstrap_stderr(stat: Callable[[Sequence[T]], float], items: Sequence[T], iters: int,
                     seed: int = 1234) -> float | None:
    """Standard deviation of ``stat`` over ``iters`` resamples of ``items``."""
    if len(items) < 2 or iters < 2:
        return None
    rng = random.Random(seed)
    n = len(items)
    values = [stat([items[rng.randrange(n)] for _ in range(n)]) for _ in range(iters)]
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (iters - 1))


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of ``b - a`` item by item (same items, two models): tighter than
    comparing two independent intervals, because item difficulty cancels."""
    d = [y - x for x, y in zip(a, b)]
    return mean(d), mean_stderr(d)


def significant(diff: float, stderr: float | None) -> bool:
    """Whether a paired difference lies outside its 95% interval around zero."""
    if stderr is None:
        return False
    if stderr == 0:
        return diff != 0
    return abs(diff) > Z95 * stderr
