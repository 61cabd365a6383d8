"""The demo's verdict: does the best merge beat every expert alone, beyond the uncertainty?

The combined score of a leaderboard row is the mean of its task objectives. Each task score comes with
its 95% interval over that task's questions (`task/metric.lo` / `.hi`, from
`alloy.evaluation.intervals`); the tasks' question sets are independent, so the combined score's
interval is the normal one whose standard error is the root of the summed squared task errors over the
number of tasks, each task's error read off its interval's half-width. The merge beats an expert only
when its interval lies wholly above the expert's; otherwise the verdict says what was found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Sequence

LEVEL = 0.95


@dataclass(frozen=True)
class Combined:
    """A combined score with its interval (lo, hi)."""

    score: float
    lo: float
    hi: float

    def render(self) -> str:
        return f"{self.score:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def combined_interval(row: Mapping[str, float | None], tasks: Sequence[str], level: float = LEVEL) -> Combined | None:
    """The row's combined score (`alloy.search.leaderboard.combined_score`: the mean of `tasks`' scores)
    with its interval (see the module doc); a task without an interval counts as exact. None when a
    score is missing."""
    from alloy.search.leaderboard import combined_score

    score = combined_score(row, tasks)
    if score is None:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    variance = 0.0
    for metric in tasks:
        lo, hi = row.get(f"{metric}.lo"), row.get(f"{metric}.hi")
        if lo is not None and hi is not None:
            variance += ((float(hi) - float(lo)) / (2 * z)) ** 2
    half = z * math.sqrt(variance) / len(tasks)
    return Combined(score, max(0.0, score - half), min(1.0, score + half))


@dataclass
class DemoVerdict:
    """The best full-rung merge's combined score against each expert's, with their intervals."""

    best_trial: int | None
    best: Combined | None
    experts: dict[str, Combined]

    def beats(self, label: str) -> bool:
        """Whether the best merge's interval lies wholly above expert `label`'s."""
        return self.best is not None and self.best.lo > self.experts[label].hi

    @property
    def beats_every_expert(self) -> bool:
        return self.best is not None and bool(self.experts) and all(self.beats(label) for label in self.experts)

    def render(self) -> str:
        if self.best is None:
            return "no merge finished at the full rung, so there is nothing to compare"
        if not self.experts:
            return (f"best merge (trial {self.best_trial}): combined score {self.best.render()}\n"
                    "no expert alone was scored at that rung, so there is nothing to compare it with")
        lines = [f"best merge (trial {self.best_trial}): combined score {self.best.render()}"]
        for label, expert in sorted(self.experts.items()):
            if self.beats(label):
                relation = "below the merge beyond both intervals"
            elif expert.score >= self.best.score:
                relation = "at or above the merge"
            else:
                relation = "below the merge, but the intervals overlap"
            lines.append(f"  {label:>8} expert alone: {expert.render()}  ({relation})")
        if self.beats_every_expert:
            lines.append("verdict: the best merge beats every expert on the combined score, beyond the 95% intervals")
        else:
            lines.append("verdict: the best merge does NOT beat every expert beyond the 95% intervals")
        return "\n".join(lines)


def verdict(sweep: str | Path) -> DemoVerdict:
    """Compare the best merge with each expert alone on the combined score (ties: lower trial), on the
    confirmed rows (the sweep's best merges and the experts re-scored on more questions) where the
    sweep has them, else on the last rung's."""
    from alloy.search.leaderboard import leaderboard_meta, read_leaderboard, task_metrics

    table = read_leaderboard(sweep)
    meta = leaderboard_meta(table)
    tasks = task_metrics(meta["objectives"])
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    confirmed = len(meta["rungs"])  # the rung index of confirmed rows
    last = confirmed if any(r["rung"] == confirmed for r in ok) else confirmed - 1
    rows = [r for r in ok if r["rung"] == last]
    scored = [(r, c) for r, c in ((r, combined_interval(r, tasks)) for r in rows) if c is not None]
    experts = {r["reference"].removeprefix("parent:"): c for r, c in scored
               if (r.get("reference") or "").startswith("parent:")}
    merges = sorted(((r, c) for r, c in scored if not r.get("reference")), key=lambda rc: rc[0]["trial"])
    best = max(merges, key=lambda rc: rc[1].score, default=None)
    return DemoVerdict(best[0]["trial"] if best else None, best[1] if best else None, experts)
