"""Where alloy's evaluation tasks read their documents from, and in which order.

Every task loads through an lm-eval `custom_dataset` function (`load_task_dataset`; LiveCodeBench's
`alloy.evaluation.livecodebench.load_problems`), which reads a local data folder when one is given
and the task's public Hugging Face dataset otherwise. The folder is the task's
`dataset_kwargs.data_dir` (alloy's `--data-dir`, set by `task_overrides`), else the environment
variable ALLOY_DATA_DIR, so that plain `lm_eval --include_path evaluators` runs offline:
`ALLOY_DATA_DIR=../shared/data lm_eval --model hf ... --tasks aime24`. In the folder a task reads
`<task>.jsonl`, else the single `<task>*.jsonl`. `task_spec(name, task_manager,
task_overrides(name, data_dir))` is the task config with the overrides applied, ready for
`TaskManager.load` or `get_task_dict`.

`ordered_docs` puts a task's documents in a fixed seeded order keyed on each document's id, so that
lm-eval's `limit=n` takes the first n of one order and a rung of 2n documents contains the rung of n
(nested subsets for successive halving), whatever the order of the source file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alloy.errors import AlloyError

if TYPE_CHECKING:
    import datasets

TASKS: tuple[str, ...] = ("aime24", "aime25", "gpqa_diamond", "livecodebench", "math500")
ORDER_SEED = 1234
LOCAL_SPLIT = "test"
DATA_DIR_ENV = "ALLOY_DATA_DIR"


def data_dir_of(data_dir: str | Path | None) -> Path | None:
    """The local data folder: `data_dir` if given, else $ALLOY_DATA_DIR, else None (the Hub)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    return None if data_dir is None else Path(data_dir).resolve()


