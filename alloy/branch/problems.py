"""Problems for teacher sampling, read in the evaluators' record formats, with their prompts and scorers.

Formats (`FORMATS`), one per problem file, detected from the records or named explicitly:

- `aime`: `{id, problem, answer}` with integer answers 0–999 (aime24/aime25 records), scored by
  `aime_score`;
- `math`: `{id, problem, answer}` with LaTeX answers (MATH-500 records), scored by `math_score`;
- `gpqa`: GPQA's raw columns (`Question`, `Correct Answer`, `Incorrect Answer 1..3`), choices
  shuffled as the gpqa_diamond task does, scored by `gpqa_score`;
- `livecodebench`: LiveCodeBench's fields; the last code block must pass every public test in
  alloy's sandbox (`passes_problem`);
- `generic`: `{prompt, answer}` (optional `id`), the prompt used as it is, scored by `math_score`
  (last `\\boxed{}` or "the answer is …", LaTeX-equivalent).

The prompt of a problem is its evaluator's `doc_to_text` (the task YAML under `evaluators/`), so a
trace is made from the prompt the child is later scored on. A problem's `subject` (for diversity in
`alloy select`) is its record's `subject`, `type`, `Subdomain`, `High-level domain`, `platform` or
`difficulty`, when it has one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alloy.errors import AlloyError
from alloy.io.jsonl import read_jsonl_objects

FORMATS: tuple[str, ...] = ("aime", "math", "gpqa", "livecodebench", "generic")
_FORMAT_TASK = {"aime": "aime24", "math": "math500", "gpqa": "gpqa_diamond", "livecodebench": "livecodebench"}
_SUBJECT_FIELDS = ("subject", "type", "Subdomain", "High-level domain", "platform", "difficulty")


@dataclass(frozen=True)
class Problem:
    """One problem of a domain: the user message the teacher sees and what its answer is checked against.

    `answer` is None for a problem without one (then it cannot be verified); `record` is the normalized
    evaluator record (LiveCodeBench's tests live there).
    """

    id: str
    domain: str
    format: str
    prompt: str
    answer: str | None
    subject: str | None
    record: dict[str, Any]

    @property
    def verifiable(self) -> bool:
        """Whether the task's scorer can check a response to this problem."""
        if self.format == "livecodebench":
            return self.record.get("public_test_cases") not in (None, "", "[]")
        return self.answer is not None and self.answer.strip() != ""


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise AlloyError(f"problem file {path} does not exist")
    rows = list(read_jsonl_objects(path, "a JSON object (a problem record)"))
    if not rows:
        raise AlloyError(f"problem file {path} has no records")
    return rows


def detect_format(path: Path, records: list[dict]) -> str:
    """The format of a problem file, from the fields of its first record."""
    first = records[0]
    if "question_content" in first:
        return "livecodebench"
    if "Correct Answer" in first:
        return "gpqa"
    if any(k in first for k in ("problem", "Problem")):
        answers = [str(r.get("answer", r.get("Answer", ""))).strip() for r in records]
        return "aime" if all(a.isdigit() and int(a) <= 999 for a in answers if a) else "math"
    if "prompt" in first:
        return "generic"
    raise AlloyError(f"problem file {path}: cannot tell its format from the fields {sorted(first)}; pass the format "
                     f"(one of {', '.join(FORMATS)})")


@functools.cache
def _doc_to_text(task: str):
    """The `doc_to_text` of an evaluator task: a Jinja template string or a function of the record."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from alloy.evaluation.harness import evaluators_dir

    matches = sorted(evaluators_dir().rglob(f"{task}.yaml"))
    if not matches:
        raise AlloyError(f"evaluator task {task!r} has no YAML file under {evaluators_dir()}")
    return load_yaml(str(matches[0]), resolve_func=True)["doc_to_text"]


def task_prompt(fmt: str, record: dict) -> str:
    """The user message of a normalized record, as its evaluator task renders it."""
    if fmt == "generic":
        return record["prompt"]
    template = _doc_to_text(_FORMAT_TASK[fmt])
    if callable(template):
        return template(record)
    from lm_eval.utils import apply_template

    return apply_template(template, record)


def _subject(raw: dict) -> str | None:
    for field in _SUBJECT_FIELDS:
        if raw.get(field) not in (None, ""):
            return str(raw[field])
    return None


def read_problems(path: str | Path, domain: str, fmt: str | None = None) -> list[Problem]:
    """Every problem of a file in one of `FORMATS` (detected when `fmt` is None), validated."""
    from alloy.evaluation.datasets import gpqa_records, math_record
    from alloy.evaluation.livecodebench import normalize_problem

    path = Path(path)
    rows = _read_jsonl(path)
    raws = [raw for _, raw in rows]
    fmt = fmt or detect_format(path, raws)
    if fmt not in FORMATS:
        raise AlloyError(f"problem file {path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        if fmt == "gpqa":
            records = gpqa_records(raws)
        elif fmt in ("aime", "math"):
            records = [math_record(raw, fmt) for raw in raws]
        elif fmt == "livecodebench":
            records = [normalize_problem(raw) for raw in raws]
        else:
            records = [_generic_record(path, lineno, raw) for lineno, raw in rows]
    except AlloyError as exc:
        raise AlloyError(f"problem file {path} ({fmt} format): {exc}") from None
    problems, seen = [], {}
    for (lineno, raw), record in zip(rows, records):
        doc_id = str(record["id"])
        if doc_id in seen:
            raise AlloyError(f"{path}:{lineno}: problem id {doc_id!r} already used on line {seen[doc_id]}; ids must "
                             f"be unique")
        seen[doc_id] = lineno
        answer = None if fmt == "livecodebench" else record.get("answer")
        problems.append(Problem(doc_id, domain, fmt, task_prompt(fmt, record), answer if answer else None,
                                _subject(raw), record))
    return problems


def _generic_record(path: Path, lineno: int, raw: dict) -> dict:
    if not isinstance(raw.get("prompt"), str) or not raw["prompt"].strip():
        raise AlloyError(f"{path}:{lineno}: field 'prompt' is missing or not a non-empty string")
    raw_id = raw.get("id", lineno - 1)
    answer = raw.get("answer")
    return {"id": str(raw_id), "prompt": raw["prompt"], "answer": None if answer is None else str(answer).strip()}


def score_response(problem: Problem, response: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) of a response by the problem's own task scorer, on its final part.

    LiveCodeBench code runs in the sandbox (the caller opts in); its "extracted answer" is the code.
    """
    from alloy.evaluation import answers
    from alloy.evaluation.livecodebench import passes_problem

    extracted = extract_answer(problem, response)
    if extracted is None:
        return False, None
    final = answers.final_segment(response)
    if problem.format == "livecodebench":
        return passes_problem(extracted, problem.record), extracted
    scorer = {"aime": answers.aime_score, "gpqa": answers.gpqa_score}.get(problem.format, answers.math_score)
    return scorer(final, problem.answer) == 1.0, extracted


def extract_answer(problem: Problem, response: str) -> str | None:
    """The final answer a response states for its problem's format (the code for LiveCodeBench), or None."""
    from alloy.evaluation import answers
    from alloy.evaluation.livecodebench import extract_code

    final = answers.final_segment(response)
    if problem.format == "livecodebench":
        return extract_code(final)
    if problem.format == "aime":
        value = answers.extract_aime_answer(final)
        return None if value is None else str(value)
    if problem.format == "gpqa":
        return answers.extract_choice_letter(final)
    return answers.extract_math_answer(final)
