"""Which tensors the compiled CPU kernels (cpu_kernels.py) take, and those kernels, imported with numba
on first use: a process that merges only small tensors (tiny models) never loads numba."""
from __future__ import annotations

from types import ModuleType

import torch

# Tensors below this many entries stay on torch's ops, which are as fast at that size.
MIN_KERNEL_ENTRIES = 1 << 17


def uses_cpu_kernels(*tensors: torch.Tensor) -> bool:
    """Whether these tensors go through the compiled CPU kernels: on the CPU, contiguous, of at least
    MIN_KERNEL_ENTRIES entries, and outside autograd (no grad required, or grad mode off, as while a
    builder writes a resident model's parameters)."""
    grad = torch.is_grad_enabled()
    return tensors[0].numel() >= MIN_KERNEL_ENTRIES and all(
        t.device.type == "cpu" and t.is_contiguous() and not (grad and t.requires_grad) for t in tensors)


def kernels() -> ModuleType:
    """The compiled CPU kernels (cpu_kernels.py)."""
    from alloy.merge.methods import cpu_kernels

    return cpu_kernels
