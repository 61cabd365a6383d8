"""A mergekit config of a method both tools have gives mergekit's result, and alloy keeps what mergekit drops.

mergekit 0.1.5 is a dev dependency (it co-installs with alloy), so `make test` and CI run these tests;
they skip only outside CI when no `mergekit-yaml` is found ($MERGEKIT_YAML, beside this Python, or on
PATH). Every config runs through one `mergekit-multi` process (mergekit's start-up dominates its
time on test-sized models), and through alloy in this process.

Where the tools differ on purpose, the check says so:
- the random methods (dare_linear, dare_ties, della, della_linear) draw from a generator seeded per
  tensor in alloy and from torch's global generator in mergekit, so their masks are compared by
  statistics: the keep rate (by magnitude rank for della) and the L1 rescale of the kept entries;
- arcee_fusion: alloy's KL is float64 and cancellation-free (mergekit's float32 one with +1e-8
  smoothing is mostly rounding noise on nearly identical rows), so alloy's keep/drop decisions are
  compared with ones computed in 40-digit arithmetic; mergekit's are only reported;
- slerp, nuslerp and model_stock accumulate norms and dot products in float64 (mergekit: float32),
  hence a tolerance of a few float32 ulps.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from alloy.cli import main
from tests.parents import read_all, write_parents


def find_mergekit(tool: str) -> str | None:
    """The path of a mergekit script: $MERGEKIT_YAML's folder, beside this Python, or on PATH."""
    if os.environ.get("MERGEKIT_YAML"):
        sibling = Path(os.environ["MERGEKIT_YAML"]).with_name(tool)
        return str(sibling) if sibling.exists() else None
    beside = Path(sys.executable).with_name(tool)
    return str(beside) if beside.exists() else shutil.which(tool)


MERGEKIT_MULTI = find_mergekit("mergekit-multi")
if MERGEKIT_MULTI is None and os.environ.get("CI"):
    raise RuntimeError("mergekit is not installed, but CI must run the parity tests: install alloy's dev extras")
pytestmark = pytest.mark.skipif(not MERGEKIT_MULTI, reason="mergekit not available (set MERGEKIT_YAML)")

# name: (method, global parameters, per-model parameters of the base and each other model, uses a base)
DETERMINISTIC = {
    "linear": ("linear", {}, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.3}], False),
    "task_arithmetic": ("task_arithmetic", {"lambda": 0.8}, [{}, {"weight": 0.6}, {"weight": 0.4}], True),
    "ties": ("ties", {"normalize": True},
             [{}, {"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}], True),
    "ties_rescaled": ("ties", {"normalize": False, "rescale": True, "lambda": 1.1},
                      [{}, {"weight": 0.6, "density": 0.2}, {"weight": 0.4, "density": 0.3}], True),
    "breadcrumbs": ("breadcrumbs", {},
                    [{}, {"weight": 0.5, "density": 0.8, "gamma": 0.05}, {"weight": 0.5, "density": 0.6,
                                                                           "gamma": 0.1}], True),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"normalize": True},
                         [{}, {"weight": 0.5, "density": 0.7, "gamma": 0.02}, {"weight": 0.5, "density": 0.5,
                                                                                "gamma": 0.05}], True),
    "slerp": ("slerp", {"t": 0.3}, [{}, {}], True),
    "nuslerp": ("nuslerp", {}, [{"weight": 0.3}, {"weight": 0.7}], False),
    "nuslerp_rows": ("nuslerp", {"nuslerp_flatten": False}, [{"weight": 0.3}, {"weight": 0.7}], False),
    "nuslerp_base": ("nuslerp", {}, [{}, {"weight": 0.4}, {"weight": 0.6}], True),
    "model_stock": ("model_stock", {}, [{}, {}, {}], True),
    "model_stock_rows": ("model_stock", {"filter_wise": True}, [{}, {}, {}], True),
}
RANDOM = {
    "dare_linear": ("dare_linear", {}, [{}, {"weight": 1.0, "density": 0.4}], True),
    "dare_ties": ("dare_ties", {}, [{}, {"weight": 1.0, "density": 0.4}], True),
    "della": ("della", {}, [{}, {"weight": 1.0, "density": 0.5, "epsilon": 0.2}], True),
    "della_linear": ("della_linear", {}, [{}, {"weight": 1.0, "density": 0.4, "epsilon": 0.3}], True),
}
FUSION = {"arcee_fusion": ("arcee_fusion", {}, [{}, {}], True)}
CASES = {**DETERMINISTIC, **RANDOM, **FUSION}


