"""`alloy traces`: sample a teacher over problems and keep the traces each task's own scorer verifies.

For every domain (a problem file in one of `alloy.branch.problems.FORMATS`), each problem is sampled
`k` times (rejection sampling) and every sample is scored by the problem's task scorer (LiveCodeBench
code in alloy's sandbox). Outputs in `OUT/`:

- `DOMAIN.samples.jsonl`: every sample, one line each, appended (and flushed to disk) as soon as its
  problem's k samples are scored. It is the run's ledger: a killed run resumes from it, regenerating
  only the problems it does not hold complete.
- `DOMAIN.jsonl`: the kept traces (correct ones; every sample with `verify=False`), written whole at
  the end of the domain: `{id, problem_id, domain, subject, prompt, response, answer, target, correct,
  finish, thinking_ended, tokens: {output, thinking, answer}}`, ready for `alloy branch --data`
  (`prompt` is the user message, `response` the teacher's continuation after the chat template's
  generation prompt; `tokens.answer` counts the tokens outside the thinking block).
- `DOMAIN.teacher.safetensors` (optional, `logits_k`): the teacher's top-k logits at every response
  token of the kept traces, in the format `alloy branch --teacher-logits` reads; this needs the
  backbone, whose tokenizer must equal the teacher's.
- `traces.json`: the settings the folder was started with; resuming with others is refused.

Every input is checked before the teacher is loaded. A domain with no correct trace after rejection is
an error once sampling ends (its samples stay in the ledger).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from alloy.branch.problems import Problem, read_problems, score_response
from alloy.branch.sampling import Completion, SamplingSettings, chat_prompt, load_teacher, resolve_backend
from alloy.errors import AlloyError, check_options
from alloy.io.atomic import atomic_write_text

SETTINGS_FILE = "traces.json"


@dataclass(frozen=True)
class TraceSettings:
    """What `alloy traces` does besides sampling: samples per problem, verification, output extras."""

    k: int = 4
    verify: bool = True
    allow_code_execution: bool = False
    chunk: int = 8  # problems per generation call (and per progress line)
    logits_k: int = 0  # top-k teacher logits to write (0: none)
    allow_empty_domains: bool = False  # a student's run: no correct trace is not an error
    backend: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  # vLLM's share of GPU memory (of host memory on CPU builds)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def validate(self) -> None:
        """Raise AlloyError naming the first setting out of range."""
        self.sampling.validate()
        check_options(self, [(name, getattr(self, name) >= low, f"at least {low}")
                             for name, low in (("k", 1), ("chunk", 1), ("logits_k", 0), ("tensor_parallel_size", 1))]
                      + [("gpu_memory_utilization", 0.0 < self.gpu_memory_utilization <= 1.0, "in (0, 1]")])


@dataclass
class DomainPlan:
    """One domain: its problems, which of them the ledger already holds, and its files."""

    domain: str
    source: Path
    problems: list[Problem]
    done: dict[str, list[dict]]  # problem id -> its k sample records from the ledger
    ledger: Path
    kept: Path

    @property
    def pending(self) -> list[Problem]:
        return [p for p in self.problems if p.id not in self.done]


@dataclass(frozen=True)
class DomainSummary:
    """How rejection sampling went for one domain."""

    domain: str
    problems: int
    samples: int
    correct: int
    problems_solved: int
    kept: int
    path: Path

    def describe(self) -> str:
        share = self.correct / self.samples if self.samples else 0.0
        return (f"{self.domain}: {self.kept} traces kept in {self.path} ({self.correct}/{self.samples} samples "
                f"correct, {share:.0%}; {self.problems_solved}/{self.problems} problems solved)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(teacher: Path, sources: Mapping[str, Path], formats: Mapping[str, str | None],
                 settings: TraceSettings) -> dict[str, Any]:
    return {"teacher": str(teacher), "k": settings.k, "verify": settings.verify,
            "sampling": {k: v for k, v in asdict(settings.sampling).items() if k != "batch_size"},
            "problems": {d: {"file": str(p), "sha256": _sha256(p), "format": formats.get(d)} for d, p in sources.items()}}


def read_ledger(path: Path, k: int) -> dict[str, list[dict]]:
    """Problem id -> its k samples, for the problems the ledger holds complete.

    A last line cut by a kill and a problem with fewer than k samples are dropped (and resampled).
    """
    by_problem: dict[str, list[dict]] = {}
    if not path.is_file():
        return by_problem
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_problem.setdefault(str(record["problem_id"]), []).append(record)
    return {pid: rows for pid, rows in by_problem.items() if len(rows) == k}


def check_teacher(teacher: str | Path) -> Path:
    """The teacher folder: a Hugging Face model folder with a tokenizer that has a chat template."""
    from alloy.branch.train import check_backbone
    from alloy.branch.data import load_chat_tokenizer

    path = check_backbone(teacher)
    load_chat_tokenizer(path)
    return path


def check_same_tokenizer(teacher: Path, backbone: Path) -> None:
    """Teacher logits are only usable when the teacher and the backbone tokenize identically."""
    from alloy.branch.data import load_chat_tokenizer

    a, b = load_chat_tokenizer(teacher), load_chat_tokenizer(backbone)
    if a.get_vocab() != b.get_vocab():
        only_a = len(set(a.get_vocab().items()) - set(b.get_vocab().items()))
        raise AlloyError(f"teacher {teacher} and backbone {backbone} have different tokenizers ({len(a)} vs {len(b)} "
                         f"tokens, {only_a} teacher entries differ); teacher logits need a teacher that shares the "
                         f"backbone's vocabulary: drop --logits-k, or use a teacher of the backbone's family")


def plan_traces(teacher: str | Path, problems: Mapping[str, str | Path], out: str | Path,
                settings: TraceSettings = TraceSettings(), *, formats: Mapping[str, str] | None = None,
                backbone: str | Path | None = None) -> tuple[Path, list[DomainPlan], dict[str, Any]]:
    """Validate every input and read the ledgers; no model is loaded. Returns (teacher, plans, fingerprint)."""
    from alloy.branch.train import check_backbone, check_domain
    from alloy.sandbox import require_code_execution_opt_in

    settings.validate()
    resolve_backend(settings.backend)
    if not problems:
        raise AlloyError("no problems: pass --problems DOMAIN=FILE at least once")
    formats = dict(formats or {})
    for domain in formats:
        if domain not in problems:
            raise AlloyError(f"--format names domain {domain!r}, which has no --problems; domains: {sorted(problems)}")
    teacher = check_teacher(teacher)
    if settings.logits_k:
        if backbone is None:
            raise AlloyError("--logits-k needs --backbone: the logits are written for the backbone's tokenization")
        check_same_tokenizer(teacher, check_backbone(backbone))
    out = Path(out)
    plans = []
    for domain, source in problems.items():
        check_domain(domain, "--problems")
        source = Path(source)
        items = read_problems(source, domain, formats.get(domain))
        if settings.verify:
            missing = [p.id for p in items if not p.verifiable]
            if missing:
                raise AlloyError(f"problem file {source}: {len(missing)} problem(s) have no answer to verify against "
                                 f"(first: {missing[0]!r}); add their answers, or pass --no-verify to keep unverified "
                                 f"traces")
            if any(p.format == "livecodebench" for p in items):
                try:
                    require_code_execution_opt_in(settings.allow_code_execution or None)
                except AlloyError as exc:
                    raise AlloyError(f"domain {domain!r} ({source}) is verified by running code: {exc}") from None
        plans.append(DomainPlan(domain, source, items, {}, out / f"{domain}.samples.jsonl", out / f"{domain}.jsonl"))
    fingerprint = _fingerprint(teacher, {p.domain: p.source for p in plans}, formats, settings)
    saved = out / SETTINGS_FILE
    if saved.is_file():
        previous = json.loads(saved.read_text())
        changed = sorted(key for key in fingerprint if previous.get(key) != fingerprint[key])
        if changed:
            raise AlloyError(f"traces folder {out} was started with other settings ({', '.join(changed)} differ); "
                             f"use the original settings to resume it, or another --out")
    for plan in plans:
        plan.done = {pid: rows for pid, rows in read_ledger(plan.ledger, settings.k).items()
                     if pid in {p.id for p in plan.problems}}
    return teacher, plans, fingerprint


def sample_record(problem: Problem, index: int, completion: Completion, verify: bool) -> dict[str, Any]:
    """The ledger line of one sample (scored when `verify`)."""
    from alloy.branch.problems import extract_answer

    if verify:
        correct, extracted = score_response(problem, completion.text)
    else:
        correct, extracted = None, extract_answer(problem, completion.text)
    record = completion.record
    return {"id": f"{problem.id}#{index}", "problem_id": problem.id, "domain": problem.domain,
            "subject": problem.subject, "prompt": problem.prompt, "response": completion.text, "answer": extracted,
            "target": problem.answer, "correct": correct, "finish": record.finish,
            "thinking_ended": record.thinking_ended if record.thinking else None,
            "tokens": {"output": record.output_tokens, "thinking": record.thinking_tokens,
                       "answer": record.output_tokens - record.thinking_tokens}}


def _append(path: Path, records: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())


def _rewrite_ledger(plan: DomainPlan) -> None:
    """Keep only complete problems in the ledger (drops what a kill left half-written)."""
    rows = [r for pid in plan.done for r in plan.done[pid]]
    atomic_write_text(plan.ledger, "".join(json.dumps(r) + "\n" for r in rows))


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Problems done out of the run's total, with the sampling rate and an ETA."""

    def __init__(self, total: int, already: int, echo: Callable[[str], None] = print):
        self.total, self.done, self.start, self.echo = total, already, time.monotonic(), echo
        self.new = 0

    def advance(self, domain: str, n: int, kept: int, samples: int) -> None:
        self.done += n
        self.new += n
        elapsed = time.monotonic() - self.start
        rate = self.new / elapsed if elapsed > 0 else 0.0
        eta = _eta((self.total - self.done) / rate) if rate > 0 else "?"
        self.echo(f"traces {domain}: {self.done}/{self.total} problems, {kept}/{samples} samples kept, "
                  f"{elapsed / max(self.new, 1):.1f} s/problem, ETA {eta}")


