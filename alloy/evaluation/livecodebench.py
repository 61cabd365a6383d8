"""LiveCodeBench code generation: problems, prompts, code extraction and scoring in the sandbox.

Problems keep LiveCodeBench's own field names (`question_id`, `question_content`, `starter_code`,
`difficulty`, `contest_date`, `public_test_cases` and `metadata` as JSON strings, ...). Two kinds:

- `stdin` (AtCoder, Codeforces): the program reads stdin; its stdout must match the expected output
  line by line after stripping, a line also matching when both parse as the same decimals.
- `functional` (LeetCode): `class Solution` with the method named by `metadata["func_name"]`;
  a test's input holds one JSON argument per line, the result must equal the JSON output
  (tuples count as lists).

A response passes a problem only if its last fenced code block passes every public test (each in
its own sandboxed run, 6 s wall clock as in LiveCodeBench). `private_test_cases` (a pickle upstream)
is dropped on loading and never decoded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Iterable

from alloy.errors import AlloyError
from alloy.evaluation.answers import response_texts
from alloy.evaluation.datasets import ordered_docs
from alloy.evaluation.passk import pass_at_k_scores
from alloy.sandbox import SandboxLimits, require_code_execution_opt_in, run_python

if TYPE_CHECKING:
    import datasets

HUB_FILES_URL = "hf://datasets/livecodebench/code_generation_lite"
RELEASE_COUNT = 6
TEST_TIMEOUT_S = 6.0
DIFFICULTIES = ("easy", "medium", "hard")
PROBLEM_FIELDS = (
    "question_title", "question_content", "platform", "question_id", "contest_id",
    "contest_date", "starter_code", "difficulty", "public_test_cases", "metadata",
)
_RESULT_MARKER = "@@alloy-result@@"
# Names LeetCode-style solutions use without importing them (List, Counter, inf, ...).
_PRELUDE_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "typing",
)
_PRELUDE = "".join(f"from {m} import *\nimport {m}\n" for m in _PRELUDE_MODULES) + "sys.setrecursionlimit(50000)\n"
_FUNCTIONAL_DRIVER = f'''import contextlib, io, json, sys
request = json.load(sys.stdin)
namespace = {{"__name__": "solution"}}
with open("solution.py", encoding="utf-8") as handle:
    source = handle.read()
with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(source, "solution.py", "exec"), namespace)
    result = getattr(namespace["Solution"](), request["method"])(*request["arguments"])
if isinstance(result, tuple):
    result = list(result)
sys.stdout.write("\\n{_RESULT_MARKER}" + json.dumps(result) + "\\n")
'''


@dataclass(frozen=True)
class PublicTest:
    """One public test of a problem."""

    input: str
    output: str
    testtype: str


# ---------------------------------------------------------------------------- loading


def normalize_problem(raw: dict) -> dict:
    """One record shape for hub and local rows: LiveCodeBench's fields as strings plus `id`
    (= question_id); `private_test_cases` is dropped undecoded."""
    missing = [field for field in ("question_id", "question_content", "public_test_cases") if field not in raw]
    if missing:
        raise AlloyError(f"LiveCodeBench record {raw.get('question_id', '?')} lacks fields {missing}")
    record = {field: "" if raw.get(field) is None else str(raw[field]) for field in PROBLEM_FIELDS}
    if not record["metadata"]:
        record["metadata"] = "{}"
    record["difficulty"] = record["difficulty"].lower()
    record["id"] = record["question_id"]
    return record


def contest_day(problem: dict) -> date:
    """The problem's contest date (from ISO text such as "2023-08-21T00:00:00")."""
    return datetime.fromisoformat(str(problem["contest_date"])).date()


