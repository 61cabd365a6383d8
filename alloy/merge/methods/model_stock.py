"""`model_stock` (arXiv 2403.19522): move from the base toward the models' average by a factor set by the
angle between the models' task vectors."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alloy.merge.methods.common import (
    bool_param,
    define_method,
    float64_dot,
    float64_row_dot,
    other_models,
    weighted_sum,
)
from alloy.merge.methods.spec import MergeInputs

# Cosines are divided by max(‖τ_i‖·‖τ_j‖, NORM_PRODUCT_EPS); |1 + (N − 1)cos θ| below SINGULAR_EPS keeps
# the base (both as mergekit).
NORM_PRODUCT_EPS = 1e-6
SINGULAR_EPS = 1e-6


def model_stock(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """W_base + t·(mean_i W_i − W_base), t = N·cos θ / (1 + (N − 1)·cos θ), cos θ the mean pairwise cosine
    of the task vectors, over the whole tensor or (`filter_wise`) per row."""
    base = inputs.base
    models = [inputs.tensors[i] for i in other_models(inputs)]
    n = len(models)
    if params["filter_wise"]:
        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, -1) if x.dim() < 2 else x.reshape(-1, x.shape[-1])

        vectors, center = [rows(m) for m in models], rows(base)

        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return float64_row_dot(a, b, center)
    else:
        vectors = models

        def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.tensor(float64_dot(a, b, base), dtype=torch.float64)

    norms = [dot(v, v).sqrt() for v in vectors]
    cosines = [(dot(vectors[i], vectors[j]) / (norms[i] * norms[j]).clamp(min=NORM_PRODUCT_EPS)).clamp(-1.0, 1.0)
               for i in range(n) for j in range(i + 1, n)]
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < SINGULAR_EPS
    t = torch.where(singular, 0.0, n * cos / denominator)
    average = weighted_sum(models, [1.0 / n] * n)
    if t.dim() == 0:
        return torch.lerp(base, average, float(t))
    weight = t.to(base.dtype).reshape(*base.shape[:-1], 1) if base.dim() >= 2 else t.to(base.dtype)
    return torch.lerp(base, average, weight)


MODEL_STOCK = define_method(
    model_stock,
    name="model_stock",
    doc=("Model Stock (arXiv 2403.19522, mergekit `model_stock`): with N >= 2 models, cos θ is the mean "
         "pairwise cosine between their task vectors W_i − W_base, t = N·cos θ / (1 + (N − 1)·cos θ), and "
         "the result interpolates from the base toward the models' average by t (t = 0 where the "
         "denominator vanishes). `filter_wise` computes t per row (a vector is one row; rows run along the "
         "last dimension). Dot products are accumulated in float64 without materializing the task vectors."),
    formula=r"W = W_{base} + t (\bar W - W_{base}), t = N\cos\theta / (1 + (N-1)\cos\theta)",
    params=(bool_param("filter_wise", False, "compute the interpolation factor per row"),),
    needs_base=True,
    min_models=2,
)