def traces(teacher: str | Path, problems: Mapping[str, str | Path], out: str | Path,
           settings: TraceSettings = TraceSettings(), *, formats: Mapping[str, str] | None = None,
           backbone: str | Path | None = None, echo: Callable[[str], None] = print) -> dict[str, DomainSummary]:
    """Sample `teacher` over each domain's problems into `out` (see the module docstring); resumable."""
    from alloy.evaluation.harness import code_execution

    teacher, plans, fingerprint = plan_traces(teacher, problems, out, settings, formats=formats, backbone=backbone)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SETTINGS_FILE).is_file():
        atomic_write_text(out / SETTINGS_FILE, json.dumps(fingerprint, indent=2, sort_keys=True))
    pending = sum(len(p.pending) for p in plans)
    model = None
    if pending or settings.logits_k:
        backend = resolve_backend(settings.backend)
        echo(f"traces: teacher {teacher} on {backend}; {pending} problems to sample ({settings.k} samples each)")
        model = load_teacher(teacher, backend, settings.sampling, settings.tensor_parallel_size,
                             settings.gpu_memory_utilization)
    progress = Progress(sum(len(p.problems) for p in plans), sum(len(p.done) for p in plans), echo)
    summaries = {}
    with code_execution(settings.allow_code_execution):
        for plan in plans:
            _rewrite_ledger(plan)
            todo = plan.pending
            for start in range(0, len(todo), settings.chunk):
                chunk = todo[start:start + settings.chunk]
                completions = model.generate([chat_prompt(model.tokenizer, p.prompt) for p in chunk], settings.k)
                for problem, samples in zip(chunk, completions, strict=True):
                    rows = [sample_record(problem, i, c, settings.verify) for i, c in enumerate(samples)]
                    _append(plan.ledger, rows)
                    plan.done[problem.id] = rows
                rows = [r for pid in plan.done for r in plan.done[pid]]
                progress.advance(plan.domain, len(chunk), sum(1 for r in rows if r["correct"] is not False), len(rows))
            summaries[plan.domain] = _write_kept(plan, settings)
    empty = [s for s in summaries.values() if s.kept == 0]
    if empty and not settings.allow_empty_domains:
        raise AlloyError("; ".join(f"domain {s.domain!r}: no correct trace after rejection ({s.samples} samples of "
                                   f"{s.problems} problems tried, all wrong)" for s in empty)
                         + f". Their samples are in {out}: raise --k, use a stronger teacher or easier problems")
    if settings.logits_k:
        _write_logits(model, teacher, plans, summaries, Path(backbone), settings.logits_k)
    return summaries


