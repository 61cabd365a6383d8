"""A tiny teacher that knows the answers: problem files in the evaluators' formats, and a tiny MoE model
trained on correct traces for exactly those prompts (so sampling it yields traces the scorers verify)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from alloy.branch.problems import read_problems
from alloy.demo.backbone import build_backbone
from alloy.demo.domains import split_domain

# domain -> (evaluation task whose local file the problems are written to, demo domain that makes them)
DOMAINS = {"math": "aime24", "science": "gpqa_diamond"}


def write_problems(data_dir: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """`data_dir/<task>.jsonl` for each domain (also readable by `alloy eval --data-dir`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for domain, task in DOMAINS.items():
        files[domain] = data_dir / f"{task}.jsonl"
        files[domain].write_text("".join(json.dumps(i.record) + "\n" for i in split_domain(domain, n, 0, seed)[0]))
    return files


def correct_traces(files: dict[str, Path], seed: int = 0) -> list[dict[str, str]]:
    """A correct trace per problem, with the prompt `alloy traces` shows (GPQA letters of its shuffle)."""
    traces = []
    for domain, path in files.items():
        items = split_domain(domain, sum(1 for _ in path.open()), 0, seed)[0]
        for problem, item in zip(read_problems(path, domain), items, strict=True):
            response = item.trace["response"]
            if domain == "science":
                response = re.sub(r"\([ABCD]\)", problem.answer, response)
            traces.append({"prompt": problem.prompt, "response": response})
    return traces


def memorizing_teacher(out: Path, files: dict[str, Path], steps: int = 120) -> Path:
    """The tiny teacher, trained on `correct_traces(files)` (reused when `out` holds it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train faster on one thread than on two busy cores
    try:
        return build_backbone(out, correct_traces(files), steps=steps, batch_size=8, max_length=256, vocab_size=400)
    finally:
        torch.set_num_threads(threads)


def teacher_workspace(base: Path, n: int = 4) -> dict[str, Path | dict[str, Path]]:
    """Problems and their memorizing teacher under `base` (a session's base temp folder: built once)."""
    files = write_problems(base / "teacher-data", n)
    return {"files": files, "teacher": memorizing_teacher(base / "memorizing-teacher", files)}
