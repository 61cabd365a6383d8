"""Pieces the merge methods share: input checks, the models besides the base, shared parameter specs,
weighted sums, and float64 reductions that read their inputs chunk by chunk."""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from alloy.errors import AlloyError
from alloy.merge.methods import compiled
from alloy.merge.methods.spec import MergeFn, MergeInputs, MethodSpec, ParamSpec

# Elements per chunk of the float64 reductions: the scratch stays in cache instead of doubling memory.
CHUNK_ELEMENTS = 1 << 16


def define_method(impl: MergeFn, **fields: Any) -> MethodSpec:
    """A MethodSpec whose `fn` checks the inputs against the spec (model count, base, shapes,
    generator) and then calls `impl`."""

    @functools.wraps(impl)
    def fn(inputs: MergeInputs, params: Mapping[str, Any]) -> torch.Tensor:
        check_inputs(spec, inputs)
        return impl(inputs, params)

    spec = MethodSpec(fn=fn, **fields)
    return spec


def check_inputs(spec: MethodSpec, inputs: MergeInputs) -> None:
    """Raise AlloyError when `inputs` do not fit `spec`; the message names the tensor."""
    where = f"tensor '{inputs.name}'"
    if len(inputs.model_params) != len(inputs.tensors):
        raise AlloyError(f"{where}: {len(inputs.tensors)} tensors but {len(inputs.model_params)} sets of "
                         f"per-model parameters for merge method '{spec.name}'")
    spec.check_model_count(len(inputs.tensors), inputs.base_index is not None, inputs.base is not None, where)
    shapes = {tuple(t.shape) for t in inputs.tensors}
    if inputs.base is not None:
        shapes.add(tuple(inputs.base.shape))
    if len(shapes) > 1:
        raise AlloyError(f"{where}: the models' tensors differ in shape {sorted(shapes)}; "
                         f"merge only checkpoints of one architecture and size")
    if spec.random and inputs.generator is None:
        raise AlloyError(f"{where}: merge method '{spec.name}' is random and needs a seeded generator")


def other_models(inputs: MergeInputs) -> list[int]:
    """Positions in `inputs.tensors` of the models other than a listed base model."""
    return [i for i in range(len(inputs.tensors)) if i != inputs.base_index]


def weight_sum(weights: Sequence[float], inputs: MergeInputs, method: str) -> float:
    """Σ weights, or AlloyError naming the tensor when they sum to (nearly) zero and cannot normalize."""
    total = math.fsum(weights)
    if abs(total) < 1e-8:
        raise AlloyError(f"tensor '{inputs.name}': the weights {list(weights)} of merge method '{method}' sum "
                         f"to zero and cannot be normalized; give weights with a nonzero sum or set "
                         f"normalize: false")
    return total


def normalized(weights: Sequence[float], inputs: MergeInputs, method: str) -> list[float]:
    """`weights` divided by their sum (see `weight_sum`)."""
    total = weight_sum(weights, inputs, method)
    return [w / total for w in weights]


