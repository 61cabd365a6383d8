"""alloy's merge methods: pure tensor functions with typed specs, under mergekit's names.

`METHODS` maps every method name to its `MethodSpec`; `get_method` looks one up.
"""
from __future__ import annotations

from alloy.errors import AlloyError
from alloy.merge.methods.aoe import AOE
from alloy.merge.methods.arcee_fusion import ARCEE_FUSION
from alloy.merge.methods.linear import LINEAR, PASSTHROUGH
from alloy.merge.methods.model_stock import MODEL_STOCK
from alloy.merge.methods.slerp import NUSLERP, SLERP
from alloy.merge.methods.spec import MergeInputs, MethodSpec, ParamSpec
from alloy.merge.methods.task_arithmetic import TASK_ARITHMETIC_METHODS

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (LINEAR, AOE, *TASK_ARITHMETIC_METHODS, SLERP, NUSLERP, MODEL_STOCK, ARCEE_FUSION, PASSTHROUGH)
}


def get_method(name: str) -> MethodSpec:
    """The spec of merge method `name`; AlloyError listing the known names for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise AlloyError(f"unknown merge method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "MergeInputs", "MethodSpec", "ParamSpec", "get_method"]
