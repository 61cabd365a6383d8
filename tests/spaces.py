"""Search spaces for tests: a synthetic-runner space over three parents, written as YAML."""
from __future__ import annotations

from pathlib import Path

import yaml


def space_dict(**overrides) -> dict:
    """A synthetic-runner space over three parents A, B, C (paths under parents.root)."""
    data = {
        "name": "test",
        "parents": {"root": "parents", "base": "A", "models": {"A": "a", "B": "b", "C": "c"}},
        "default": {"merge_method": "linear", "weights": "simplex"},
        "groups": {"routed_experts": {"merge_method": "aoe", "weights": "simplex",
                                      "parameters": {"threshold": {"low": 1e-4, "high": 1.0, "log": True}}}},
        "objectives": ["aime24/exact_match"],
        "evaluation": {"runner": "synthetic", "tasks": ["aime24"], "rungs": [4, 8, 16],
                       "synthetic": {"target": {"A": 0.2, "B": 0.5, "C": 0.3},
                                     "group_targets": {"routed_experts": {"A": 0.1, "B": 0.1, "C": 0.8}},
                                     "noise": 0.0}},
        "search": {"sampler": "tpe", "seed": 0, "trials": 8, "concurrency": 2, "resources": {"cpu": 1}},
    }
    data.update(overrides)
    return data


def write_space(folder: Path, data: dict | None = None, make_parents: bool = True) -> Path:
    """Write a space YAML into `folder` (and its parent folders when asked); return the file."""
    data = data or space_dict()
    if make_parents:
        for label in ("a", "b", "c"):
            (folder / "parents" / label).mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def final_result(rung: int, score: float) -> dict:
    """A trial's Tune result at `rung` with its aime24 score (what the sweep's searcher is told)."""
    return {"rung": rung, "aime24/exact_match": score, "recipe_hash": "h", "training_iteration": rung + 1}
