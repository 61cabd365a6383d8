"""alloy's lm-eval tasks load offline from local JSONL, in the seeded nested order, and lm-eval
aggregates their metrics as intended (repeats averaged, pass@1_<difficulty> over its own docs)."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from alloy.errors import AlloyError  # noqa: E402
from alloy.evaluation.datasets import (  # noqa: E402
    TASKS,
    gpqa_records,
    local_file,
    order_key,
    task_overrides,
    task_spec,
)
from alloy.evaluation.livecodebench import build_prompt, public_tests, function_name  # noqa: E402
from alloy.sandbox import OPT_IN_ENV  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning", "ignore:Use TaskManager.load:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVALUATORS = ROOT / "evaluators"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def gpqa_rows(count: int = 12) -> list[dict]:
    """Synthetic questions in GPQA's raw column format (GPQA itself is not redistributed)."""
    return [
        {
            "Question": f"Synthetic question {i}: which value is {i * 7}?",
            "Correct Answer": f"{i * 7}",
            "Incorrect Answer 1": f"{i * 7 + 1}",
            "Incorrect Answer 2": f" {i * 7 + 2} [title] note",
            "Incorrect Answer 3": f"{i * 7 + 3}",
            "Record ID": f"rec{i:03d}",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaldata")
    for name in ("aime24.jsonl", "math500_50.jsonl", "livecodebench_subset.jsonl"):
        (folder / name).write_bytes((DATA / name).read_bytes())
    write_jsonl(
        folder / "aime25.jsonl",
        [{"id": f"2025-I-{i}", "problem": f"Synthetic AIME problem {i}.", "answer": str(i * 37 % 1000)} for i in range(1, 9)],
    )
    write_jsonl(folder / "gpqa_diamond.jsonl", gpqa_rows())
    return folder


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(EVALUATORS), include_defaults=False)


def load(task_manager, name: str, data_dir: Path, **extra):
    from lm_eval.tasks import get_task_dict

    spec = task_spec(name, task_manager, {**task_overrides(name, data_dir), **extra})
    return get_task_dict([spec], task_manager)[name]


def test_every_task_is_indexed(task_manager):
    assert set(TASKS) <= set(task_manager.all_subtasks)


def test_local_file_resolution(task_manager, data_dir, tmp_path):
    assert local_file("math500", data_dir).name == "math500_50.jsonl"
    assert local_file("livecodebench", data_dir).name == "livecodebench_subset.jsonl"
    assert local_file("aime24", DATA).name == "aime24.jsonl"
    with pytest.raises(AlloyError, match="gpqa_diamond.jsonl"):
        local_file("gpqa_diamond", DATA)
    with pytest.raises(AlloyError, match="does not exist"):
        local_file("aime24", tmp_path / "missing")
    (tmp_path / "aime25_a.jsonl").write_text("")
    (tmp_path / "aime25_b.jsonl").write_text("")
    with pytest.raises(AlloyError, match="several files"):
        local_file("aime25", tmp_path)
    with pytest.raises(AlloyError, match="unknown evaluation task"):
        task_overrides("mmlu", data_dir)
    assert task_overrides("aime24", None) == {}
    hub = {"alloy_task": "aime24", "hub_path": "HuggingFaceH4/aime_2024", "hub_split": "train"}
    assert task_spec("aime24", task_manager, {})["dataset_kwargs"] == hub
    merged = task_spec("aime24", task_manager, task_overrides("aime24", data_dir))["dataset_kwargs"]
    assert merged == {**hub, "data_dir": str(data_dir.resolve())}


@pytest.mark.parametrize("name, count", [("aime24", 30), ("aime25", 8), ("gpqa_diamond", 12), ("livecodebench", 20), ("math500", 50)])
def test_tasks_load_offline_in_seeded_order(task_manager, data_dir, name, count, monkeypatch):
    monkeypatch.setenv(OPT_IN_ENV, "1")
    task = load(task_manager, name, data_dir)
    docs = list(task.eval_docs)
    assert len(docs) == count
    ids = [doc["id"] for doc in docs]
    assert ids == sorted(ids, key=order_key)
    # lm-eval's limit=n takes the first n of that order: rung 2n contains rung n
    first = [doc["id"] for _, doc in task.doc_iterator(limit=4)]
    second = [doc["id"] for _, doc in task.doc_iterator(limit=8)]
    assert first == ids[:4] and second[:4] == first
    prompt = task.doc_to_text(docs[0])
    if name == "livecodebench":
        assert prompt == build_prompt(docs[0])
        assert task.UNSAFE_CODE
    elif name == "gpqa_diamond":
        assert docs[0]["question"] in prompt and "(D) " + docs[0]["choice4"] in prompt
        assert task.doc_to_target(docs[0]) in {"(A)", "(B)", "(C)", "(D)"}
    else:
        assert docs[0]["problem"] in prompt and "\\boxed{}" in prompt
        assert task.doc_to_target(docs[0]) == docs[0]["answer"]


def test_a_loaded_suite_keeps_each_tasks_processed_documents(data_dir):
    """lm-eval re-runs a task's `process_docs` on every look at its documents; a TaskSuite keeps them
    processed once, in the same seeded order."""
    from alloy.evaluation.harness import TaskSuite

    suite = TaskSuite.load(["aime24", "gpqa_diamond"], data_dir=data_dir)
    for name, task in suite.tasks.items():
        assert task.eval_docs is task.eval_docs, name
        ids = [doc["id"] for doc in task.eval_docs]
        assert ids == sorted(ids, key=order_key) and len(ids) == suite.size(name)
        assert ids == [doc["id"] for doc in load(suite.manager, name, data_dir).eval_docs]


def test_order_does_not_depend_on_file_order(task_manager, data_dir, tmp_path):
    rows = [json.loads(line) for line in (DATA / "aime24.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "aime24.jsonl", list(reversed(rows)))
    original = [doc["id"] for doc in load(task_manager, "aime24", data_dir).eval_docs]
    reversed_file = [doc["id"] for doc in load(task_manager, "aime24", tmp_path).eval_docs]
    assert original == reversed_file


def test_gpqa_shuffle_reproduces_lm_eval():
    import datasets
    from lm_eval.tasks.gpqa.cot_zeroshot import utils as lm_eval_gpqa

    rows = gpqa_rows(40)
    state = random.getstate()
    try:
        random.seed(0)  # what lm-eval's simple_evaluate does before building tasks
        reference = list(lm_eval_gpqa.process_docs(datasets.Dataset.from_list(rows)))
    finally:
        random.setstate(state)
    ours = gpqa_records(rows)
    assert [r["answer"] for r in ours] == [r["answer"] for r in reference]
    assert [r["choices"] for r in ours] == [r["choices"] for r in reference]
    assert len({r["answer"] for r in ours}) > 1
    assert gpqa_records(rows) == ours  # reproducible, whatever the global random state
    for record in ours:
        correct = rows[int(record["id"][3:])]["Correct Answer"]
        assert record["choice" + str("ABCD".index(record["answer"][1]) + 1)] == correct


def letter_counts(records) -> dict[str, int]:
    counts = {f"({letter})": 0 for letter in "ABCD"}
    for record in records:
        counts[record["answer"]] += 1
    return counts


def test_gpqa_correct_letter_is_spread_over_a_to_d(task_manager, tmp_path):
    rows = gpqa_rows(198)  # GPQA Diamond's size, in its raw record format
    write_jsonl(tmp_path / "gpqa_diamond.jsonl", rows)
    docs = list(load(task_manager, "gpqa_diamond", tmp_path).eval_docs)
    counts = letter_counts(docs)
    # each letter ~ Binomial(198, 1/4): mean 49.5, sd 6.1
    assert all(30 <= count <= 70 for count in counts.values()), counts
    for doc in docs:  # the letter points at the correct answer's text
        correct = rows[int(doc["id"][3:])]["Correct Answer"].strip()
        assert doc["choice" + str("ABCD".index(doc["answer"][1]) + 1)] == correct
    # the check catches the known failure: a fresh Random(42) per question puts every answer in one place
    fixed = []
    for row in rows:
        choices = [row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"], row["Correct Answer"]]
        random.Random(42).shuffle(choices)
        fixed.append({"answer": f"({'ABCD'[choices.index(row['Correct Answer'])]})"})
    assert max(letter_counts(fixed).values()) == len(rows)


def oracle_solution(problem: dict) -> str:
    """A program that answers exactly the public tests (to drive lm-eval's scoring end to end)."""
    tests = public_tests(problem)
    table = {test.input: test.output for test in tests}
    if tests[0].testtype == "stdin":
        return f"import sys\nprint({table!r}[sys.stdin.read()], end='')\n"
    method = function_name(problem)
    answers = {json.dumps([json.loads(line) for line in t.input.split("\n") if line.strip()]): json.loads(t.output) for t in tests}
    return (
        "import json\nclass Solution:\n"
        f"    def {method}(self, *args):\n"
        f"        return {answers!r}[json.dumps(list(args))]\n"
    )


def make_fake_lm(answer_for):
    """An lm-eval LM whose k-th generation for a prompt is answer_for(prompt, k)."""
    from lm_eval.api.model import LM

    class FakeLM(LM):
        def __init__(self):
            super().__init__()
            self.calls: dict[str, int] = {}

        def generate_until(self, requests, disable_tqdm: bool = False):
            outputs = []
            for request in requests:
                prompt = request.args[0]
                k = self.calls.get(prompt, 0)
                self.calls[prompt] = k + 1
                outputs.append(answer_for(prompt, k))
            return outputs

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError

    return FakeLM()


def test_repeats_are_averaged_by_lm_eval(task_manager, data_dir):
    from lm_eval.evaluator import simple_evaluate

    docs = list(load(task_manager, "aime24", data_dir).eval_docs)
    answers = {doc["problem"]: doc["answer"] for doc in docs}

    def answer_for(prompt: str, k: int) -> str:
        problem = next(p for p in answers if prompt.startswith(p))
        return f"\\boxed{{{answers[problem]}}}" if k == 0 else "\\boxed{1}"

    spec = task_spec("aime24", task_manager, {**task_overrides("aime24", data_dir), "repeats": 2})
    results = simple_evaluate(model=make_fake_lm(answer_for), tasks=[spec], task_manager=task_manager, limit=6)
    metrics = results["results"]["aime24"]
    assert metrics["exact_match,none"] == pytest.approx(0.5)


def test_livecodebench_metrics_aggregate_per_difficulty(task_manager, data_dir, monkeypatch):
    from lm_eval.evaluator import simple_evaluate

    monkeypatch.setenv(OPT_IN_ENV, "1")
    docs = list(load(task_manager, "livecodebench", data_dir).eval_docs)[:10]
    by_prompt = {build_prompt(doc): doc for doc in docs}
    solved = {doc["id"] for i, doc in enumerate(docs) if i % 2 == 0}

    def answer_for(prompt: str, k: int) -> str:
        doc = by_prompt[prompt]
        return f"```python\n{oracle_solution(doc)}```" if doc["id"] in solved else "I do not know."

    results = simple_evaluate(
        model=make_fake_lm(answer_for),
        tasks=[task_spec("livecodebench", task_manager, task_overrides("livecodebench", data_dir))],
        task_manager=task_manager,
        limit=10,
        confirm_run_unsafe_code=True,
    )
    metrics = results["results"]["livecodebench"]
    assert metrics["pass@1,none"] == pytest.approx(len(solved) / len(docs))
    for difficulty in ("easy", "medium", "hard"):
        of_kind = [doc for doc in docs if doc["difficulty"] == difficulty]
        key = f"pass@1_{difficulty},none"
        if not of_kind:
            assert key not in metrics
            continue
        expected = sum(doc["id"] in solved for doc in of_kind) / len(of_kind)
        assert metrics[key] == pytest.approx(expected), difficulty


def test_alloy_data_dir_serves_plain_lm_eval_and_alloy(task_manager, data_dir, monkeypatch, tmp_path):
    from alloy.evaluation.datasets import DATA_DIR_ENV
    from alloy.evaluation.harness import TaskSuite

    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    task = task_manager.load(["aime24"])["tasks"]["aime24"]  # the registered task, no overrides
    assert len(task.eval_docs) == 30
    assert TaskSuite.load(["math500"], evaluators=EVALUATORS).size("math500") == 50
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # a folder without the task's file
    with pytest.raises(AlloyError, match="no data for task 'aime24'"):
        TaskSuite.resolve(["aime24"], evaluators=EVALUATORS)
