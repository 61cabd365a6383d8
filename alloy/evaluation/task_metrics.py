"""The metric names an evaluation reports for a task, known without running it.

A task's scores are the `metric_list` of its lm-eval YAML in the evaluators folder (following
`include:`), each with its interval bounds (`.lo`, `.hi`); besides them every task reports its output
and thinking-token statistics. `EvalResult.metrics()` names them `task/metric`, as search spaces do.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from alloy.errors import AlloyError

TOKEN_STATISTICS = tuple(f"{kind}_tokens_{stat}" for kind in ("output", "thinking") for stat in ("mean", "median", "p90"))


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval task YAML: `!function module.name` read as its text."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def score_names(task: str, evaluators: str | Path | None = None) -> tuple[str, ...]:
    """The score metrics of `task` as its YAML's metric_list declares them (e.g. ('exact_match',))."""
    from alloy.evaluation.harness import evaluators_dir

    return _score_names(task, str(evaluators_dir(evaluators)))


@lru_cache(maxsize=None)
def _score_names(task: str, folder: str) -> tuple[str, ...]:
    for path in sorted(Path(folder).rglob("*.yaml")):
        config = _load(path)
        if config.get("task") == task:
            while "metric_list" not in config and "include" in config:
                config = {**_load(path.parent / config.pop("include")), **config}
            return tuple(m["metric"] for m in config.get("metric_list") or [])
    raise AlloyError(f"evaluation task {task!r} has no YAML in {folder}")


def reported_metrics(task: str, evaluators: str | Path | None = None) -> tuple[str, ...]:
    """Every `task/...` metric an evaluation of `task` reports: scores, their bounds, token statistics."""
    scores = score_names(task, evaluators)
    names = [f"{task}/{m}{suffix}" for m in scores for suffix in ("", ".lo", ".hi")]
    return (*names, *(f"{task}/{s}" for s in TOKEN_STATISTICS))


def _load(path: Path) -> dict:
    try:
        return yaml.load(path.read_text(), Loader=_TaskYamlLoader) or {}
    except yaml.YAMLError as exc:
        raise AlloyError(f"{path}: not valid YAML ({exc})") from None
