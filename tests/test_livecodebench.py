"""LiveCodeBench scoring on real problems: correct solutions pass, off-by-one variants and
misbehaving programs fail, and scoring goes on afterwards."""
from __future__ import annotations

import json
import math
import socket
import uuid
from datetime import date
from pathlib import Path

import pytest

from alloy.errors import AlloyError
from alloy.evaluation.livecodebench import (
    build_prompt,
    extract_code,
    functional_matches,
    load_problems,
    normalize_problem,
    passes_problem,
    process_docs,
    public_tests,
    release_files,
    score_responses,
    stdout_matches,
    window_overrides,
)
from alloy.sandbox import OPT_IN_ENV, SandboxLimits, sandbox_processes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIMITS = SandboxLimits(wall_s=3.0)

# question_id -> (correct solution, off-by-one variant)
SOLUTIONS = {
    "2777": (
        "class Solution:\n"
        "    def distinctDifferenceArray(self, nums: List[int]) -> List[int]:\n"
        "        return [len(set(nums[:i + 1])) - len(set(nums[i + 1:])) for i in range(len(nums))]\n",
        "class Solution:\n"
        "    def distinctDifferenceArray(self, nums: List[int]) -> List[int]:\n"
        "        return [len(set(nums[:i])) - len(set(nums[i:])) for i in range(len(nums))]\n",
    ),
    "2977": (
        "class Solution:\n"
        "    def isAcronym(self, words: List[str], s: str) -> bool:\n"
        "        return ''.join(w[0] for w in words) == s\n",
        "class Solution:\n"
        "    def isAcronym(self, words: List[str], s: str) -> bool:\n"
        "        return ''.join(w[0] for w in words[:-1]) == s\n",
    ),
    "2872": (
        "class Solution:\n"
        "    def maxArrayValue(self, nums: List[int]) -> int:\n"
        "        best = current = nums[-1]\n"
        "        for i in range(len(nums) - 2, -1, -1):\n"
        "            current = current + nums[i] if nums[i] <= current else nums[i]\n"
        "            best = max(best, current)\n"
        "        return best\n",
        "class Solution:\n"
        "    def maxArrayValue(self, nums: List[int]) -> int:\n"
        "        best = current = nums[-1]\n"
        "        for i in range(len(nums) - 2, 0, -1):\n"
        "            current = current + nums[i] if nums[i] <= current else nums[i]\n"
        "            best = max(best, current)\n"
        "        return best\n",
    ),
    "3252": (
        "class Solution:\n"
        "    def incremovableSubarrayCount(self, nums: List[int]) -> int:\n"
        "        n, count = len(nums), 0\n"
        "        for i in range(n):\n"
        "            for j in range(i, n):\n"
        "                rest = nums[:i] + nums[j + 1:]\n"
        "                count += all(a < b for a, b in zip(rest, rest[1:]))\n"
        "        return count\n",
        "class Solution:\n"
        "    def incremovableSubarrayCount(self, nums: List[int]) -> int:\n"
        "        n, count = len(nums), 0\n"
        "        for i in range(n):\n"
        "            for j in range(i, n - 1):\n"
        "                rest = nums[:i] + nums[j + 1:]\n"
        "                count += all(a < b for a, b in zip(rest, rest[1:]))\n"
        "        return count\n",
    ),
    "abc301_a": (
        "n = int(input())\ns = input().strip()\nt, a = s.count('T'), s.count('A')\n"
        "if t != a:\n    print('T' if t > a else 'A')\nelse:\n    print('T' if s[-1] == 'A' else 'A')\n",
        "n = int(input())\ns = input().strip()\nt, a = s[:-1].count('T'), s.count('A')\n"
        "if t != a:\n    print('T' if t > a else 'A')\nelse:\n    print('T' if s[-1] == 'A' else 'A')\n",
    ),
    "abc311_a": (
        "n = int(input())\ns = input().strip()\n"
        "for i in range(n):\n    if set(s[:i + 1]) >= {'A', 'B', 'C'}:\n        print(i + 1)\n        break\n",
        "n = int(input())\ns = input().strip()\n"
        "for i in range(n):\n    if set(s[:i + 1]) >= {'A', 'B', 'C'}:\n        print(i)\n        break\n",
    ),
    "1873_D": (
        "import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    t = int(data[0])\n    pos = 1\n"
        "    for _ in range(t):\n        n, k, s = int(data[pos]), int(data[pos + 1]), data[pos + 2]\n        pos += 3\n"
        "        i = ops = 0\n        while i < n:\n            if s[i] == 'B':\n                ops += 1\n                i += k\n"
        "            else:\n                i += 1\n        print(ops)\n\nif __name__ == '__main__':\n    main()\n",
        "import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    t = int(data[0])\n    pos = 1\n"
        "    for _ in range(t):\n        n, k, s = int(data[pos]), int(data[pos + 1]), data[pos + 2]\n        pos += 3\n"
        "        i = ops = 0\n        while i < n:\n            if s[i] == 'B':\n                ops += 1\n                i += k + 1\n"
        "            else:\n                i += 1\n        print(ops)\n\nif __name__ == '__main__':\n    main()\n",
    ),
    "abc334_c": (
        "import sys\ndata = sys.stdin.read().split()\nn, k = int(data[0]), int(data[1])\n"
        "a = list(map(int, data[2:2 + k]))\n"
        "if k % 2 == 0:\n    print(sum(a[i + 1] - a[i] for i in range(0, k, 2)))\nelse:\n"
        "    pre = [0] * (k + 1)\n    for i in range(2, k + 1, 2):\n        pre[i] = pre[i - 2] + a[i - 1] - a[i - 2]\n"
        "    suf = [0] * (k + 2)\n    for i in range(k - 2, -1, -2):\n        suf[i] = suf[i + 2] + a[i + 1] - a[i]\n"
        "    print(min(pre[i] + suf[i + 1] for i in range(0, k, 2)))\n",
        "import sys\ndata = sys.stdin.read().split()\nn, k = int(data[0]), int(data[1])\n"
        "a = list(map(int, data[2:2 + k]))\n"
        "if k % 2 == 0:\n    print(sum(a[i + 1] - a[i] for i in range(0, k, 2)))\nelse:\n"
        "    pre = [0] * (k + 1)\n    for i in range(2, k + 1, 2):\n        pre[i] = pre[i - 2] + a[i - 1] - a[i - 2]\n"
        "    suf = [0] * (k + 2)\n    for i in range(k - 2, -1, -2):\n        suf[i] = suf[i + 2] + a[i + 1] - a[i]\n"
        "    print(min(pre[i] + suf[i + 1] for i in range(0, k - 1, 2)))\n",
    ),
}


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    with open(DATA / "livecodebench_subset.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return {row["question_id"]: normalize_problem(row) for row in rows}


@pytest.fixture(autouse=True)
def opted_in(monkeypatch):
    monkeypatch.setenv(OPT_IN_ENV, "1")


def fenced(code: str) -> str:
    return f"<think>\nplan: use a loop\n</think>\nHere is my solution:\n```python\n{code}```\nDone."


@pytest.mark.parametrize("question_id", sorted(SOLUTIONS))
def test_correct_passes_and_off_by_one_fails(problems, question_id):
    problem = problems[question_id]
    correct, off_by_one = SOLUTIONS[question_id]
    kind = public_tests(problem)[0].testtype
    assert kind == ("functional" if problem["platform"] == "leetcode" else "stdin")
    assert passes_problem(correct, problem, LIMITS)
    assert not passes_problem(off_by_one, problem, LIMITS)


def test_both_kinds_covered():
    kinds = {qid.isdigit() for qid in SOLUTIONS}
    assert kinds == {True, False} and sum(qid.isdigit() for qid in SOLUTIONS) >= 3


def test_score_responses_averages_repeats_and_reports_difficulty(problems):
    problem = problems["abc311_a"]
    correct, wrong = SOLUTIONS["abc311_a"]
    metrics = score_responses(problem, [[fenced(correct), fenced(wrong), "no code at all", fenced(correct)]], LIMITS)
    assert metrics == {"pass@1": 0.5, f"pass@1_{problem['difficulty']}": 0.5}  # no pass@5 from 4 answers
    assert problem["difficulty"] == "easy"


def test_pass_at_k_over_ten_answers(problems):
    problem = problems["abc311_a"]
    correct, wrong = SOLUTIONS["abc311_a"]
    answers = [fenced(correct)] * 3 + [fenced(wrong)] * 7
    metrics = score_responses(problem, [answers], LIMITS)
    # the unbiased estimator 1 - C(n-c, k) / C(n, k) with n = 10, c = 3
    assert metrics["pass@1"] == pytest.approx(0.3)
    assert metrics["pass@5"] == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert metrics["pass@10"] == 1.0
    assert metrics["pass@1_easy"] == pytest.approx(0.3)


def test_scoring_requires_opt_in(problems, monkeypatch):
    monkeypatch.delenv(OPT_IN_ENV)
    with pytest.raises(AlloyError, match=OPT_IN_ENV):
        score_responses(problems["abc311_a"], ["```python\nprint(4)\n```"])
    assert score_responses(
        problems["abc311_a"], [fenced(SOLUTIONS["abc311_a"][0])], LIMITS, allow_code_execution=True
    )["pass@1"] == 1.0


def test_misbehaving_solutions_fail_and_scoring_continues(problems, tmp_path):
    problem = problems["abc311_a"]
    correct = SOLUTIONS["abc311_a"][0]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        outside = Path(__file__).resolve().parent / f".alloy-lcb-escape-{uuid.uuid4().hex}"
        bad = {
            "infinite loop": "while True:\n    pass\n",
            "memory bomb": "hog = bytearray(64 * 1024 ** 3)\n" + correct,
            "fork bomb": "import os\nfor _ in range(10 ** 6):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
            + correct,
            "write outside": f"open({str(outside)!r}, 'w').write('x')\n" + correct,
            "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + correct,
        }
        limits = SandboxLimits(wall_s=2.0, memory_bytes=2 * 1024**3, processes=32)
        roomy = SandboxLimits(wall_s=10.0, memory_bytes=2 * 1024**3, processes=32)
        try:
            for name, code in bad.items():
                assert score_responses(problem, [fenced(code)], limits)["pass@1"] == 0.0, name
                assert not sandbox_processes(), name
                # scoring goes on: a correct solution still passes (with room for a busy machine)
                assert score_responses(problem, [fenced(correct)], roomy)["pass@1"] == 1.0, name
            assert not outside.exists()
        finally:
            outside.unlink(missing_ok=True)


def test_stdout_comparison_rules():
    assert stdout_matches("4\n", "4")
    assert stdout_matches("  1 2  \n3\n\n", "1 2\n3")
    assert stdout_matches("0.50000\n", "0.5\n")
    assert stdout_matches("1 2.0", "1 2")
    assert not stdout_matches("1 2", "1 2 3")
    assert not stdout_matches("4\n5", "4")
    assert not stdout_matches("Yes", "No")
    assert not stdout_matches("0.5000001", "0.5")


def test_functional_comparison_rules():
    assert functional_matches("[1, 2]", "[1,2]")
    assert functional_matches("true", "true")
    assert not functional_matches("false", "true")
    assert not functional_matches("not json", "1")


def test_extract_code_takes_last_complete_block():
    response = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n```python\nunfinished"
    assert extract_code(response) == "print(2)\n"
    assert extract_code("no code") is None


def test_prompts_follow_problem_kind(problems):
    functional = build_prompt(problems["2777"])
    assert problems["2777"]["starter_code"] in functional and "### Question" in functional
    stdin = build_prompt(problems["abc301_a"])
    assert "stdin" in stdin and "# YOUR CODE HERE" in stdin


def raw_rows() -> list[dict]:
    with open(DATA / "livecodebench_subset.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture()
def release_dir(tmp_path) -> Path:
    """The real problems laid out as LiveCodeBench release files: test.jsonl (the 8 earliest),
    test2.jsonl (the next 6), test3.jsonl (the last 6), like code_generation_lite on the Hub."""
    rows = sorted(raw_rows(), key=lambda row: row["contest_date"])
    folder = tmp_path / "livecodebench"
    folder.mkdir()
    for name, part in (("test.jsonl", rows[:8]), ("test2.jsonl", rows[8:14]), ("test3.jsonl", rows[14:])):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
    return tmp_path


def ids_of(dataset) -> list[str]:
    return sorted(row["question_id"] for row in dataset["test"])


def test_release_files_follow_the_official_loader():
    assert release_files("release_v1") == ["test.jsonl"]
    assert release_files("release_v3") == ["test.jsonl", "test2.jsonl", "test3.jsonl"]
    assert release_files("v3") == ["test3.jsonl"]
    assert release_files("v4_v5") == ["test4.jsonl", "test5.jsonl"]
    assert release_files("v1_v6") == release_files("release_v6") == release_files("release_latest")
    for bad in ("release_v0", "release_v7", "v7", "v5_v4", "v3_v3", "latest", "v1_v7"):
        with pytest.raises(AlloyError, match="release_version"):
            release_files(bad)


def test_release_and_window_select_problems(release_dir):
    rows = sorted(raw_rows(), key=lambda row: row["contest_date"])
    ids = [row["question_id"] for row in rows]
    assert ids_of(load_problems(str(release_dir), "release_v1")) == sorted(ids[:8])
    assert ids_of(load_problems(str(release_dir), "release_v2")) == sorted(ids[:14])
    assert ids_of(load_problems(str(release_dir), "v2")) == sorted(ids[8:14])
    assert ids_of(load_problems(str(release_dir), "v2_v3")) == sorted(ids[8:])
    assert ids_of(load_problems(str(release_dir))) == sorted(ids)  # release_latest: the files present
    with pytest.raises(AlloyError, match="test4.jsonl"):
        load_problems(str(release_dir), "release_v4")
    # the date window is kept, inclusive at both ends, together with the release
    window = load_problems(str(release_dir), "release_v2", start_date="2023-08-01", end_date="2023-09-30")
    expected = [row["question_id"] for row in rows[:14] if "2023-08-01" <= row["contest_date"][:10] <= "2023-09-30"]
    assert expected and ids_of(window) == sorted(expected)
    assert ids_of(load_problems(str(release_dir), start_date=date(2023, 5, 7), end_date=date(2023, 5, 7))) == ["2777", "2779"]
    with pytest.raises(AlloyError, match="after its end"):
        load_problems(str(release_dir), start_date="2024-01-01", end_date="2023-01-01")


def test_single_local_file_takes_a_window_not_a_release(tmp_path):
    (tmp_path / "livecodebench_subset.jsonl").write_bytes((DATA / "livecodebench_subset.jsonl").read_bytes())
    assert len(load_problems(str(tmp_path))["test"]) == 20
    assert len(load_problems(str(tmp_path), start_date="2023-12-01")["test"]) == 3
    with pytest.raises(AlloyError, match="single file"):
        load_problems(str(tmp_path), "release_v2")
    docs = process_docs(load_problems(str(tmp_path))["test"])
    assert "private_test_cases" not in docs.column_names and len(docs) == 20


def test_loading_checks_the_opt_in_and_the_sandbox_first(release_dir, monkeypatch, tmp_path):
    monkeypatch.delenv(OPT_IN_ENV)
    with pytest.raises(AlloyError, match=OPT_IN_ENV):
        load_problems(str(release_dir))
    monkeypatch.setenv(OPT_IN_ENV, "1")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AlloyError, match="bubblewrap"):
        load_problems(str(release_dir))


def test_window_overrides_are_task_metadata(release_dir):
    from lm_eval.tasks import TaskManager

    from alloy.evaluation.datasets import task_overrides, task_spec

    manager = TaskManager(include_path=str(Path(__file__).resolve().parents[1] / "evaluators"), include_defaults=False)
    overrides = window_overrides(release="release_v2", start_date="2023-06-01")
    assert overrides == {"metadata": {"release_version": "release_v2", "start_date": "2023-06-01"}}
    spec = task_spec("livecodebench", manager, {**task_overrides("livecodebench", release_dir), **overrides})
    assert spec["metadata"]["version"] == 1.0  # merged into the task's own metadata
    task = manager.load([spec])["tasks"]["livecodebench"]
    rows = sorted(raw_rows(), key=lambda row: row["contest_date"])[:14]
    assert sorted(doc["id"] for doc in task.eval_docs) == sorted(r["question_id"] for r in rows if r["contest_date"] >= "2023-06-01")
    with pytest.raises(AlloyError, match="after its end"):
        window_overrides(start_date="2024-01-01", end_date="2023-01-01")
    with pytest.raises(AlloyError, match="release_version"):
        window_overrides(release="release_v9")
