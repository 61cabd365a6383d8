"""The confirmation stage: re-score the best candidates of a finished sweep on more questions, and decide
the winner on those scores.

A sweep's best trial at its last rung is often a lucky draw: on a few dozen questions one question
moves a score by several points, and the more trials a sweep runs, the luckier its luckiest one. With
`search.confirm: {top: K, samples: N, repeats: R}`, once the search ends the K best candidates at the
last rung (the Pareto front first, then by the first objective) and every parent that was a starting
point are evaluated on N questions (N above the last rung; the tasks' sizes cap it). When the
evaluation samples its answers, every question gets R new answers (default: as many as the search
drew), new draws at repeat indices the search never used, so that no confirmed score reuses the draws
that made a candidate look lucky; greedy answers are the same on every draw, so then the search's own
answers are reused and only the new questions are new. Each candidate gets a row at the `confirmed`
rung (`rung == len(evaluation.rungs)`; `n_samples` the questions scored), and:

- `best` marks the Pareto front of the confirmed rows (a parent can win: then no merge beat it);
- `clear_lead` (on best rows that are not a parent) says whether, against every confirmed parent, the
  winner is better beyond the uncertainty on at least one score objective. Both were scored on the same
  questions, so where both rows hold their per-question values the test is paired: the 95% interval of
  the mean per-question gap (`alloy.evaluation.intervals.paired_gap`) lies wholly above 0 (below, for a
  minimized objective). Without them (a runner that gives only intervals) the winner's interval must lie
  wholly above (below) the parent's. `alloy board` marks a winner without a clear lead `~`.

The confirmation runs in the driver after Tune finishes, with the same runner and result cache as the
trials, so a resumed sweep re-runs it from the cache.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from alloy.logs import say
from alloy.search.cache import ResultCache
from alloy.search.leaderboard import FILENAME, Leaderboard, paired_row_gap, pareto_mask, result_columns
from alloy.search.records import SweepRecords
from alloy.search.runner import make_runner
from alloy.search.space import SearchSpace, is_token_metric, samples_answers


def confirmation_rung(space: SearchSpace) -> int:
    """The rung index of confirmed rows: one past the last search rung."""
    return len(space.evaluation.rungs)


def confirmation_repeats(space: SearchSpace) -> range | None:
    """The repeat indices the confirmation answers each question at: `search.confirm.repeats` new ones
    after the search's when the evaluation samples, else None (the search's own, greedy, answers)."""
    if not samples_answers(space.evaluation):
        return None
    first = space.evaluation.repeats
    return range(first, first + space.search.confirm_repeats)


def pick_candidates(space: SearchSpace, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows to confirm: the `search.confirm.top` best `ok` rows at the last rung (front first, then
    by the first objective; one per recipe), then the parents among the starting points."""
    last = len(space.evaluation.rungs) - 1
    full = [r for r in rows if r["status"] == "ok" and r["rung"] == last]
    first = space.objectives[0]
    sign = -1.0 if first.direction == "maximize" else 1.0

    def key(row: Mapping[str, Any]) -> tuple:
        value = row.get(first.metric)
        missing = value is None or math.isnan(value)
        return (not row["pareto"], missing, 0.0 if missing else sign * value, row["trial"])

    picked, seen = [], set()
    for row in sorted(full, key=key):
        if row["recipe_hash"] not in seen and not (row.get("reference") or "").startswith("parent:"):
            picked.append(row)
            seen.add(row["recipe_hash"])
        if len(picked) == space.search.confirm_top:
            break
    parents = [r for r in full if (r.get("reference") or "").startswith("parent:") and r["recipe_hash"] not in seen]
    return picked + parents


