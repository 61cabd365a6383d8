"""pass@k and avg@n: scores of a task answered n times per question.

`pass_at_k(n, c, k)` is the unbiased estimator of Chen et al. (2021, the Codex paper), the one
LiveCodeBench and reasoning papers report: the probability that at least one of k samples drawn
without replacement from the n, of which c are correct, is correct, 1 - C(n-c, k) / C(n, k).
A task's pass@k is its mean over questions; avg@n is the mean correctness over all n samples of
every question (equal to pass@1). Both are reported for k in PASS_KS with k <= n, and
`repeat_metric_error` checks an objective such as `aime24/avg@8` or `livecodebench/pass@5`
against the number of repeats.
"""
from __future__ import annotations

import re
from typing import Sequence

PASS_KS: tuple[int, ...] = (1, 5, 10)
_REPEAT_METRIC = re.compile(r"(pass|avg)@(\d+)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with c correct among n samples (1 <= k <= n)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) as a product, without large integers
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_scores(correct: Sequence[bool], ks: Sequence[int] = PASS_KS) -> dict[str, float]:
    """`pass@k` of one question's samples for every k in `ks` with k <= n."""
    n, c = len(correct), sum(bool(value) for value in correct)
    return {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}


def is_repeat_metric(metric: str) -> bool:
    """Whether `metric` (the part after `task/`) is a pass@k or avg@n score."""
    return _REPEAT_METRIC.fullmatch(metric) is not None


def repeat_metric_error(metric: str, repeats: int) -> str | None:
    """Why `metric` (the part after `task/`) cannot be reported with `repeats` samples per
    question, or None: pass@k needs k in PASS_KS and k <= repeats, avg@n needs n == repeats."""
    match = _REPEAT_METRIC.fullmatch(metric)
    if match is None:
        return None
    kind, count = match.group(1), int(match.group(2))
    if kind == "avg" and count != repeats:
        return f"avg@{count} needs evaluation.repeats: {count} (it is {repeats}); use avg@{repeats}"
    if kind == "pass" and count not in PASS_KS:
        return f"pass@{count} is not reported; use pass@k for k in {list(PASS_KS)}"
    if kind == "pass" and count > repeats:
        return f"pass@{count} needs at least {count} samples per question (evaluation.repeats: {repeats})"
    return None
