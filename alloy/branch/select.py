"""`alloy select`: an s1-style subset of verified traces, by quality, difficulty and diversity.

Reads a folder written by `alloy traces` (its `DOMAIN.jsonl` kept traces) and writes, into a new
folder, `DOMAIN.jsonl` per domain (ready for `alloy branch --data`) and `summary.json`.

1. **Quality.** A trace is dropped when it was cut at the token budget (`finish: length`), states no
   final answer, is badly formatted (a thinking block never closed, or an empty response) or was
   scored wrong. Per question the `traces_per_question` traces that think longest are kept.
2. **Difficulty.** A question is hard when a reference student fails it (every sample of the
   student's `alloy traces` run on the same problems is wrong) or when the teacher's trace is long
   (its thinking tokens reach the domain's `long_quantile`). Easy questions are dropped unless
   `keep_easy`, in which case they only fill what the hard ones leave of a budget.
3. **Diversity.** Within a domain's budget, questions are drawn across subjects: a subject is picked
   uniformly at random (seeded) among those with questions left, and its longest remaining question
   is taken, so small subjects are not crowded out by large ones.

The summary gives per domain the traces read and dropped (by reason), hard questions, the selection,
its subjects, its thinking-length distribution and the share of questions the student got right.
"""
from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from alloy.errors import AlloyError
from alloy.io.jsonl import read_jsonl_objects
from alloy.io.atomic import atomic_dir

NO_SUBJECT = "-"


@dataclass(frozen=True)
class SelectSettings:
    """Budgets and rules of the selection."""

    budgets: Mapping[str, int] = field(default_factory=dict)  # domain -> questions (default: per_domain)
    per_domain: int | None = None  # None: every question that passes
    traces_per_question: int = 1
    long_quantile: float = 0.5
    keep_easy: bool = False
    seed: int = 0

    def validate(self, domains: list[str]) -> None:
        """Raise AlloyError naming the first bad setting."""
        unknown = sorted(set(self.budgets) - set(domains))
        if unknown:
            raise AlloyError(f"--budget names domain {unknown[0]!r}, which the traces folder lacks; domains: {domains}")
        for name, value in [*((f"--budget {d}", b) for d, b in self.budgets.items()), ("--per-domain", self.per_domain),
                            ("--traces-per-question", self.traces_per_question)]:
            if value is not None and value < 1:
                raise AlloyError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= self.long_quantile <= 1.0:
            raise AlloyError(f"--long-quantile must be between 0 and 1, got {self.long_quantile}")


def quality_problem(trace: dict) -> str | None:
    """Why a trace fails the quality filter ("truncated", "no answer", "format", "incorrect"), or None."""
    if trace.get("finish") == "length":
        return "truncated"
    if trace.get("thinking_ended") is False or not str(trace.get("response", "")).strip():
        return "format"
    if trace.get("answer") in (None, ""):
        return "no answer"
    if trace.get("correct") is False:
        return "incorrect"
    return None


def _read_jsonl(path: Path) -> list[dict]:
    return [record for _, record in read_jsonl_objects(path, "a JSON object (a trace record)")]


def traces_domains(folder: Path) -> dict[str, Path]:
    """Domain -> kept-traces file of an `alloy traces` folder."""
    from alloy.branch.traces import SETTINGS_FILE

    if not (folder / SETTINGS_FILE).is_file():
        raise AlloyError(f"{folder} is not an `alloy traces` output folder (it has no {SETTINGS_FILE})")
    domains = {p.name.removesuffix(".samples.jsonl"): p for p in sorted(folder.glob("*.samples.jsonl"))}
    kept = {d: folder / f"{d}.jsonl" for d in domains if (folder / f"{d}.jsonl").is_file()}
    if not kept:
        raise AlloyError(f"traces folder {folder} holds no kept traces (no DOMAIN.jsonl next to its samples)")
    return kept


def student_shares(folder: Path, domain: str) -> dict[str, float]:
    """Problem id -> share of the student's samples that were correct, from its `alloy traces` ledger."""
    ledger = folder / f"{domain}.samples.jsonl"
    if not ledger.is_file():
        raise AlloyError(f"student folder {folder} has no {ledger.name}: run `alloy traces` with the student as "
                         f"--teacher on the same problems (with --allow-empty-domains)")
    by_problem: dict[str, list[bool]] = {}
    for row in _read_jsonl(ledger):
        if row.get("correct") is None:
            raise AlloyError(f"{ledger}: samples are not verified (correct is null); the student run needs verification")
        by_problem.setdefault(str(row["problem_id"]), []).append(bool(row["correct"]))
    return {pid: sum(v) / len(v) for pid, v in by_problem.items()}


def _quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class DomainSelection:
    """One domain's selected traces and its summary row."""

    domain: str
    traces: list[dict]
    summary: dict[str, Any]