def config(parents: list[Path], case: tuple) -> dict:
    method, params, model_params, with_base = case
    models = parents[:len(model_params)]
    if method == "nuslerp" and with_base:
        models = parents[:3]
    cfg = {"merge_method": method, "dtype": "float32", "parameters": params,
           "models": [{"model": str(p), "parameters": mp} for p, mp in zip(models, model_params)]}
    if with_base:
        cfg["base_model"] = str(parents[0])
    if method == "slerp":  # mergekit's slerp takes its two models as base and one other
        cfg["models"] = [{"model": str(p)} for p in models]
    return cfg


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tiny_tokenizer):
    """Both tools' children of every case: {name: (alloy tensors, mergekit tensors, config)}, with the
    parents' tensors under None."""
    root = tmp_path_factory.mktemp("parity")
    parents = write_parents(root, "llama", tiny_tokenizer, n=3)
    configs = {name: config(parents, case) for name, case in CASES.items()}
    multi = root / "mergekit.yaml"
    # mergekit-multi reads every string of a config as a possible merge name: prefix the names
    multi.write_text(yaml.safe_dump_all([{"name": f"mk-{name}", **cfg} for name, cfg in configs.items()]))
    proc = subprocess.run([MERGEKIT_MULTI, str(multi), "-I", str(root / "mergekit"), "--random-seed", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {None: [read_all(p) for p in parents]}
    for name, cfg in configs.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["merge", str(path), str(root / "alloy" / name), "--quiet"]) == 0
        out[name] = (read_all(root / "alloy" / name), read_all(root / "mergekit" / f"mk-{name}"), cfg)
    return out


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_methods_match_mergekit(merged, name):
    ours, theirs, _ = merged[name]
    assert set(ours) == set(theirs)
    for tensor in ours:
        assert torch.allclose(ours[tensor], theirs[tensor], atol=2e-6, rtol=1e-5), tensor


def keep_statistics(child: dict, base: dict, model: dict) -> tuple[float, list[float], float]:
    """The share of task-vector entries kept, that share per magnitude-rank quintile within rows, and
    the largest error of the kept entries against δ·‖δ‖₁/‖kept δ‖₁ (per tensor), in units of the
    float32 rounding of the child's value."""
    kept_total, n_total, by_rank, worst = 0, 0, np.zeros(5), 0.0
    counts = np.zeros(5)
    for name, b in base.items():
        delta = (model[name] - b).double()
        change = (child[name] - b).double()
        kept = change != 0
        kept_total += int(kept.sum())
        n_total += kept.numel()
        factor = float(delta.abs().sum() / delta[kept].abs().sum())
        ulp = (child[name][kept].double().abs() + b[kept].double().abs()) * 2.0 ** -24
        worst = max(worst, float(((change[kept] - delta[kept] * factor).abs() / ulp.clamp(min=1e-30)).max()))
        rows = delta.reshape(-1, delta.shape[-1])
        ranks = rows.abs().argsort(dim=1).argsort(dim=1).double() / max(1, rows.shape[1] - 1)
        quintile = (ranks * 5).clamp(max=4.999).long().reshape(-1).numpy()
        np.add.at(by_rank, quintile, kept.reshape(-1).double().numpy())
        np.add.at(counts, quintile, 1)
    return kept_total / n_total, list(by_rank / counts), worst


@pytest.mark.parametrize("name", list(RANDOM))
def test_random_methods_keep_and_rescale_as_mergekit(merged, name):
    ours, theirs, cfg = merged[name]
    base, model = merged[None][0], merged[None][1]
    density = cfg["models"][1]["parameters"]["density"]
    epsilon = cfg["models"][1]["parameters"].get("epsilon", 0.0)
    assert set(ours) == set(theirs)
    ours_rate, ours_ranks, ours_err = keep_statistics(ours, base, model)
    theirs_rate, theirs_ranks, theirs_err = keep_statistics(theirs, base, model)
    assert abs(ours_rate - density) < 0.01 and abs(theirs_rate - density) < 0.01, (ours_rate, theirs_rate)
    assert ours_err < 4 and theirs_err < 4, (ours_err, theirs_err)  # both rescale to the L1 norm
    for q, (a, b) in enumerate(zip(ours_ranks, theirs_ranks)):
        expected = density - epsilon + 2 * epsilon * (q + 0.5) / 5
        assert abs(a - expected) < 0.03 and abs(b - expected) < 0.03, (q, a, b, expected)


def test_arcee_fusion_is_exact_where_mergekit_rounds(merged):
    from tests.reference_methods import exact_fusion_mask

    ours, theirs, _ = merged["arcee_fusion"]
    base, model = merged[None][0], merged[None][1]
    assert set(ours) == set(theirs)
    checked = [n for n in base if n.endswith(("q_proj.weight", "k_proj.weight"))][:2]
    disagreement = []
    for name in checked:
        exact = exact_fusion_mask(base[name], model[name])
        assert np.array_equal((ours[name] != base[name]).numpy(), exact & (model[name] != base[name]).numpy()), name
        assert torch.equal(torch.where(torch.from_numpy(exact), model[name], base[name]), ours[name])
        disagreement.append(float(((theirs[name] != base[name]).numpy() != exact).mean()))
    print(f"mergekit's keep/drop decisions differ from the exact ones on {np.mean(disagreement):.2%} of entries")
    for name in ours:  # mergekit's kept entries are base + δ, ours are the model's values
        kept = ours[name] != base[name]
        assert torch.equal(ours[name][kept], model[name][kept])


def test_mergekit_drops_deepseek_routed_experts_and_alloy_does_not(tmp_path, tiny_tokenizer):
    parents = write_parents(tmp_path, "deepseek_v3", tiny_tokenizer, n=2, dtype=torch.bfloat16)
    cfg = {"merge_method": "linear", "dtype": "bfloat16",
           "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in parents]}
    path = tmp_path / "dsv3.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([find_mergekit("mergekit-yaml"), str(path), str(tmp_path / "mk")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main(["merge", str(path), str(tmp_path / "alloy"), "--quiet"]) == 0
    ours, theirs = read_all(tmp_path / "alloy"), read_all(tmp_path / "mk")
    everything = set(read_all(parents[0]))
    assert set(ours) == everything
    dropped = everything - set(theirs)
    assert dropped and all(".mlp.experts." in n for n in dropped)
