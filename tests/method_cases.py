"""Fixed seeded inputs for every merge method, and the digest of each result: the record that a faster
implementation gives today's results bit for bit (`tests/data/method_digests.json` holds the digests
recorded before the magnitude selections became radix selections; the float64 results of the REDUCING
methods, whose last bits depend on the CPU, re-recorded rounded to float32)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from alloy.merge.methods import MergeInputs, get_method

DIGESTS = Path(__file__).resolve().parent / "data" / "method_digests.json"

# (method, global params, per-model params for the two models besides the base)
CASES: list[tuple[str, dict, dict]] = [
    ("linear", {}, {"weight": 0.3}),
    ("aoe", {"threshold": 0.01}, {"weight": 0.3}),
    ("task_arithmetic", {"lambda": 0.8}, {"weight": 0.6}),
    ("ties", {}, {"weight": 0.6, "density": 0.4}),
    ("ties", {"rescale": True, "normalize": False}, {"weight": 0.7, "density": 0.1}),
    ("ties", {}, {"weight": 0.5, "density": 0.01}),
    ("dare_linear", {}, {"weight": 0.6, "density": 0.5}),
    ("dare_ties", {"lambda": 1.2}, {"weight": 0.6, "density": 0.3}),
    ("breadcrumbs", {}, {"weight": 0.6, "density": 0.8, "gamma": 0.05}),
    ("breadcrumbs", {"rescale": True}, {"weight": 0.6, "density": 0.3, "gamma": 0.2}),
    ("breadcrumbs_ties", {}, {"weight": 0.6, "density": 0.5, "gamma": 0.01}),
    ("della", {}, {"weight": 0.6, "density": 0.5, "epsilon": 0.1}),
    ("della_linear", {"rescale": False}, {"weight": 0.6, "density": 0.4, "epsilon": 0.3}),
    ("slerp", {"t": 0.3}, {}),
    ("nuslerp", {}, {"weight": 0.4}),
    ("nuslerp", {"nuslerp_flatten": False}, {"weight": 0.4}),
    ("model_stock", {}, {}),
    ("model_stock", {"filter_wise": True}, {}),
    ("arcee_fusion", {}, {}),
]
SHAPES = [(96, 160), (2000,)]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Methods whose coefficients come from float64 reductions (dot products and norms, through MKL and
# torch's vectorized sums), whose order of summation follows the CPU's vector width: their float64
# results differ in the last bits between AVX2 and AVX-512 machines, so those are digested after
# rounding to float32 (their float32 results are digested as they are).
REDUCING = {"aoe", "slerp", "nuslerp", "model_stock"}


def case_key(index: int, shape: tuple[int, ...], dtype: str) -> str:
    method, params, mp = CASES[index]
    return f"{index}:{method}:{json.dumps(params, sort_keys=True)}:{json.dumps(mp, sort_keys=True)}:{shape}:{dtype}"


def case_parents(index: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: str = "cpu") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Seeded parents of case `index` (made on the CPU, moved to `device`): a base and two models moved
    by different amounts."""
    g = torch.Generator().manual_seed(1000 + index)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    models = [base + s * torch.randn(shape, generator=g, dtype=torch.float64) for s in (0.02, 0.05)]
    return base.to(device, dtype), [m.to(device, dtype) for m in models]


def run_case(index: int, shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """The result of case `index` on its parents, merged on `device`."""
    method, params, mp = CASES[index]
    spec = get_method(method)
    base, models = case_parents(index, shape, dtype, device)
    n_models = 1 if method == "slerp" else 2
    tensors = models[:n_models]
    second = [{**mp, **({"weight": 1 - mp["weight"]} if "weight" in mp else {})}]
    model_params = [{**{p.name: p.default for p in spec.model_params}, **d} for d in [mp, *second][:n_models]]
    full = {**{p.name: p.default for p in spec.params}, **params}
    gen = torch.Generator(device=device).manual_seed(7) if spec.random else None
    return spec.fn(MergeInputs(tensors, model_params, base, None, "t", gen), full)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:32]


def case_digest(index: int, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """The digest of case `index`'s result (rounded to float32 for a float64 result of a REDUCING method)."""
    result = run_case(index, shape, dtype)
    if dtype == torch.float64 and CASES[index][0] in REDUCING:
        result = result.to(torch.float32)
    return digest(result)


def all_digests() -> dict[str, str]:
    return {case_key(i, shape, name): case_digest(i, shape, dtype)
            for i in range(len(CASES)) for shape in SHAPES for name, dtype in DTYPES.items()}


if __name__ == "__main__":  # records the digests of the current implementation
    DIGESTS.parent.mkdir(exist_ok=True)
    DIGESTS.write_text(json.dumps(all_digests(), indent=1, sort_keys=True) + "\n")