def _one_pass_average(models: Sequence[torch.Tensor], out: torch.Tensor | None) -> bool:
    """Whether the first two lerps of a convex average of `models` into `out` take the compiled pass:
    three or more bfloat16 models into a given bfloat16 `out`, all large CPU tensors, on one torch thread
    (see `weighted_sum`)."""
    return len(models) >= 3 and out is not None and torch.get_num_threads() == 1 and \
        all(t.dtype == torch.bfloat16 for t in (*models, out)) and compiled.uses_cpu_kernels(*models, out)


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float], convex: bool = False,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ w_i·t_i in one tensor of the inputs' dtype (`out` when given, else a new one), reading each
    input once.

    Zero weights are skipped and a single weight of exactly 1 returns a copy (bit for bit). Positive
    weights that sum to 1 (`convex`) are a running convex combination: one `torch.lerp` into a new
    tensor, then one in-place `lerp_` per further model (about twice the throughput of mul + add_).
    Into a given large bfloat16 CPU `out` (a resident model's parameter), on one torch thread, the
    first two lerps are one compiled pass with the same roundings, so the same bits
    (cpu_kernels.bf16_lerp_pair). On more threads torch's two passes stay: between torch ops its
    OpenMP workers keep spinning, and the compiled pass's threads then lose more than it saves.
    """
    active = [(t, w) for t, w in zip(tensors, weights) if w != 0.0]
    if not active:
        return out.zero_() if out is not None else torch.zeros_like(tensors[0])
    if len(active) == 1:
        t, w = active[0]
        if w == 1.0:
            return out.copy_(t) if out is not None else t.clone()
        return torch.mul(t, w, out=out) if out is not None else torch.mul(t, w)
    if convex and all(w > 0 for _, w in active):
        models, steps, total = [t for t, _ in active], [], active[0][1]
        for _, w in active[1:]:  # model i joins the running average with weight w_i / (w_0 + ... + w_i)
            total += w
            steps.append(w / total)
        if _one_pass_average(models, out):
            compiled.kernels().bf16_lerp_pair(*models[:3], *steps[:2], out)
            rest = zip(models[3:], steps[2:])
        else:
            out = torch.lerp(models[0], models[1], steps[0], out=out) if out is not None else \
                torch.lerp(models[0], models[1], steps[0])
            rest = zip(models[2:], steps[1:])
        for t, w in rest:
            out.lerp_(t, w)
        return out
    (first, w_first), rest = active[0], active[1:]
    out = torch.mul(first, w_first, out=out) if out is not None else torch.mul(first, w_first)
    for t, w in rest:
        out.add_(t, alpha=w)
    return out


def _float64_chunks(tensors: Sequence[torch.Tensor], center: torch.Tensor | None):
    flats = [t.reshape(-1) for t in tensors]
    flat_center = center.reshape(-1) if center is not None else None
    for start in range(0, flats[0].numel(), CHUNK_ELEMENTS):
        chunks = [f[start:start + CHUNK_ELEMENTS].to(torch.float64, copy=True) for f in flats]
        if flat_center is not None:
            c = flat_center[start:start + CHUNK_ELEMENTS]
            for x in chunks:
                x.sub_(c)
        yield chunks


def float64_dot(a: torch.Tensor, b: torch.Tensor, center: torch.Tensor | None = None) -> float:
    """(a − center)·(b − center) over all elements, accumulated in float64 one chunk at a time (the
    differences are never materialized beyond a chunk)."""
    if a is b:
        return math.fsum(float(torch.dot(x, x)) for (x,) in _float64_chunks([a], center))
    return math.fsum(float(torch.dot(x, y)) for x, y in _float64_chunks([a, b], center))


# Elements per chunk of `squared_distance`: large enough to amortize the Python loop, small enough
# that a float32 dot over one chunk stays accurate to about 1e-7 relative.
DISTANCE_CHUNK = 1 << 18


def squared_distance(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """‖a − b‖²_F (‖a‖²_F without `b`), one chunk at a time through one reused buffer: each chunk's
    difference and dot product are taken in float32 (float64 inputs stay float64), and the chunks'
    sums are added in float64. Relative error about 1e-6 (a single float32 `torch.dist` over a large
    tensor is off by about 1e-3), at several GB/s."""
    fa = a.reshape(-1)
    fb = b.reshape(-1) if b is not None else None
    n = fa.numel()
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    diff = torch.empty(min(n, DISTANCE_CHUNK), dtype=work, device=a.device)
    parts = []
    for start in range(0, n, DISTANCE_CHUNK):
        stop = min(n, start + DISTANCE_CHUNK)
        d = diff[:stop - start]
        d.copy_(fa[start:stop])
        if fb is not None:
            d.sub_(fb[start:stop])
        parts.append(float(torch.dot(d, d)))
    return math.fsum(parts)


def float64_row_dot(a: torch.Tensor, b: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row (a − center)·(b − center) of 2-D tensors as a float64 vector, computed a block of rows at
    a time."""
    rows, width = a.shape
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    out = torch.empty(rows, dtype=torch.float64, device=a.device)
    for start in range(0, rows, step):
        x = a[start:start + step].to(torch.float64, copy=True)
        y = x if a is b else b[start:start + step].to(torch.float64, copy=True)
        if center is not None:
            c = center[start:start + step]
            x.sub_(c)
            if y is not x:
                y.sub_(c)
        out[start:start + step] = (x * y).sum(dim=1)
    return out


def weight_param(doc: str = "the model's coefficient") -> ParamSpec:
    """The per-model `weight` parameter (mergekit's name): any real number, searched in [0, 1]."""
    return ParamSpec("weight", "float", 1.0, doc, search_low=0.0, search_high=1.0, required=True)


def bool_param(name: str, default: bool, doc: str) -> ParamSpec:
    """A true/false parameter."""
    return ParamSpec(name, "bool", default, doc)