def select_domain(domain: str, traces: list[dict], settings: SelectSettings,
                  student: Mapping[str, float] | None) -> DomainSelection:
    """Quality, difficulty and diversity for one domain (see the module docstring)."""
    dropped: dict[str, int] = {}
    by_question: dict[str, list[dict]] = {}
    for trace in traces:
        reason = quality_problem(trace)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            by_question.setdefault(str(trace["problem_id"]), []).append(trace)
    length = {q: max(t["tokens"]["thinking"] for t in ts) for q, ts in by_question.items()}
    threshold = _quantile(list(length.values()), settings.long_quantile)
    student = student or {}
    hard = {q for q in by_question if student.get(q) == 0.0 or length[q] >= threshold}
    pools = [sorted(hard)] + ([sorted(set(by_question) - hard)] if settings.keep_easy else [])
    budget = settings.budgets.get(domain, settings.per_domain)
    rng = random.Random(f"{settings.seed}:{domain}")
    chosen: list[str] = []
    for pool in pools:
        subjects: dict[str, list[str]] = {}
        for q in pool:
            subjects.setdefault(by_question[q][0].get("subject") or NO_SUBJECT, []).append(q)
        for questions in subjects.values():
            questions.sort(key=lambda q: (-length[q], q))
        while subjects and (budget is None or len(chosen) < budget):
            subject = rng.choice(sorted(subjects))
            chosen.append(subjects[subject].pop(0))
            if not subjects[subject]:
                del subjects[subject]
    selected = [t for q in chosen for t in sorted(by_question[q], key=lambda t: -t["tokens"]["thinking"])
                [:settings.traces_per_question]]
    lengths = [t["tokens"]["thinking"] for t in selected]
    known = [q for q in by_question if q in student]
    summary = {
        "traces": len(traces), "dropped": dropped, "questions": len(by_question), "hard": len(hard),
        "selected_questions": len(chosen), "selected_traces": len(selected), "budget": budget,
        "subjects": len({by_question[q][0].get("subject") or NO_SUBJECT for q in chosen}),
        "thinking_tokens": ({"min": min(lengths), "median": statistics.median(lengths),
                             "p90": _quantile(lengths, 0.9), "max": max(lengths)} if lengths else None),
        "student_right": (sum(student[q] > 0 for q in known) / len(known)) if known else None,
        "student_right_selected": (sum(student[q] > 0 for q in chosen if q in student)
                                   / max(1, sum(q in student for q in chosen))) if known else None,
    }
    return DomainSelection(domain, selected, summary)


def render_summary(summaries: Mapping[str, dict]) -> str:
    """The summary as a text table: one row per domain."""
    header = ("domain", "traces", "dropped", "questions", "hard", "selected", "subjects",
              "thinking min/median/p90/max", "student right (all / selected)")
    rows = [header]
    for domain, s in summaries.items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "0"
        t = s["thinking_tokens"]
        lengths = f"{t['min']}/{t['median']:g}/{t['p90']}/{t['max']}" if t else "-"
        right = ("-" if s["student_right"] is None else
                 f"{s['student_right']:.0%} / {s['student_right_selected']:.0%}")
        rows.append((domain, str(s["traces"]), dropped, str(s["questions"]), str(s["hard"]),
                     f"{s['selected_questions']} q, {s['selected_traces']} traces", str(s["subjects"]), lengths, right))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def select(traces_dir: str | Path, out: str | Path, settings: SelectSettings = SelectSettings(), *,
           student_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, DomainSelection]:
    """Select from an `alloy traces` folder into `out` (written whole, then renamed)."""
    from alloy.io.atomic import check_output_dir

    traces_dir, out = Path(traces_dir), Path(out)
    files = traces_domains(traces_dir)
    settings.validate(sorted(files))
    check_output_dir(out, overwrite)
    student_dir = Path(student_dir) if student_dir is not None else None
    if student_dir is not None and not student_dir.is_dir():
        raise AlloyError(f"student folder {student_dir} does not exist")
    students = {d: student_shares(student_dir, d) if student_dir else None for d in files}
    results = {d: select_domain(d, _read_jsonl(path), settings, students[d]) for d, path in files.items()}
    empty = [d for d, r in results.items() if not r.traces]
    if empty:
        raise AlloyError(f"no trace of domain {empty[0]!r} passes the selection "
                         f"({results[empty[0]].summary['dropped'] or 'no traces'} dropped); nothing to train on")
    with atomic_dir(out, overwrite=overwrite) as staging:
        for domain, result in results.items():
            (staging / f"{domain}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in result.traces))
        (staging / "summary.json").write_text(json.dumps({d: r.summary for d, r in results.items()}, indent=2))
    return results