def _write_kept(plan: DomainPlan, settings: TraceSettings) -> DomainSummary:
    order = {p.id: i for i, p in enumerate(plan.problems)}
    rows = [r for pid in sorted(plan.done, key=order.__getitem__) for r in plan.done[pid]]
    kept = [r for r in rows if r["correct"] is not False] if settings.verify else rows
    if kept:
        atomic_write_text(plan.kept, "".join(json.dumps(r) + "\n" for r in kept))
    return DomainSummary(plan.domain, len(plan.problems), len(rows), sum(1 for r in rows if r["correct"]),
                         sum(1 for rs in plan.done.values() if any(r["correct"] for r in rs)), len(kept), plan.kept)


def _write_logits(model, teacher: Path, plans: list[DomainPlan], summaries: Mapping[str, DomainSummary],
                  backbone: Path, k: int) -> None:
    """Top-k logits of the teacher over every kept trace, tokenized as `alloy branch` tokenizes it."""
    from transformers import AutoModelForCausalLM

    from alloy.branch.data import encode_traces, load_chat_tokenizer, read_traces
    from alloy.branch.teacher import compute_teacher_logits, write_teacher_logits

    hf = getattr(model, "model", None)
    if hf is None:  # the vLLM backend: score the traces with the teacher in transformers
        hf = AutoModelForCausalLM.from_pretrained(teacher, dtype="auto", local_files_only=True)
    tokenizer = load_chat_tokenizer(backbone)
    for plan in plans:
        if summaries[plan.domain].kept:
            examples = encode_traces(tokenizer, read_traces(plan.kept), 10**9, str(plan.kept))
            write_teacher_logits(plan.kept.with_suffix(".teacher.safetensors"),
                                 compute_teacher_logits(hf, examples, k))
