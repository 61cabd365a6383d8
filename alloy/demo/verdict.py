"""The demo's verdict: does the best merge beat every expert alone, beyond the uncertainty?

The combined score of a leaderboard row is the mean of its task objectives. Each task score comes with
its 95% interval over that task's questions (`task/metric.lo` / `.hi`, from
`alloy.evaluation.intervals`); the tasks' question sets are independent, so the combined score's
interval is the normal one whose standard error is the root of the summed squared task errors over the
number of tasks, each task's error read off its interval's half-width.

The merge and the experts answer the same questions, so the merge beats an expert when the 95% interval
of the paired gap (merge − expert: the mean over tasks of the per-question differences, questions
resampled within each task with the same draw for both, `alloy.search.leaderboard.paired_row_gap`) lies
wholly above 0. Rows without per-question values (sweeps recorded before they were kept) fall back to
the stricter rule that the merge's interval lies wholly above the expert's. Otherwise the verdict says
what was found. The best merge is picked on the same questions, so its gap is a little optimistic: of
the confirmed merges (three in the demo) the verdict takes the luckiest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Sequence

LEVEL = 0.95


@dataclass(frozen=True)
class Combined:
    """A combined score, or a gap between two, with its interval (lo, hi)."""

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
    """The best full-rung merge's combined score against each expert's, with their intervals, and the
    paired gap (merge − expert) to each expert where both rows hold per-question values."""

    best_trial: int | None
    best: Combined | None
    experts: dict[str, Combined]
    gaps: dict[str, Combined] = field(default_factory=dict)

    def beats(self, label: str) -> bool:
        """Whether the best merge beats expert `label` beyond the uncertainty (see the module doc)."""
        if self.best is None:
            return False
        gap = self.gaps.get(label)
        return gap.lo > 0 if gap is not None else self.best.lo > self.experts[label].hi

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
            gap = self.gaps.get(label)
            if expert.score >= self.best.score:
                relation = "at or above the merge"
            elif gap is not None:
                within = "beyond" if self.beats(label) else "within"
                relation = f"the merge leads by {gap.render()} on the same questions: {within} the interval"
            else:
                relation = ("below the merge beyond both intervals" if self.beats(label)
                            else "below the merge, but the intervals overlap")
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
    from alloy.search.leaderboard import leaderboard_meta, paired_row_gap, read_leaderboard, task_metrics

    table = read_leaderboard(sweep)
    meta = leaderboard_meta(table)
    tasks = task_metrics(meta["objectives"])
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    confirmed = len(meta["rungs"])  # the rung index of confirmed rows
    last = confirmed if any(r["rung"] == confirmed for r in ok) else confirmed - 1
    rows = [r for r in ok if r["rung"] == last]
    scored = [(r, c) for r, c in ((r, combined_interval(r, tasks)) for r in rows) if c is not None]
    expert_rows = {r["reference"].removeprefix("parent:"): (r, c) for r, c in scored
                   if (r.get("reference") or "").startswith("parent:")}
    merges = sorted(((r, c) for r, c in scored if not r.get("reference")), key=lambda rc: rc[0]["trial"])
    best = max(merges, key=lambda rc: rc[1].score, default=None)
    experts = {label: c for label, (_, c) in expert_rows.items()}
    if best is None:
        return DemoVerdict(None, None, experts)
    gaps = {label: Combined(*gap) for label, (row, _) in expert_rows.items()
            if (gap := paired_row_gap(best[0], row, tasks)) is not None}
    return DemoVerdict(best[0]["trial"], best[1], experts, gaps)
