"""Per-tensor statistics of parents against a base: the base norm and Frobenius distances.

The AoE threshold δ and the search use these to know which tensors differ at all; the store computes
them once while loading, `alloy inspect --distances` prints them per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from alloy.errors import AlloyError
from alloy.io.checkpoint import Checkpoint
from alloy.merge.methods.aoe import normalized_distance
from alloy.merge.methods.common import squared_distance


@dataclass(frozen=True)
class TensorDistance:
    """How far one parent's tensor is from the base's."""

    name: str
    base_norm: float      # ‖W_base‖_F
    frobenius: float      # ‖W − W_base‖_F
    relative: float       # ‖W − W_base‖_F / ‖W_base‖_F (inf when the base is zero and W is not)
    rms: float            # ‖W − W_base‖_F / √n


def tensor_distance(name: str, base: torch.Tensor, other: torch.Tensor) -> TensorDistance:
    """Distances of `other` to `base`, computed as `aoe` computes them."""
    squared, base_squared = squared_distance(other, base), squared_distance(base)
    return TensorDistance(name, math.sqrt(base_squared), math.sqrt(squared),
                          normalized_distance(squared, base_squared, base.numel(), "relative"),
                          normalized_distance(squared, base_squared, base.numel(), "rms"))


def checkpoint_distances(base: Checkpoint, other: Checkpoint,
                         names: Iterable[str] | None = None) -> Iterator[TensorDistance]:
    """Distances of every floating-point weight of `other` to `base` (FP8 dequantized), tensor by tensor;
    only those of `names` when given. AlloyError naming the tensor when the two shapes differ."""
    for name in (base.tensors if names is None else names):
        info = base.tensors.get(name)
        if info is None or name.endswith("_scale_inv") or name not in other.tensors:
            continue
        if not (info.dtype.is_floating_point or base.scale_name(name)):
            continue
        if other.tensors[name].shape != info.shape:
            raise AlloyError(f"{other.path}: tensor {name} has shape {list(other.tensors[name].shape)}, in {base.path} "
                             f"it has {list(info.shape)}; distances compare checkpoints of one architecture")
        yield tensor_distance(name, base.read_for_compute(name, torch.float32),
                              other.read_for_compute(name, torch.float32))
