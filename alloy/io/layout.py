"""Where an on-disk tensor lives inside a resident transformers model.

Checkpoints store MoE experts one by one (`mlp.experts.{e}.gate_proj.weight`; Mixtral
`block_sparse_moe.experts.{e}.w1.weight`, w3 = up, w2 = down), while transformers 5 holds them fused per layer:
`mlp.experts.gate_up_proj` of shape (E, 2I, H) (gate rows first, then up) and `mlp.experts.down_proj`
of shape (E, H, I), and Mixtral's `block_sparse_moe` is `mlp`. Everything else maps to the parameter
of the same name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from alloy.errors import AlloyError

_EXPERT = re.compile(r"^(?P<prefix>.*)\.(?:mlp|block_sparse_moe)\.experts\.(?P<e>\d+)\."
                     r"(?P<proj>gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$")
_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


@dataclass(frozen=True)
class Slot:
    """A view into a resident parameter that one on-disk tensor fills."""

    param: str
    expert: int | None = None
    rows: slice | None = None

    def view(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        t = params[self.param]
        if self.expert is not None:
            t = t[self.expert]
        return t if self.rows is None else t[self.rows]


def slot_for(name: str, params: dict[str, torch.Tensor]) -> Slot:
    """The slot of on-disk tensor `name` among a model's `params` (its state dict, by name)."""
    if name in params:
        return Slot(name)
    renamed = name.replace(".block_sparse_moe.", ".mlp.")
    if renamed in params:
        return Slot(renamed)
    m = _EXPERT.match(name)
    if m:
        proj = _PROJ.get(m["proj"], m["proj"])
        expert = int(m["e"])
        if proj == "down_proj":
            return Slot(f"{m['prefix']}.mlp.experts.down_proj", expert)
        fused = f"{m['prefix']}.mlp.experts.gate_up_proj"
        if fused in params:
            half = params[fused].shape[1] // 2
            return Slot(fused, expert, slice(0, half) if proj == "gate_proj" else slice(half, None))
    raise AlloyError(f"tensor {name!r} of the checkpoint has no place in the resident model; "
                     f"is the model skeleton of the parents' architecture?")


def slots_for(names: list[str], model: torch.nn.Module) -> dict[str, Slot]:
    """Slots of every on-disk tensor name in a resident model, checking every parameter is covered once."""
    params = dict(model.state_dict(keep_vars=True))
    slots = {n: slot_for(n, params) for n in names}
    covered: dict[str, int] = {}
    for s in slots.values():
        v = s.view(params)
        covered[s.param] = covered.get(s.param, 0) + v.numel()
    for pname, p in model.named_parameters():
        if covered.get(pname, 0) != p.numel():
            raise AlloyError(f"the resident model's parameter {pname} is not filled exactly by the checkpoint's "
                             f"tensors ({covered.get(pname, 0)} of {p.numel()} values); architectures differ")
    return slots
