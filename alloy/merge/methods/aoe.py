"""`aoe`, Assembly of Experts: the linear combination of the models, except that a tensor every model
keeps within `threshold` of the base is copied from the base."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from alloy.errors import AlloyError
from alloy.merge.methods.common import (
    define_method,
    normalized,
    squared_distance,
    weight_param,
    weighted_sum,
)
from alloy.merge.methods.spec import MergeInputs, ParamSpec

THRESHOLD_NORMS = ("relative", "rms")


def tensor_distance(model: torch.Tensor, base: torch.Tensor, norm: str = "relative") -> float:
    """Normalized Frobenius distance of `model` to `base` (see `squared_distance` for its accuracy).

    `relative`: ‖model − base‖_F / ‖base‖_F (infinite when the base is all zeros and the model is not);
    `rms`: ‖model − base‖_F / √n for n elements.
    """
    if norm not in THRESHOLD_NORMS:
        raise AlloyError(f"unknown threshold_norm {norm!r}; choose one of {list(THRESHOLD_NORMS)}")
    squared = squared_distance(model, base)
    base_squared = squared_distance(base) if norm == "relative" and squared > 0.0 else 0.0
    return normalized_distance(squared, base_squared, base.numel(), norm)


def normalized_distance(squared: float, base_squared: float, n: int, norm: str) -> float:
    """The distance from ‖W − W_base‖² (`squared`), ‖W_base‖² and the element count n."""
    if squared == 0.0:
        return 0.0
    if norm == "rms":
        return math.sqrt(squared / n)
    return math.sqrt(squared / base_squared) if base_squared > 0.0 else math.inf


def aoe(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """The base tensor (copied) when every model is within `threshold` of it, else the normalized linear
    combination of all listed models."""
    base = inputs.base
    weights = normalized([float(mp["weight"]) for mp in inputs.model_params], inputs, "aoe")
    threshold, norm = float(params["threshold"]), params["threshold_norm"]

    known = inputs.base_distances or [None] * len(inputs.tensors)
    base_squared: list[float] = []  # ‖W_base‖², measured once for all models when a distance needs it

    def distance(t: torch.Tensor) -> float:
        squared = squared_distance(t, base)
        if norm == "relative" and squared > 0.0 and not base_squared:
            base_squared.append(squared_distance(base))
        return normalized_distance(squared, base_squared[0] if base_squared else 0.0, base.numel(), norm)

    def near(i: int, t: torch.Tensor) -> bool:
        if i == inputs.base_index or t is base:
            return True
        if known[i] is not None:
            return known[i][norm] <= threshold
        # At threshold 0 only an identical tensor is near: one comparison pass, no sums.
        return torch.equal(t, base) if threshold == 0.0 else distance(t) <= threshold

    if all(near(i, t) for i, t in enumerate(inputs.tensors)):
        return inputs.out.copy_(base) if inputs.out is not None else base.clone()
    return weighted_sum(inputs.tensors, weights, convex=True, out=inputs.out)


AOE = define_method(
    aoe,
    name="aoe",
    doc=("Assembly of Experts (TNG, arXiv 2506.14794): the `linear` combination of all listed models, a "
         "listed base included, with weights normalized to sum 1; but when every model's distance to the "
         "base is at most `threshold` the base tensor is copied bit for bit. The distance is "
         "‖W_i − W_base‖_F / ‖W_base‖_F (`threshold_norm: relative`) or ‖W_i − W_base‖_F / √n (`rms`), "
         "computed in float64; with threshold 0 a set of models identical to the base returns the base."),
    formula=r"W = W_{base} if \max_i d(W_i, W_{base}) \le \delta, else \sum_i w_i W_i / \sum_i w_i",
    params=(
        ParamSpec("threshold", "float", 0.0, "largest distance to the base at which the base is kept",
                  low=0.0, search_low=1e-4, search_high=1.0, log=True),
        ParamSpec("threshold_norm", "str", "relative",
                  "distance: `relative` (‖ΔW‖_F / ‖W_base‖_F) or `rms` (‖ΔW‖_F / √n)",
                  choices=THRESHOLD_NORMS),
    ),
    model_params=(weight_param("the model's coefficient λ_i (normalized to sum 1)"),),
    needs_base=True,
    min_models=1,
    always_normalizes=True,
    weights_include_base=True,
)
