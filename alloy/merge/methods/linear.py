"""`linear` (weighted average of the models) and `passthrough` (one model, copied or scaled)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alloy.merge.methods.common import (
    bool_param,
    define_method,
    normalized,
    weight_param,
    weighted_sum,
)
from alloy.merge.methods.spec import MergeInputs, ParamSpec


def linear(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """Σ w_i·W_i over every listed model (a listed base is an ordinary model), divided by Σ w_i when
    `normalize`."""
    weights = [float(mp["weight"]) for mp in inputs.model_params]
    if params["normalize"]:
        return weighted_sum(inputs.tensors, normalized(weights, inputs, "linear"), convex=True, out=inputs.out)
    return weighted_sum(inputs.tensors, weights, out=inputs.out)


def passthrough(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """The one model's tensor, copied, times its `scale`."""
    return weighted_sum(inputs.tensors, [float(inputs.model_params[0]["scale"])], out=inputs.out)


LINEAR = define_method(
    linear,
    name="linear",
    doc=("Weighted average of the models' tensors (mergekit `linear`). A listed base model is one of the "
         "averaged models. With `normalize` (default) the weights are divided by their sum, which must "
         "not be zero (mergekit would divide by zero); a weight of exactly zero skips that model, so "
         "one-hot weights return that model's tensor bit for bit."),
    formula=r"W = \sum_i w_i W_i / \sum_i w_i",
    params=(bool_param("normalize", True, "divide by the sum of the weights"),),
    model_params=(weight_param(),),
    base_is_model=True,
    weights_include_base=True,
)

PASSTHROUGH = define_method(
    passthrough,
    name="passthrough",
    doc=("Copies the tensor of the single listed model (mergekit `passthrough`), multiplied by its optional "
         "per-model `scale`. mergekit's `scale` defaults to none; here it defaults to 1.0, which copies "
         "the tensor unchanged."),
    formula=r"W = s \cdot W_1",
    model_params=(ParamSpec("scale", "float", 1.0, "factor applied to the copied tensor",
                            search_low=0.0, search_high=1.0),),
    min_models=1,
    max_models=1,
    base_is_model=True,
)
