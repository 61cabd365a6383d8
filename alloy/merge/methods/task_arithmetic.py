"""Generalized task arithmetic: task vectors τ_i = W_i − W_base, optionally pruned (sparsify.py),
weighted, optionally filtered by TIES sign consensus, summed, optionally normalized, scaled by λ and
added to the base. The methods task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
breadcrumbs_ties, della and della_linear are this one combination with different pruning and consensus,
as in mergekit 0.1.5.

On float32 and float64 CPU tensors that the compiled kernels take, task_arithmetic, ties, breadcrumbs and
breadcrumbs_ties (without rescaling) run as one compiled pass over the models and the base once each
task vector's magnitude cut is found (`_fused_merge`); the torch passes below stay the path elsewhere,
and both give the same bits.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from alloy.errors import AlloyError
from alloy.merge.methods import compiled
from alloy.merge.methods.common import (
    bool_param,
    define_method,
    other_models,
    weight_param,
    weight_sum,
)
from alloy.merge.methods.select import magnitude_keys
from alloy.merge.methods.sparsify import Pruning, kernel_rule, magnitude_cut, prune
from alloy.merge.methods.spec import MergeInputs, MethodSpec, ParamSpec


def sign_consensus(weighted: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """TIES merge of weighted task vectors w_i·τ_i: elect the sign of Σ_i w_i·τ_i (+ where it is >= 0),
    sum the entries that agree with it, and with `normalize` divide each entry by the sum of the
    weights of the agreeing models (by 1 where none agree).

    An entry agrees when its product with the elected sign (±1, exact) is positive. The elected signs
    and the agreement masks are kept as floats (1.0 / 0.0), because torch's CPU kernels that mix bool
    masks with floats run several times slower than float ones; the sums run in model order from +0,
    so the result is that of Σ_i [agree_i]·w_i·τ_i entry by entry (a NaN or Inf entry stays non-finite).
    The inputs are left untouched. Float32 and float64 CPU tensors that `compiled.uses_cpu_kernels` takes
    go through one compiled pass (cpu_kernels.py) that makes the same operations entry by entry.
    """
    if weighted[0].dtype in (torch.float32, torch.float64) and compiled.uses_cpu_kernels(*weighted):
        kernels = compiled.kernels()
        mixed = kernels.sign_consensus([kernels.flat_numpy(t) for t in weighted], weights, normalize)
        return torch.from_numpy(mixed).view(weighted[0].shape)
    elected = torch.add(weighted[0], weighted[1]) if len(weighted) > 1 else weighted[0].clone()
    for delta in weighted[2:]:
        elected.add_(delta)
    elected.ge_(0).mul_(2).sub_(1)  # the total's elected sign, ±1 (NaN elects -1)
    agree = torch.empty_like(elected)
    mixed = divisor = None
    for delta, weight in zip(weighted, weights):
        torch.mul(delta, elected, out=agree).gt_(0)
        if mixed is None:  # +0 + x: a disagreeing -0 or -x·0 term becomes +0
            mixed = torch.mul(delta, agree).add_(0.0)
            divisor = torch.zeros_like(delta) if normalize else None
        else:
            mixed.addcmul_(delta, agree)
        if divisor is not None:
            divisor.add_(agree, alpha=weight)
    if divisor is not None:
        divisor.masked_fill_(divisor == 0, 1)
        mixed.div_(divisor)
    return mixed


def _check_della(inputs: MergeInputs, others: list[int], method: str) -> None:
    for i in others:
        density, epsilon = float(inputs.model_params[i]["density"]), float(inputs.model_params[i]["epsilon"])
        if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            raise AlloyError(f"tensor '{inputs.name}': merge method '{method}' needs density ± epsilon inside "
                             f"(0, 1), got density {density} and epsilon {epsilon} for model {i}; "
                             f"lower epsilon or move density away from 0 and 1")


def merge_task_vectors(inputs: MergeInputs, params: Mapping[str, Any], method: str, pruning: Pruning | None,
                       consensus: bool) -> torch.Tensor:
    """W_base + λ·combine(w_i·prune(W_i − W_base)) over the models other than a listed base."""
    base = inputs.base
    others = other_models(inputs)
    weights = [float(inputs.model_params[i]["weight"]) for i in others]
    normalize = bool(params["normalize"])
    if pruning == "della_magprune":
        _check_della(inputs, others, method)
    divisor = weight_sum(weights, inputs, method) if normalize and not consensus else 1.0
    rescale = bool(params.get("rescale", False))
    lam = float(params["lambda"])
    models = [inputs.tensors[i] for i in others]
    if _fused(base, models, pruning, rescale):
        return _fused_merge(base, models, weights, [inputs.model_params[i] for i in others], pruning, consensus,
                            normalize, divisor, lam)
    weighted = []
    for i, weight in zip(others, weights):
        delta = inputs.tensors[i] - base
        if pruning is not None:
            delta = prune(delta, pruning, inputs.model_params[i], rescale, inputs.generator)
        weighted.append(delta.mul_(weight))
    if consensus:
        mixed = sign_consensus(weighted, weights, normalize)
    else:
        mixed = weighted[0]
        for delta in weighted[1:]:
            mixed.add_(delta)
        if normalize:
            mixed.div_(divisor)
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed.add_(base)


def _fused(base: torch.Tensor, models: list[torch.Tensor], pruning: Pruning | None, rescale: bool) -> bool:
    """Whether the merge runs as one compiled pass (`_fused_merge`): float32 or float64 CPU tensors the
    compiled kernels take, pruned by magnitude or not at all, without rescaling."""
    return (base.dtype in (torch.float32, torch.float64) and all(m.dtype == base.dtype for m in models)
            and pruning in (None, "magnitude", "magnitude_outliers") and not (rescale and pruning is not None)
            and compiled.uses_cpu_kernels(base, *models))


def _fused_merge(base: torch.Tensor, models: list[torch.Tensor], weights: list[float],
                 model_params: list[Mapping[str, Any]], pruning: Pruning | None, consensus: bool,
                 normalize: bool, divisor: float, lam: float) -> torch.Tensor:
    """`merge_task_vectors` as one compiled pass over the models and the base (cpu_kernels'
    `task_vector_merge`), after each pruned task vector's cut is found on its magnitude keys: the same
    bits as the torch passes, without their intermediate tensors."""
    kernels = compiled.kernels()
    rules = []
    for model, mp in zip(models, model_params):
        cut = magnitude_cut(base.numel(), pruning, mp) if pruning is not None else ("all", 0, base.numel())
        rules.append(kernel_rule(functools.partial(_delta_keys, model, base), base.numel(), cut))
    merged = kernels.task_vector_merge([kernels.flat_numpy(m) for m in models], kernels.flat_numpy(base), weights,
                                       np.asarray(rules, dtype=np.int64), consensus, normalize, divisor, lam)
    return torch.from_numpy(merged).view(base.shape)


def _delta_keys(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The magnitude keys of the task vector model − base, flat."""
    return magnitude_keys(torch.sub(model, base)).reshape(-1)