def _as_date(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise AlloyError(f"LiveCodeBench date {value!r} is not YYYY-MM-DD") from exc


def in_window(problem: dict, start: date | None, end: date | None) -> bool:
    """start <= contest date <= end (inclusive, either bound optional), as LiveCodeBench's
    --start_date/--end_date."""
    day = contest_day(problem)
    return (start is None or start <= day) and (end is None or day <= end)


def process_docs(dataset: "datasets.Dataset | list[dict]") -> "datasets.Dataset":
    """Normalized problems in the seeded nested order."""
    return ordered_docs([normalize_problem(dict(raw)) for raw in dataset], lambda record: record)


def release_files(release: str) -> list[str]:
    """The files of a LiveCodeBench release, as code_generation_lite's loader picks them:
    `release_vN` (test.jsonl .. testN.jsonl), `vN` (only version N's file), `vN_vM` with N < M
    (versions N..M), `release_latest` (all)."""
    def file_of(version: int) -> str:
        return f"test{'' if version == 1 else version}.jsonl"

    if release == "release_latest":
        return [file_of(version) for version in range(1, RELEASE_COUNT + 1)]
    match = re.fullmatch(r"release_v(\d+)|v(\d+)(?:_v(\d+))?", release)
    if match:
        cumulative, single, until = match.groups()
        if cumulative:
            first, last = 1, int(cumulative)
        else:
            first, last = int(single), int(until or single)
        if 1 <= first <= last <= RELEASE_COUNT and (until is None or first < last):
            return [file_of(version) for version in range(first, last + 1)]
    raise AlloyError(
        f"unknown LiveCodeBench release_version {release!r}: use release_latest, release_v1..release_v{RELEASE_COUNT} "
        f"(cumulative), v1..v{RELEASE_COUNT} (one version) or vN_vM with N < M (versions N to M)"
    )


def window_overrides(
    release: str | None = None,
    start_date: str | date | None = None,
    end_date: str | date | None = None,
) -> dict[str, Any]:
    """lm-eval overrides for the `livecodebench` task selecting a release and a contest-date window
    (its metadata, as `lm_eval --metadata '{"release_version": "v5", "start_date": ...}'` sets them);
    checked now."""
    metadata: dict[str, Any] = {}
    if release is not None:
        release_files(release)
        metadata["release_version"] = release
    start, end = _as_date(start_date), _as_date(end_date)
    if start and end and start > end:
        raise AlloyError(f"LiveCodeBench window start {start} is after its end {end}")
    metadata.update({key: value.isoformat() for key, value in (("start_date", start), ("end_date", end)) if value})
    return {"metadata": metadata} if metadata else {}


def load_problems(
    data_dir: str | None = None,
    release_version: str | None = None,
    start_date: str | date | None = None,
    end_date: str | date | None = None,
    **_metadata: Any,
) -> "datasets.DatasetDict":
    """lm-eval's `custom_dataset` of the livecodebench task: `{"test": problems}` of a release
    (default release_latest) within the contest-date window.

    Checks first, before any generation, that code execution is opted in and the sandbox runs.
    Reads the local data folder (`data_dir`, else $ALLOY_DATA_DIR) when there is one: a folder
    `livecodebench/` of release files test*.jsonl selects the release as on the Hub; a single
    `livecodebench*.jsonl` is used whole (no release_version then). Else the Hub's JSONL files
    (code_generation_lite's loading script does not run under datasets >= 4).
    """
    import datasets

    from alloy.evaluation.datasets import data_dir_of, local_file, read_jsonl
    from alloy.sandbox import check_sandbox

    check_sandbox()
    start, end = _as_date(start_date), _as_date(end_date)
    if start and end and start > end:
        raise AlloyError(f"LiveCodeBench window start {start} is after its end {end}")
    files = release_files(release_version or "release_latest")
    folder = data_dir_of(data_dir)
    if folder is None:
        problems = datasets.load_dataset("json", data_files={"test": [f"{HUB_FILES_URL}/{f}" for f in files]},
                                         split="test")
    else:
        source = local_file("livecodebench", folder)
        if source.is_dir():
            missing = [name for name in files if not (source / name).is_file()]
            if missing and release_version not in (None, "release_latest"):
                raise AlloyError(f"release_version {release_version!r} needs {', '.join(missing)} in {source}")
            rows = [row for name in files if name not in missing for row in read_jsonl(source / name)]
        elif release_version not in (None, "release_latest"):
            raise AlloyError(f"release_version {release_version!r} selects release files, but {source} is a "
                             f"single file; put the release files ({', '.join(files)}) in {folder / 'livecodebench'}")
        else:
            rows = read_jsonl(source)
        problems = datasets.Dataset.from_list(rows)
    if "private_test_cases" in problems.column_names:
        problems = problems.remove_columns("private_test_cases")
    if start or end:
        problems = problems.filter(lambda problem: in_window(problem, start, end))
    return datasets.DatasetDict({"test": problems})


def public_tests(problem: dict) -> list[PublicTest]:
    """The problem's public tests, parsed from the JSON string."""
    raw = problem["public_test_cases"]
    try:
        tests = json.loads(raw) if isinstance(raw, str) else raw
        return [PublicTest(str(t["input"]), str(t["output"]), str(t["testtype"])) for t in tests]
    except (ValueError, KeyError, TypeError) as exc:
        raise AlloyError(f"LiveCodeBench problem {problem.get('question_id')}: bad public_test_cases ({exc})") from exc


def function_name(problem: dict) -> str:
    """`metadata["func_name"]` of a functional problem."""
    metadata = problem.get("metadata") or "{}"
    name = (json.loads(metadata) if isinstance(metadata, str) else metadata).get("func_name")
    if not name:
        raise AlloyError(f"LiveCodeBench problem {problem.get('question_id')} is functional but metadata has no func_name")
    return name


# ---------------------------------------------------------------------------- prompt / extraction


def build_prompt(problem: dict) -> str:
    """The user message for a problem, in LiveCodeBench's code-generation layout."""
    parts = [
        "You are an expert Python programmer. Given a programming problem, write a correct Python "
        "program that matches the specification and passes all tests.\n\n",
        f"### Question\n\n{problem['question_content']}\n\n### Format\n\n",
    ]
    if problem.get("starter_code"):
        parts.append(
            "Use the following starter code to write the solution and enclose your code within "
            f"delimiters.\n\n```python\n{problem['starter_code']}\n```\n\n"
        )
    else:
        parts.append(
            "Read the inputs from stdin, solve the problem and write the answer to stdout (do not "
            "just test on the sample inputs). Enclose your code within delimiters as follows.\n\n"
            "```python\n# YOUR CODE HERE\n```\n\n"
        )
    parts.append("### Answer (use the provided format with backticks)\n\n")
    return "".join(parts)


def extract_code(response: str) -> str | None:
    """The content of the last complete fenced (```) block of a response, or None."""
    blocks = re.findall(r"```[^\n`]*\n(.*?)```", response, flags=re.DOTALL)
    return blocks[-1] if blocks else None


# ---------------------------------------------------------------------------- comparison


def _decimals(line: str) -> list[Any] | None:
    from decimal import Decimal, InvalidOperation

    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def stdout_matches(actual: str, expected: str) -> bool:
    """LiveCodeBench's stdout check: same number of stripped lines, each equal as text or as a
    list of decimals."""
    actual_lines = [line.strip() for line in actual.strip().split("\n")]
    expected_lines = [line.strip() for line in expected.strip().split("\n")]
    if len(actual_lines) != len(expected_lines):
        return False
    for got, want in zip(actual_lines, expected_lines):
        if got == want:
            continue
        got_numbers, want_numbers = _decimals(got), _decimals(want)
        if got_numbers is None or want_numbers is None or got_numbers != want_numbers:
            return False
    return True


def functional_matches(result_json: str, expected_json: str) -> bool:
    """Whether a functional result equals the expected JSON value."""
    try:
        return json.loads(result_json) == json.loads(expected_json)
    except ValueError:
        return False


# ---------------------------------------------------------------------------- running


def _functional_request(test: PublicTest, method: str) -> str:
    arguments = [json.loads(line) for line in test.input.split("\n") if line.strip()]
    return json.dumps({"method": method, "arguments": arguments})


def passes_test(
    code: str,
    problem: dict,
    test: PublicTest,
    limits: SandboxLimits,
    allow_code_execution: bool | None = None,
) -> bool:
    """Run `code` on one public test in the sandbox; True if it passes."""
    if test.testtype == "functional":
        result = run_python(
            {"main.py": _FUNCTIONAL_DRIVER, "solution.py": _PRELUDE + "\n" + code},
            stdin=_functional_request(test, function_name(problem)),
            limits=limits,
            allow_code_execution=allow_code_execution,
        )
        if not result.ok:
            return False
        lines = [line for line in result.stdout.split("\n") if line.startswith(_RESULT_MARKER)]
        return bool(lines) and functional_matches(lines[-1][len(_RESULT_MARKER):], test.output)
    if test.testtype == "stdin":
        result = run_python(
            {"main.py": code}, stdin=test.input, limits=limits, allow_code_execution=allow_code_execution
        )
        return result.ok and stdout_matches(result.stdout, test.output)
    raise AlloyError(f"LiveCodeBench problem {problem.get('question_id')}: unknown test type {test.testtype!r}")


def passes_problem(
    code: str | None,
    problem: dict,
    limits: SandboxLimits | None = None,
    allow_code_execution: bool | None = None,
) -> bool:
    """True if `code` passes every public test of `problem` (stops at the first failure)."""
    require_code_execution_opt_in(allow_code_execution)
    if not code or not code.strip():
        return False
    limits = limits or SandboxLimits(wall_s=TEST_TIMEOUT_S)
    tests = public_tests(problem)
    return bool(tests) and all(
        passes_test(code, problem, test, limits, allow_code_execution) for test in tests
    )


def score_responses(
    problem: dict,
    results: Iterable[Any],
    limits: SandboxLimits | None = None,
    allow_code_execution: bool | None = None,
) -> dict[str, float]:
    """`pass@k` (unbiased, for k in 1, 5, 10 up to the number of responses n) and
    `pass@1_<difficulty>` of a problem, a response passing when its last code block passes all
    public tests; pass@1 is the fraction that pass. Raises AlloyError unless code execution was
    opted in."""
    require_code_execution_opt_in(allow_code_execution)
    texts = response_texts(results)
    passed = [passes_problem(extract_code(text), problem, limits, allow_code_execution) for text in texts]
    metrics = pass_at_k_scores(passed) if passed else {"pass@1": 0.0}
    if problem.get("difficulty") in DIFFICULTIES:
        metrics[f"pass@1_{problem['difficulty']}"] = metrics["pass@1"]
    return metrics
