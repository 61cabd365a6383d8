"""Typed descriptions of merge methods and their parameters.

A method is a pure tensor function plus a `MethodSpec` that says which parameters it takes (global or
per model), their defaults and valid ranges, and whether it needs a base model. Recipes are validated
against the spec, and the search builds its space from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

ParamKind = Literal["float", "int", "bool", "str"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method.

    `low`/`high` bound the valid values (inclusive) for numbers; `search_low`/`search_high` are the
    default range a search space samples from when it frees this parameter without giving a range.
    `log` says a search should sample it on a log scale. `choices` lists the values of a `str` param.
    """

    name: str
    kind: ParamKind
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    search_low: float | None = None
    search_high: float | None = None
    log: bool = False
    choices: tuple[str, ...] | None = None
    required: bool = False

    def check(self, value: Any, where: str) -> Any:
        """Return `value` coerced to this parameter's kind, or raise AlloyError naming `where`."""
        from alloy.errors import AlloyError

        if self.kind == "bool":
            if not isinstance(value, bool):
                raise AlloyError(f"{where}: parameter '{self.name}' must be true or false, got {value!r}")
            return value
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise AlloyError(
                    f"{where}: parameter '{self.name}' must be one of {list(self.choices or [])}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AlloyError(f"{where}: parameter '{self.name}' must be a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise AlloyError(f"{where}: parameter '{self.name}' must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if value != value or (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high):
            raise AlloyError(
                f"{where}: parameter '{self.name}'={value!r} is outside its valid range "
                f"[{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]")
        return value


@dataclass
class MergeInputs:
    """What a method sees for one tensor.

    tensors: the tensor of every model listed in the recipe, in recipe order, all the same shape,
        already in the compute dtype and on the compute device. Never modify them in place: they may
        be views of shared, read-only parent memory.
    model_params: the per-model parameters resolved for this tensor, parallel to `tensors`
        (defaults filled in from the spec).
    base: the base model's tensor, or None when the recipe has no base model.
    base_index: the position of the base model inside `tensors` when it is also listed among the
        models, else None. Delta-based methods skip that entry (its delta is zero), as mergekit does.
    name: the tensor's on-disk name (for error messages).
    generator: a seeded torch.Generator for random methods (on the compute device), else None.
    out: a preallocated tensor of the result's shape, dtype and device that a method may write its
        result into and return (saving an allocation and a copy); methods that cannot ignore it.
    base_distances: per listed model, its distances to the base already known for this tensor
        ({"relative": …, "rms": …}, as `alloy.merge.methods.aoe.tensor_distance` computes them from these
        very tensors), or None where unknown; methods that need them use these instead of a pass over
        the weights (the store computes them once while loading).
    """

    tensors: Sequence[torch.Tensor]
    model_params: Sequence[Mapping[str, Any]]
    base: torch.Tensor | None
    base_index: int | None
    name: str
    generator: torch.Generator | None = None
    out: torch.Tensor | None = None
    base_distances: Sequence[Mapping[str, float] | None] | None = None


MergeFn = Callable[[MergeInputs, Mapping[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its function, its parameters and its requirements.

    fn(inputs, params) returns a new tensor of the inputs' shape in the compute dtype; `params` holds
    the global parameters resolved for this tensor with defaults filled in.
    needs_base: the recipe must name `base_model`.
    random: the method draws random numbers and takes `seed` (reproducible for a given seed).
    min_models / max_models: how many models it takes, not counting a listed base model unless
        `base_is_model` (see `count_models`).
    base_is_model: the method ignores `base_model` as a reference point, so a listed base model is an
        ordinary input counted among the models (linear, passthrough).
    always_normalizes: the per-model `weight`s are divided by their sum whatever the parameters say
        (aoe, nuslerp); otherwise they are when the method's `normalize` parameter is true.
    weights_include_base: a listed base model's weight counts in that sum (linear, aoe); otherwise
        only the other models' weights do (the task-vector methods).
    """

    name: str
    fn: MergeFn
    doc: str
    params: tuple[ParamSpec, ...] = ()
    model_params: tuple[ParamSpec, ...] = ()
    needs_base: bool = False
    random: bool = False
    min_models: int = 1
    max_models: int | None = None
    formula: str = ""
    base_is_model: bool = False
    always_normalizes: bool = False
    weights_include_base: bool = False

    def normalized_weight_total(self, params: Mapping[str, Any], model_params: Sequence[Mapping[str, Any]],
                                base_index: int | None) -> float | None:
        """The sum the per-model weights are divided by for one tensor, or None when they are not."""
        if self.param("weight") is None or not (self.always_normalizes or params.get("normalize")):
            return None
        return sum(mp.get("weight") or 0.0 for i, mp in enumerate(model_params)
                   if self.weights_include_base or i != base_index)

    def count_models(self, n_listed: int, base_listed: bool) -> int:
        """How many of `n_listed` models count against min_models/max_models."""
        return n_listed - 1 if base_listed and not self.base_is_model else n_listed

    def check_model_count(self, n_listed: int, base_listed: bool, has_base: bool, where: str) -> None:
        """Raise AlloyError naming `where` when the models or the base do not fit this method."""
        from alloy.errors import AlloyError

        if self.needs_base and not has_base:
            raise AlloyError(f"{where}: merge method '{self.name}' needs a base model; set `base_model`")
        n = self.count_models(n_listed, base_listed)
        low, high = self.min_models, self.max_models
        if n < low or (high is not None and n > high):
            wanted = (f"exactly {low}" if low == high else f"{low} to {high}" if high is not None
                      else f"at least {low}")
            besides = "" if self.base_is_model or not has_base else " besides the base model"
            raise AlloyError(f"{where}: merge method '{self.name}' takes {wanted} model(s){besides}, got {n}; "
                             f"list the right models under `models`")

    def param(self, name: str) -> ParamSpec | None:
        """The spec of a global or per-model parameter by name, or None."""
        for p in (*self.params, *self.model_params):
            if p.name == name:
                return p
        return None
