"""Spherical interpolation: `slerp` (base and one model, whole tensors) and `nuslerp` (two models by
their weights, over rows, columns or whole tensors, of the models or of their task vectors)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from alloy.merge.methods.common import (
    bool_param,
    define_method,
    float64_dot,
    float64_row_dot,
    other_models,
    weight_param,
    weight_sum,
    weighted_sum,
)
from alloy.merge.methods.spec import MergeInputs, ParamSpec

# slerp: |cos θ| above this counts as colinear and falls back to lerp (mergekit's DOT_THRESHOLD).
SLERP_DOT_THRESHOLD = 0.9995
# slerp: norms at or below this are not divided by (mergekit's eps).
SLERP_NORM_EPS = 1e-8
# nuslerp: norms are clamped to at least this, and 1 − cos²θ <= NUSLERP_EPS² counts as colinear.
NUSLERP_NORM_EPS = 1e-7
NUSLERP_EPS = 1e-8


def slerp(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """Interpolate from the base (t = 0) to the other model (t = 1) along the great circle through the
    two flattened tensors; lerp when they are (nearly) colinear."""
    t = float(params["t"])
    v0 = inputs.base
    v1 = inputs.tensors[other_models(inputs)[0]]
    n0 = math.sqrt(float64_dot(v0, v0))
    n1 = math.sqrt(float64_dot(v1, v1))
    n0, n1 = (n0 if n0 > SLERP_NORM_EPS else 1.0), (n1 if n1 > SLERP_NORM_EPS else 1.0)
    cos = min(1.0, max(-1.0, float64_dot(v0, v1) / (n0 * n1)))
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return torch.lerp(v0, v1, t)
    theta = math.acos(cos)
    sin_theta = math.sin(theta)
    return weighted_sum([v0, v1], [math.sin((1 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta])


def _nuslerp_coefficients(v00: torch.Tensor, v11: torch.Tensor, v01: torch.Tensor, t: float):
    """Coefficients (c0, c1) of v0 and v1, in float64, from the vectors' squared norms and dot product."""
    n0 = v00.sqrt().clamp_(min=NUSLERP_NORM_EPS)
    n1 = v11.sqrt().clamp_(min=NUSLERP_NORM_EPS)
    cos = (v01 / (n0 * n1)).clamp_(-1.0, 1.0)
    colinear = (1 - cos.square()) <= NUSLERP_EPS ** 2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin_theta = torch.where(colinear, torch.ones_like(theta), torch.sin(theta))
    c0 = torch.where(colinear, torch.full_like(theta, 1 - t), torch.sin((1 - t) * theta) / sin_theta)
    c1 = torch.where(colinear, torch.full_like(theta, t), torch.sin(t * theta) / sin_theta)
    return c0, c1


def nuslerp(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """Slerp between the two models (their task vectors when there is a base) at t = w_2 / (w_1 + w_2),
    over the whole tensor (`nuslerp_flatten`), its columns (`nuslerp_row_wise`) or its rows."""
    first, second = other_models(inputs)
    weights = [float(inputs.model_params[i]["weight"]) for i in (first, second)]
    t = weights[1] / weight_sum(weights, inputs, "nuslerp")
    v0, v1 = inputs.tensors[first], inputs.tensors[second]
    base = inputs.base
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    if params["nuslerp_flatten"] or v0.dim() < 2:
        stats = [torch.tensor(float64_dot(x, y), dtype=torch.float64) for x, y in ((v0, v0), (v1, v1), (v0, v1))]
        c0, c1 = (float(c) for c in _nuslerp_coefficients(*stats, t))
        out = weighted_sum([v0, v1], [c0, c1])
    else:
        # Vectors run along dim -1 (rows), or along dim 0 (columns) with nuslerp_row_wise, as mergekit.
        dim = 0 if params["nuslerp_row_wise"] else -1
        r0, r1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
        lead = r0.shape[:-1]
        r0, r1 = r0.reshape(-1, r0.shape[-1]), r1.reshape(-1, r1.shape[-1])
        stats = (float64_row_dot(r0, r0), float64_row_dot(r1, r1), float64_row_dot(r0, r1))
        c0, c1 = (c.to(v0.dtype).reshape(*lead, 1).transpose(dim, -1) for c in _nuslerp_coefficients(*stats, t))
        out = torch.mul(v0, c0).addcmul_(v1, c1)
    return out.add_(base) if base is not None else out


SLERP = define_method(
    slerp,
    name="slerp",
    doc=("Spherical linear interpolation (mergekit `slerp`) between the base (t = 0) and the one other "
         "model (t = 1), treating each tensor as one flattened vector; when |cos θ| > 0.9995 it falls back "
         "to linear interpolation. Norms and the dot product are accumulated in float64 (mergekit uses "
         "float32); t = 0 and t = 1 return the base and the model bit for bit."),
    formula=r"W = \frac{\sin((1-t)\theta)}{\sin\theta} W_{base} + \frac{\sin(t\theta)}{\sin\theta} W_1",
    params=(ParamSpec("t", "float", 0.5, "interpolation position: 0 is the base, 1 the other model",
                      low=0.0, high=1.0, search_low=0.0, search_high=1.0, required=True),),
    needs_base=True,
    min_models=1,
    max_models=1,
)

NUSLERP = define_method(
    nuslerp,
    name="nuslerp",
    doc=("mergekit's `nuslerp`: slerp between exactly two models at t = w_2 / (w_1 + w_2) (a weight sum "
         "of zero is an error here; mergekit uses t = 0.5). With a base model the task vectors W_i − W_base "
         "are interpolated and added to the base. `nuslerp_flatten` (default) treats the tensor as one "
         "vector; otherwise each row is interpolated on its own, or each column with `nuslerp_row_wise` "
         "(mergekit's naming). Colinear vectors (1 − cos²θ <= 1e-16) are lerped. Norms and dot products are "
         "accumulated in float64."),
    formula=(r"W = [W_{base} +] \frac{\sin((1-t)\theta)}{\sin\theta} v_1 + \frac{\sin(t\theta)}{\sin\theta} v_2, "
             r"t = w_2 / (w_1 + w_2)"),
    params=(bool_param("nuslerp_flatten", True, "interpolate the whole tensor as one vector"),
            bool_param("nuslerp_row_wise", False, "without flattening, interpolate columns instead of rows")),
    model_params=(weight_param("the model's share: t = w_2 / (w_1 + w_2)"),),
    min_models=2,
    max_models=2,
    always_normalizes=True,
)
