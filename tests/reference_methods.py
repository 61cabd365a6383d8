"""The magnitude selections as they were before radix selection (sorts, `topk`, `kthvalue`) and TIES sign
consensus as it was before it took fewer passes, kept as the reference the new ones are tested against
bit for bit.

`topk` and a non-stable `argsort` break ties at the cut in an order of their own (libstdc++'s
nth_element, torch's unstable sort), not by any rule; `stable=True` runs the same code with stable
sorts, so that equal magnitudes are ranked by their flat index: the rule the radix selection keeps.
Without ties at the cut both give the same result.

`exact_fusion_mask` is Arcee Fusion's keep/drop decision with its KL in 40-digit arithmetic: the exact
reference for alloy's float64 KL (mergekit's float32 one differs from both).
"""
from __future__ import annotations

import mpmath
import numpy as np
import torch

from alloy.merge.methods.sparsify import masked


def _sortable(magnitudes: torch.Tensor) -> torch.Tensor:
    return magnitudes.float() if magnitudes.device.type == "cpu" and magnitudes.dtype in (
        torch.float16, torch.bfloat16) else magnitudes


def _top_indices(magnitudes: torch.Tensor, k: int, stable: bool) -> torch.Tensor:
    if stable:
        return torch.argsort(magnitudes, descending=True, stable=True)[:k]
    return torch.topk(magnitudes, k, sorted=False).indices


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False, stable: bool = False) -> torch.Tensor:
    n = delta.numel()
    if density >= 1:
        return delta.clone()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * n))
    top = _top_indices(_sortable(delta.abs().reshape(-1)), k, stable)
    kept = torch.zeros(n, dtype=torch.bool, device=delta.device)
    kept[top] = True
    return masked(delta, kept.view(delta.shape), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False,
                       stable: bool = False) -> torch.Tensor:
    n = delta.numel()
    if density >= 1:
        return delta.clone()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    order = torch.argsort(_sortable(delta.abs().reshape(-1)), stable=stable)
    kept = torch.zeros(n, dtype=torch.bool, device=delta.device)
    kept[order[n_bottom:n_bottom + target]] = True
    return masked(delta, kept.view(delta.shape), rescale)


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
                   rescale: bool = True, stable: bool = False) -> torch.Tensor:
    if density >= 1:
        return delta.clone()
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(-1, delta.shape[-1])
    width = rows.shape[1]
    ranks = torch.argsort(torch.argsort(_sortable(rows.abs()), dim=1, stable=stable), dim=1)
    if width > 1:
        rank_share = ranks.to(torch.float64) / (width - 1)
    else:
        rank_share = torch.full(rows.shape, 0.5, dtype=torch.float64, device=delta.device)
    probabilities = rank_share.mul_(2 * epsilon).add_(density - epsilon)
    draws = torch.rand(rows.shape, generator=generator, device=delta.device, dtype=torch.float32)
    return masked(delta, (draws < probabilities).view(delta.shape), rescale)


def fusion_threshold(importance: torch.Tensor) -> float:
    flat = importance.reshape(-1)
    n = flat.numel()
    q1, median, q3 = (float(torch.kthvalue(flat, (n - 1) * k // 4 + 1).values) for k in (1, 2, 3))
    return median + 1.5 * (q3 - q1)


def sign_consensus(weighted: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    total = weighted[0].clone()
    for delta in weighted[1:]:
        total.add_(delta)
    positive = total >= 0
    del total
    mixed = torch.zeros_like(weighted[0])
    divisor = torch.zeros_like(weighted[0]) if normalize else None
    for delta, weight in zip(weighted, weights):
        agree = torch.where(positive, delta > 0, delta < 0)
        mixed.add_(delta * agree)
        if divisor is not None:
            divisor.add_(agree.to(divisor.dtype), alpha=weight)
    if divisor is not None:
        divisor[divisor == 0] = 1
        mixed.div_(divisor)
    return mixed


def exact_fusion_mask(base: torch.Tensor, model: torch.Tensor) -> np.ndarray:
    """Keep/drop decisions with the KL computed in 40-digit arithmetic from the float32 inputs."""
    mpmath.mp.dps = 40
    rows = []
    for b_row, m_row in zip(base.double().tolist(), model.double().tolist()):
        eb, em = [mpmath.exp(v) for v in b_row], [mpmath.exp(v) for v in m_row]
        zb, zm = mpmath.fsum(eb), mpmath.fsum(em)
        kl = mpmath.fsum((a / zm) * (mpmath.log(a / zm) - mpmath.log(c / zb)) for a, c in zip(em, eb))
        rows.append([abs(mpmath.mpf(m) - mpmath.mpf(b)) * kl for m, b in zip(m_row, b_row)])
    s = sorted(v for row in rows for v in row)
    n = len(s)
    threshold = s[(n - 1) // 2] + mpmath.mpf(1.5) * (s[3 * (n - 1) // 4] - s[(n - 1) // 4])
    return np.array([[v >= threshold for v in row] for row in rows])