def local_file(task: str, data_dir: Path) -> Path:
    """The local data of `task` in `data_dir`: `<task>.jsonl`, else the single `<task>*.jsonl`;
    for livecodebench also a folder `livecodebench/` holding the release files test*.jsonl."""
    _check_task(task)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise AlloyError(f"evaluation data folder {data_dir} does not exist; pass a folder holding {task}.jsonl")
    exact = data_dir / f"{task}.jsonl"
    if exact.is_file():
        return exact
    if task == "livecodebench" and any((data_dir / task).glob("test*.jsonl")):
        return data_dir / task
    matches = sorted(path for path in data_dir.glob(f"{task}*.jsonl") if path.is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AlloyError(
            f"no data for task {task!r} in {data_dir}: expected {task}.jsonl or a single file "
            f"matching {task}*.jsonl"
        )
    raise AlloyError(
        f"several files for task {task!r} in {data_dir} ({', '.join(p.name for p in matches)}); "
        f"name the one to use {task}.jsonl"
    )


def task_overrides(task: str, data_dir: Path | None) -> dict[str, Any]:
    """lm-eval task-config overrides that make `task` read its local data from `data_dir` (checked
    now); `{}` when data_dir is None (the task then reads $ALLOY_DATA_DIR or its Hub dataset)."""
    _check_task(task)
    if data_dir is None:
        return {}
    local_file(task, Path(data_dir))
    return {"dataset_kwargs": {"data_dir": str(Path(data_dir).resolve())}}


_MERGED_KEYS = ("dataset_kwargs", "metadata")


def task_spec(task: str, task_manager: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of `task` (any task of `task_manager`'s index) with `overrides` applied, for
    lm-eval's `TaskManager.load` / `get_task_dict`; `dataset_kwargs` and `metadata` overrides are
    merged key by key into the task's own, other keys replace the task's.

    lm-eval 0.4.13 takes a top-level dict `{"task": name, ...}` as a complete inline task, not as
    overrides of the registered task of that name; so this loads the task's own YAML config
    (functions resolved) and merges the overrides into it.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise AlloyError(
            f"task {task!r} is not in the lm-eval task index; create the TaskManager with "
            "include_path pointing at alloy's evaluators/ folder"
        )
    config = load_yaml(entry.yaml_path, resolve_func=True)
    overrides = dict(overrides or {})
    for key in _MERGED_KEYS:
        if key in overrides:
            overrides[key] = {**(config.get(key) or {}), **overrides[key]}
    return {**config, **overrides, "task": task}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; AlloyError naming the file and line on bad JSON."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise AlloyError(f"{path}:{number}: not a JSON record ({exc})") from exc
    return records


def load_task_dataset(alloy_task: str, hub_path: str, hub_split: str, hub_name: str | None = None,
                      data_dir: str | None = None, **_metadata: Any) -> "datasets.DatasetDict":
    """lm-eval's `custom_dataset` of alloy's tasks: `{"test": records}` read from the local data
    folder (`data_dir`, else $ALLOY_DATA_DIR) when there is one, else from split `hub_split` of the
    Hub dataset `hub_path` (config `hub_name`). Other keyword arguments (lm-eval passes the task's
    metadata and the model arguments) are ignored."""
    import datasets

    folder = data_dir_of(data_dir)
    if folder is not None:
        records = read_jsonl(local_file(alloy_task, folder))
        return datasets.DatasetDict({LOCAL_SPLIT: datasets.Dataset.from_list(records)})
    return datasets.DatasetDict({LOCAL_SPLIT: datasets.load_dataset(hub_path, hub_name, split=hub_split)})


def order_key(doc_id: str, seed: int = ORDER_SEED) -> str:
    """The sort key of a document in the seeded order: a hash of the seed and the document id."""
    return hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).hexdigest()


def ordered_docs(
    dataset: "datasets.Dataset | list[dict]",
    normalize: Callable[[dict], dict],
    seed: int = ORDER_SEED,
) -> "datasets.Dataset":
    """Normalize every record (`normalize` returns a dict with a string `id`) and return them as a
    Dataset in the seeded order. Raises AlloyError on duplicate ids (the order would be ambiguous)."""
    import datasets

    records = [normalize(dict(record)) for record in dataset]
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted({doc_id for doc_id in ids if ids.count(doc_id) > 1})[:5]
        raise AlloyError(f"duplicate document ids {duplicates}: every record needs a unique id")
    records.sort(key=lambda record: order_key(record["id"], seed))
    if not records:
        return datasets.Dataset.from_dict({})
    return datasets.Dataset.from_list(records)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise AlloyError(f"unknown evaluation task {task!r}; alloy's tasks are {', '.join(TASKS)}")


# ---------------------------------------------------------------------------- record shapes


def _first(raw: dict, names: tuple[str, ...], what: str, task: str) -> Any:
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    raise AlloyError(f"{task} record lacks its {what} (one of the fields {', '.join(names)}): {sorted(raw)}")


def _content_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def math_record(raw: dict, task: str) -> dict:
    """`{id, problem, answer}` from hub or local AIME / MATH-500 rows (id, ID or unique_id;
    problem, Problem or question; answer or Answer). Records without an id get one from the
    problem text, so the order never depends on the file's order."""
    problem = str(_first(raw, ("problem", "Problem", "question"), "problem", task))
    answer = str(_first(raw, ("answer", "Answer"), "answer", task)).strip()
    doc_id = next((raw[k] for k in ("id", "ID", "unique_id") if raw.get(k) not in (None, "")), None)
    return {"id": str(doc_id) if doc_id is not None else _content_id(problem), "problem": problem, "answer": answer}


def _clean_choice(text: Any) -> str:
    """Choice text cleaned as lm-eval's GPQA tasks do (strip, " [title]" -> ". ", no double spaces)."""
    if text is None:
        return " "
    return str(text).strip().replace(" [title]", ". ").replace("  ", " ")


GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
GPQA_SHUFFLE_SEED = 0


def gpqa_records(dataset: "datasets.Dataset | list[dict]", seed: int = GPQA_SHUFFLE_SEED) -> list[dict]:
    """GPQA rows with their four answers shuffled into choice1..choice4 and `answer` "(A)".."(D)".

    Reproduces lm-eval's gpqa tasks: one `random.shuffle` per row, in file order, from a generator
    seeded with lm-eval's default seed 0; the records also get `id` (id, Record ID, or a hash of
    the question) and `question`.
    """
    import random

    rng = random.Random(seed)
    records = []
    for raw in dataset:
        raw = dict(raw)
        missing = [column for column in GPQA_COLUMNS if column not in raw]
        if missing:
            raise AlloyError(f"gpqa_diamond record lacks columns {missing}; expected the raw GPQA columns {GPQA_COLUMNS}")
        correct = _clean_choice(raw["Correct Answer"])
        choices = [_clean_choice(raw[f"Incorrect Answer {i}"]) for i in (1, 2, 3)] + [correct]
        rng.shuffle(choices)
        doc_id = next((raw[k] for k in ("id", "Record ID") if raw.get(k) not in (None, "")), None)
        record = {
            "id": str(doc_id) if doc_id is not None else _content_id(str(raw["Question"])),
            "question": str(raw["Question"]),
            "choices": choices,
            "answer": f"({'ABCD'[choices.index(correct)]})",
        }
        record.update({f"choice{i + 1}": choice for i, choice in enumerate(choices)})
        records.append(record)
    return records
