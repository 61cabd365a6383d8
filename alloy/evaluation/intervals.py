"""Confidence intervals for benchmark scores on small question sets.

A score is the mean over questions of a per-question value (the mean over its repeats). With one
repeat and 0/1 values it is a proportion, and `wilson` gives its interval; otherwise (repeats,
partial credit, pass@k) `bootstrap` resamples questions. `score_interval` picks between them.
Intervals are 95% by default and always lie inside [min, max] of the values' range.

Two candidates scored on the same questions are compared by `paired_gap`: the interval of the mean
per-question difference, resampling questions with the same draw for both. Questions that are hard
for one candidate are mostly hard for the other, so this interval is narrower than two separate
intervals side by side, and it is the one that says whether a lead is beyond the noise.
"""
from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Sequence

import numpy as np


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes!r}")
    z = _z(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the bound is exactly 0 or 1, which the subtraction misses by rounding
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def bootstrap(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per question), seeded."""
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    if n == 1 or min(values) == max(values):
        return float(values[0]), float(values[0])
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    lo = means[int(math.floor(tail * (resamples - 1)))]
    hi = means[int(math.ceil((1.0 - tail) * (resamples - 1)))]
    return float(lo), float(hi)


def score_interval(per_question: Sequence[float], repeats: int = 1, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Interval of a task score from its per-question values (each the mean over `repeats`).

    Wilson when every question was answered once with a 0/1 value, else a bootstrap over questions.
    """
    binary = all(v in (0.0, 1.0) for v in per_question)
    if repeats == 1 and binary:
        return wilson(sum(per_question), len(per_question), level)
    return bootstrap(per_question, level=level, seed=seed)


def paired_gap(tasks: Sequence[tuple[Sequence[float], Sequence[float]]], level: float = 0.95,
               resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The mean over tasks of each task's mean per-question gap a − b, with its percentile bootstrap
    interval: (gap, lo, hi).

    Each task is a pair (a, b) of per-question values of two candidates on the same questions, in the
    same order. Every resample draws each task's questions with replacement, the same draw for a and b.
    """
    if not tasks:
        raise ValueError("paired_gap needs at least one task")
    _z(level)  # rejects a level outside (0, 1)
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    gap = 0.0
    for a, b in tasks:
        if len(a) != len(b) or not len(a):
            raise ValueError(f"paired values need the same, non-zero number of questions; got {len(a)} and {len(b)}")
        diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        gap += float(diff.mean())
        total += diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    total /= len(tasks)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(total, [tail, 1.0 - tail])
    return gap / len(tasks), float(lo), float(hi)
