"""Pruning of task vectors (deltas to the base), as mergekit's sparsification methods.

`magnitude` keeps the largest |δ| (TIES), `magnitude_outliers` also drops the largest `gamma` share
(Model Breadcrumbs), `random` keeps each entry with probability `density` (DARE) and `della_magprune`
keeps each entry with a probability that grows with its magnitude rank in its row (DELLA's MAGPRUNE).
Magnitudes are selected and ranked exactly by radix selection over their bit patterns (select.py).
With `rescale` the kept entries are scaled so the delta keeps its L1 norm (mergekit 0.1.5's rescaling
for every pruning method). Every function returns a new tensor and leaves its input untouched.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from alloy.merge.methods import compiled
from alloy.merge.methods.select import (
    magnitude_keys,
    rank_range_bounds,
    rank_range_mask,
    row_order,
    top_k_bounds,
    top_k_mask,
)

Pruning = Literal["magnitude", "magnitude_outliers", "random", "della_magprune"]

# Below this L1 norm (before or after pruning) no rescaling is done, as mergekit.
RESCALE_EPS = 1e-7


def masked(delta: torch.Tensor, kept: torch.Tensor, rescale: bool) -> torch.Tensor:
    """`delta` where `kept`, zero elsewhere (δ·0, the product with the boolean mask); with `rescale`, times
    ‖δ‖₁ / ‖kept δ‖₁ (sums in float64)."""
    if delta.dtype in (torch.float32, torch.float64) and compiled.uses_cpu_kernels(delta, kept):
        kernels = compiled.kernels()
        out = torch.from_numpy(kernels.masked_product(kernels.flat_numpy(delta),
                                                      kernels.flat_numpy(kept))).view(delta.shape)
    else:
        out = delta * kept
    if not rescale:
        return out
    before = float(delta.abs().sum(dtype=torch.float64))
    after = float(out.abs().sum(dtype=torch.float64))
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return out
    return out.mul_(before / after)


# What a magnitude pruning of n entries keeps: ("all", 0, n), ("none", 0, 0) (zeros in their place),
# ("top", n − k, n) (the k largest; equal ones at the cut by lower flat index) or ("ranks", start, stop)
# (ascending magnitude ranks, equal ones by flat index).
MagnitudeCut = tuple[Literal["all", "none", "top", "ranks"], int, int]


def magnitude_cut(n: int, pruning: Pruning, model_params: Mapping[str, Any]) -> MagnitudeCut:
    """The entries that `magnitude` or `magnitude_outliers` pruning keeps of a task vector of n entries
    (0 <= start <= stop <= n)."""
    density = float(model_params["density"])
    if density >= 1:
        return "all", 0, n
    if pruning == "magnitude":
        if density <= 0 or n == 0:
            return "none", 0, 0
        return "top", n - max(1, int(density * n)), n
    target = int(density * n)
    bottom = max(0, n - target - int(float(model_params["gamma"]) * n))
    return "ranks", bottom, bottom + target


def _by_magnitude(delta: torch.Tensor, cut: MagnitudeCut, rescale: bool) -> torch.Tensor:
    kind, start, stop = cut
    if kind == "all":
        return delta.clone()
    if kind == "none":
        return torch.zeros_like(delta)
    keys = magnitude_keys(delta)
    kept = top_k_mask(keys, stop - start) if kind == "top" else rank_range_mask(keys, start, stop)
    return masked(delta, kept, rescale)


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the k = max(1, ⌊density·n⌋) entries of largest magnitude (all of them when density >= 1);
    among equal magnitudes at the cut, those of lower flat index."""
    return _by_magnitude(delta, magnitude_cut(delta.numel(), "magnitude", {"density": density}), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Drop the ⌊gamma·n⌋ largest entries and then the smallest ones, keeping ⌊density·n⌋ (fewer large
    ones are dropped when density + gamma > 1); equal magnitudes are ranked by flat index."""
    cut = magnitude_cut(delta.numel(), "magnitude_outliers", {"density": density, "gamma": gamma})
    return _by_magnitude(delta, cut, rescale)


def kernel_rule(delta_keys: Callable[[], torch.Tensor], n: int, cut: MagnitudeCut) -> list[int]:
    """The row of `cpu_kernels.task_vector_merge_span`'s rules that keeps what `cut` keeps of a task
    vector of n entries (the entries that `magnitude` or `magnitude_outliers` keeps, as δ·1, and δ·0
    elsewhere); `delta_keys` gives its magnitude keys, flat, where the cut needs them."""
    kernels = compiled.kernels()
    kind, start, stop = cut
    if kind == "all":
        return [kernels.KEEP_ALL] + [0] * 6
    if kind == "none":
        return [kernels.KEEP_NONE] + [0] * 6
    if start >= stop:  # nothing kept: a low bound no key passes
        low, high = (torch.iinfo(torch.int64).max, 0, 0), None
    elif start == 0 and stop == n:
        low = high = None
    else:
        keys = delta_keys()
        low, high = top_k_bounds(keys, n - start) if kind == "top" else rank_range_bounds(keys, start, stop)
    low = low or (torch.iinfo(torch.int64).min, 0, n)
    high = high or (torch.iinfo(torch.int64).max, 0, n)
    return [kernels.KEEP_RANKS, *low, *high]


def bernoulli(delta: torch.Tensor, density: float, generator: torch.Generator,
              rescale: bool = True) -> torch.Tensor:
    """Keep each entry independently with probability `density` (DARE), drawing from `generator`."""
    if density >= 1:
        return delta.clone()
    draws = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
    return masked(delta, draws < density, rescale)


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
          rescale: bool = True) -> torch.Tensor:
    """Keep each entry with probability density − ε + 2ε·r, where r in [0, 1] is its magnitude rank within
    its row (the last dimension; a vector is one row), drawing from `generator`.

    The caller checks that density ± epsilon lies in (0, 1) when density < 1.
    """
    if density >= 1:
        return delta.clone()
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(-1, delta.shape[-1])
    width = rows.shape[1]
    # the keep probability of each rank
    if width > 1:
        share = torch.arange(width, device=delta.device).to(torch.float64) / (width - 1)
    else:
        share = torch.full((1,), 0.5, dtype=torch.float64, device=delta.device)
    by_rank = float32_at_least(share.mul_(2 * epsilon).add_(density - epsilon))
    # each row in ascending magnitude (equal magnitudes by index): its draws are compared in that
    # order with the keep probability of each rank, and the outcomes put back in place
    order = row_order(magnitude_keys(rows))
    draws = torch.rand(rows.shape, generator=generator, device=delta.device, dtype=torch.float32)
    kept_in_order = draws.gather(1, order) < by_rank
    kept = torch.empty_like(kept_in_order).scatter_(1, order, kept_in_order)
    return masked(delta, kept.view(delta.shape), rescale)


def float32_at_least(x: torch.Tensor) -> torch.Tensor:
    """The smallest float32 at or above each value of the float64 tensor `x`: a float32 is below it
    exactly when it is below `x`, so comparisons with float32 draws keep their outcomes in float32."""
    rounded = x.to(torch.float32)
    up = torch.nextafter(rounded, torch.tensor(float("inf"), device=x.device))
    return torch.where(rounded.to(torch.float64) < x, up, rounded)


def prune(delta: torch.Tensor, pruning: Pruning, model_params: Mapping[str, Any], rescale: bool,
          generator: torch.Generator | None) -> torch.Tensor:
    """Prune one task vector by `pruning`, with the model's `density` (and `gamma` / `epsilon`)."""
    density = float(model_params["density"])
    if pruning == "magnitude":
        return magnitude(delta, density, rescale)
    if pruning == "magnitude_outliers":
        return magnitude_outliers(delta, density, float(model_params["gamma"]), rescale)
    if pruning == "random":
        return bernoulli(delta, density, generator, rescale)
    if pruning == "della_magprune":
        return della_magprune(delta, density, float(model_params["epsilon"]), generator, rescale)
    raise ValueError(f"unknown pruning {pruning!r}")
