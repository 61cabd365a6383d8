"""Evaluation: lm-eval on in-memory children, output-token counts, budget forcing, nested rungs.

The public names below are imported on first use, so that importing `alloy.evaluation` stays light
(no torch, transformers or lm_eval until a name is used). Imports `alloy.sandbox` and `alloy.io`,
never the merge, worker or search layers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "alloy.evaluation.harness",
    "RungEvaluator": "alloy.evaluation.harness",
    "TaskSuite": "alloy.evaluation.harness",
    "EvalResult": "alloy.evaluation.harness",
    "TaskResult": "alloy.evaluation.harness",
    "SampleRecord": "alloy.evaluation.harness",
    "TokenStats": "alloy.evaluation.harness",
    "BudgetForcing": "alloy.evaluation.lm",
    "GenerationRecord": "alloy.evaluation.lm",
    "ThinkingHFLM": "alloy.evaluation.lm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alloy.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