def _density(pruning: Pruning | None) -> ParamSpec:
    if pruning is None:
        return ParamSpec("density", "float", 1.0, "no effect without pruning (accepted for mergekit configs)",
                         low=0.0, high=1.0)
    low, high = (0.2, 0.8) if pruning == "della_magprune" else (0.1, 1.0)
    return ParamSpec("density", "float", 1.0, "share of the task vector's entries kept", low=0.0, high=1.0,
                     search_low=low, search_high=high)


GAMMA = ParamSpec("gamma", "float", 0.01, "share of the largest-magnitude entries dropped as outliers",
                  low=0.0, high=1.0, search_low=0.0, search_high=0.1)
EPSILON = ParamSpec("epsilon", "float", 0.15,
                    "keep probabilities range over density ± epsilon by magnitude rank",
                    low=0.0, high=0.5, search_low=0.01, search_high=0.15)
LAMBDA = ParamSpec("lambda", "float", 1.0, "scale of the merged task vector", search_low=0.5, search_high=1.5)
INT8_MASK = bool_param("int8_mask", False, "accepted for mergekit configs; masks are boolean here, so no effect")


def _gta(name: str, pruning: Pruning | None, consensus: bool, normalize: bool, rescale: bool, formula: str,
         doc: str) -> MethodSpec:
    def impl(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
        return merge_task_vectors(inputs, params, name, pruning, consensus)

    impl.__name__ = impl.__qualname__ = name
    rescale_doc = ("rescale each pruned task vector to its L1 norm" if pruning is not None
                   else "no effect without pruning (accepted for mergekit configs)")
    params = [bool_param("normalize", normalize, "divide the merged task vector by the (agreeing) weights' sum"),
              bool_param("rescale", rescale, rescale_doc)]
    model_params = [weight_param("the coefficient of the model's task vector"), _density(pruning)]
    if pruning == "magnitude_outliers":
        model_params.append(GAMMA)
    if pruning == "della_magprune":
        model_params.append(EPSILON)
    params += [LAMBDA, INT8_MASK]
    common = (" A listed base model is skipped (its task vector is zero). Computed in the inputs' dtype; the "
              "L1 norms for rescaling are summed in float64.")
    return define_method(impl, name=name, doc=doc + common, formula=formula, params=tuple(params),
                         model_params=tuple(model_params), needs_base=True,
                         random=pruning in ("random", "della_magprune"), min_models=1)


_TAU = r"\tau_i = W_i - W_{base}"
_TIES = (r"m_i = [\mathrm{sgn}(w_i\hat\tau_i) = \mathrm{sgn}\sum_j w_j\hat\tau_j]")

TASK_ARITHMETIC = _gta(
    "task_arithmetic", None, consensus=False, normalize=False, rescale=False,
    formula=rf"W = W_{{base}} + \lambda \sum_i w_i \tau_i, {_TAU}",
    doc=("Task arithmetic (arXiv 2212.04089): the base plus λ times the weighted sum of the task vectors "
         "(divided by Σ w_i with `normalize`, which then must not be zero; mergekit divides by 1 instead). "
         "As in mergekit, `density` and `rescale` are accepted and have no effect."))

TIES = _gta(
    "ties", "magnitude", consensus=True, normalize=True, rescale=False,
    formula=(rf"W = W_{{base}} + \lambda \sum_i m_i w_i \hat\tau_i / \sum_i m_i w_i, "
             rf"\hat\tau_i = topk(\tau_i), {_TIES}"),
    doc=("TIES (arXiv 2306.01708): each task vector keeps its max(1, ⌊density·n⌋) largest-magnitude "
         "entries (exactly, by radix selection; among equal magnitudes at the cut the lower flat index is "
         "kept first, where mergekit's unstable sort picks in no defined order), the sign of Σ w_i·τ̂_i is elected per entry (+ on ties), the weighted entries that agree "
         "are summed and, with `normalize`, divided by the summed weights of the agreeing models."))

DARE_TIES = _gta(
    "dare_ties", "random", consensus=True, normalize=False, rescale=True,
    formula=(rf"W = W_{{base}} + \lambda \sum_i m_i w_i \hat\tau_i, "
             rf"\hat\tau_i = b_i \odot \tau_i \cdot \|\tau_i\|_1/\|b_i \odot \tau_i\|_1, {_TIES}"),
    doc=("DARE with TIES sign consensus (arXiv 2311.03099): each entry of a task vector is kept with "
         "probability `density` (b_i ~ Bernoulli), the kept vector is rescaled to the original L1 norm "
         "(`rescale`, as mergekit 0.1.5; the paper divides by density), then TIES sign election."))

DARE_LINEAR = _gta(
    "dare_linear", "random", consensus=False, normalize=False, rescale=True,
    formula=(r"W = W_{base} + \lambda \sum_i w_i \hat\tau_i, "
             r"\hat\tau_i = b_i \odot \tau_i \cdot \|\tau_i\|_1/\|b_i \odot \tau_i\|_1"),
    doc=("DARE (arXiv 2311.03099): random drop of task-vector entries (kept with probability `density`), "
         "L1-norm rescale with `rescale` (as mergekit 0.1.5), weighted sum."))

BREADCRUMBS = _gta(
    "breadcrumbs", "magnitude_outliers", consensus=False, normalize=False, rescale=False,
    formula=(r"W = W_{base} + \lambda \sum_i w_i \hat\tau_i, "
             r"\hat\tau_i = \tau_i without its \gamma largest and its smallest entries"),
    doc=("Model Breadcrumbs (arXiv 2312.06795): each task vector drops its ⌊gamma·n⌋ largest-magnitude "
         "entries and then its smallest ones so that ⌊density·n⌋ remain (ranks by magnitude, equal ones by "
         "flat index), then the weighted sum."))

BREADCRUMBS_TIES = _gta(
    "breadcrumbs_ties", "magnitude_outliers", consensus=True, normalize=False, rescale=False,
    formula=rf"W = W_{{base}} + \lambda \sum_i m_i w_i \hat\tau_i, \hat\tau_i = breadcrumbs(\tau_i), {_TIES}",
    doc="Model Breadcrumbs pruning followed by TIES sign consensus (arXiv 2312.06795).")

DELLA = _gta(
    "della", "della_magprune", consensus=True, normalize=True, rescale=True,
    formula=(rf"W = W_{{base}} + \lambda \sum_i m_i w_i \hat\tau_i / \sum_i m_i w_i, "
             rf"P(keep) = density - \epsilon + 2\epsilon r, {_TIES}"),
    doc=("DELLA (arXiv 2406.11617): each entry is kept with probability density − ε + 2ε·r, r its "
         "magnitude rank within its row scaled to [0, 1] (equal magnitudes ranked by index; rows along the last dimension, as mergekit for "
         "2-D tensors; a vector is one row), the kept vector is rescaled to the original L1 norm (`rescale`, as mergekit 0.1.5; the "
         "paper divides by the keep probability), then TIES sign consensus. density ± epsilon must lie "
         "in (0, 1)."))

DELLA_LINEAR = _gta(
    "della_linear", "della_magprune", consensus=False, normalize=False, rescale=True,
    formula=r"W = W_{base} + \lambda \sum_i w_i \hat\tau_i, P(keep) = density - \epsilon + 2\epsilon r",
    doc="DELLA's magnitude-ranked random pruning (arXiv 2406.11617) without sign consensus: weighted sum.")

TASK_ARITHMETIC_METHODS = (TASK_ARITHMETIC, TIES, DARE_TIES, DARE_LINEAR, BREADCRUMBS, BREADCRUMBS_TIES, DELLA,
                           DELLA_LINEAR)