def confirm_sweep(space: SearchSpace, out: str | Path, records: SweepRecords) -> list[dict]:
    """Run the confirmation stage of the sweep in `out` (a no-op without `search.confirm`); return the
    confirmed rows, with `best` and `clear_lead` set, after storing them in the sweep's `records` (the
    study) and regenerating the leaderboard from them."""
    if not space.search.confirm_top:
        return []
    out = Path(out)
    board = Leaderboard.from_records(out / FILENAME, records)
    rows = board.rows()
    candidates = pick_candidates(space, rows)
    if not candidates:
        return []
    n, repeats = space.search.confirm_samples, confirmation_repeats(space)
    cache = ResultCache(out / "cache")
    stored = {r["trial"]: r for r in rows if r["rung"] == confirmation_rung(space)}
    if all(_same_scores(space, stored.get(r["trial"]), cache.get(r["recipe_hash"], n, repeats)) for r in candidates):
        return [stored[r["trial"]] for r in candidates]  # a resumed sweep that had confirmed: kept as it is
    draws = "" if repeats is None else f", {len(repeats)} new answers each"
    say(f"confirming {len(candidates)} candidates on {n} samples{draws}: trials "
        f"{', '.join(str(r['trial']) for r in candidates)}")
    runner = make_runner(space, out)

    def score(row: Mapping[str, Any]) -> tuple[dict, bool]:
        metrics = cache.get(row["recipe_hash"], n, repeats)
        if metrics is not None:
            return metrics, True
        metrics = dict(runner.run(json.loads(row["recipe"]), row["recipe_hash"], n, repeats))
        cache.put(row["recipe_hash"], n, metrics, repeats)
        return metrics, False

    with ThreadPoolExecutor(max_workers=max(1, space.search.concurrency)) as pool:
        results = list(pool.map(score, candidates))
    if repeats is None:  # new draws are new answers even on the questions the search saw
        _warn_without_new_questions(space, [metrics for metrics, _ in results])
    rung = confirmation_rung(space)
    confirmed = []
    for row, (metrics, cached) in zip(candidates, results):
        scores = result_columns(space.metrics, metrics)
        new = {k: v for k, v in row.items() if k not in (*scores, "latest", "pareto", "best", "clear_lead")}
        new.update(rung=rung, n_samples=questions_scored(metrics, n), cached=cached, status="ok", error=None,
                   finished_at=time.time())
        new.update(scores)
        confirmed.append(new)
    decide_best(space, confirmed)
    for row in confirmed:
        records.put(row)
    Leaderboard.from_records(out / FILENAME, records).write()
    for row in confirmed:
        if row["best"]:
            verdict = "" if row["clear_lead"] is not False else " (its lead over some parent is within the intervals)"
            scores = " ".join(f"{m}={row[m]:.4g}" for m in space.metrics if row.get(m) is not None)
            print(f"best after confirmation: trial {row['trial']} [{row['recipe_hash'][:8]}] {scores}{verdict}",
                  flush=True)
    return confirmed


def question_counts(metrics: Mapping[str, Any]) -> dict[str, int]:
    """Task → the questions a result scored ("task/n_samples"; empty from a runner that does not count them)."""
    return {k.removesuffix("/n_samples"): int(v) for k, v in metrics.items() if k.endswith("/n_samples")}


def questions_scored(metrics: Mapping[str, Any], asked: int) -> int:
    """The questions a result scored: its largest task's count (`asked` was capped by the tasks'
    sizes), or `asked` from a runner that does not count them."""
    return max(question_counts(metrics).values(), default=asked)


def _same_scores(space: SearchSpace, row: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None) -> bool:
    """Whether a stored confirmed row holds the scores of this confirmation's cached result (NaN equal NaN)."""
    if row is None or metrics is None:
        return False
    pairs = [(_float(row.get(m)), _float(metrics.get(m))) for m in space.metrics]
    return all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in pairs)


def _warn_without_new_questions(space: SearchSpace, results: Sequence[Mapping[str, Any]]) -> None:
    """Say so when no task had questions beyond the last rung (its "task/n_samples" are all at most the
    last rung): then the confirmation re-scored the answers the search had already seen."""
    last = space.evaluation.rungs[-1]
    counts = {task: n for metrics in results for task, n in question_counts(metrics).items()}
    if counts and max(counts.values()) <= last:
        sizes = ", ".join(f"{task} {n}" for task, n in sorted(counts.items()))
        say(f"warning: search.confirm.samples asked for {space.search.confirm_samples} questions, but the tasks hold "
            f"only {sizes}, all already scored at the last rung ({last}); the confirmed scores are the search's "
            f"own. Put the last rung below the tasks' sizes so that the confirmation sees new questions")


def decide_best(space: SearchSpace, rows: Sequence[dict]) -> None:
    """Set `best` (the Pareto front of `rows`) and `clear_lead` (see the module docstring) on each row."""
    points = [[_float(r.get(m)) for m in space.metrics] for r in rows]
    parents = [r for r in rows if (r.get("reference") or "").startswith("parent:")]
    for row, on_front in zip(rows, pareto_mask(points, space.directions)):
        row["best"] = on_front
        row["clear_lead"] = None
        if on_front and row not in parents and parents:
            row["clear_lead"] = all(leads_beyond_intervals(space, row, p) for p in parents)


def leads_beyond_intervals(space: SearchSpace, winner: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether `winner` beats `other` on some score objective beyond the 95% uncertainty: the paired
    interval of their per-question gap, or without per-question values their two intervals (see the
    module doc)."""
    for o in space.objectives:
        if is_token_metric(o.metric):
            continue
        gap = paired_row_gap(winner, other, [o.metric])
        if gap is not None:
            if (o.direction == "maximize" and gap[1] > 0) or (o.direction == "minimize" and gap[2] < 0):
                return True
            continue
        w_lo, w_hi = winner.get(f"{o.metric}.lo"), winner.get(f"{o.metric}.hi")
        p_lo, p_hi = other.get(f"{o.metric}.lo"), other.get(f"{o.metric}.hi")
        if None in (w_lo, w_hi, p_lo, p_hi):
            continue
        if (o.direction == "maximize" and w_lo > p_hi) or (o.direction == "minimize" and w_hi < p_lo):
            return True
    return False


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
