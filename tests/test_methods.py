"""Merge methods against independent float64 references (numpy loops written from the formulas), plus
edge cases, errors, reproducibility of the random methods and the registry's specs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alloy.errors import AlloyError
from alloy.merge.methods import METHODS, MergeInputs, get_method
from tests.reference_methods import exact_fusion_mask

EXPECTED = {"linear", "aoe", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
            "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "model_stock", "arcee_fusion",
            "passthrough"}
SHAPE = (12, 20)


def tensors(n: int, seed: int = 0, scale: float = 0.1, dtype=torch.float32):
    """A base and `n` models near it."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    models = [base + scale * torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]
    return base.to(dtype), [m.to(dtype) for m in models]


def merge(name, models, model_params=None, params=None, base=None, base_index=None, seed=0, generator=True):
    """Run method `name` with the spec's defaults filled in; assert the inputs come back unchanged and
    the output is a new tensor of their shape and dtype."""
    spec = get_method(name)
    model_params = model_params or [{} for _ in models]
    mp = [{**{p.name: p.default for p in spec.model_params}, **d} for d in model_params]
    full = {**{p.name: p.default for p in spec.params}, **(params or {})}
    before = [t.clone() for t in models] + ([base.clone()] if base is not None else [])
    gen = torch.Generator().manual_seed(seed) if generator else None
    out = spec.fn(MergeInputs(models, mp, base, base_index, "model.layers.0.mlp.up_proj.weight", gen), full)
    after = list(models) + ([base] if base is not None else [])
    assert all(torch.equal(a, b) for a, b in zip(before, after)), f"{name} modified its inputs"
    assert out.shape == models[0].shape and out.dtype == models[0].dtype
    assert all(out.data_ptr() != t.data_ptr() for t in after)
    return out


def np64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def close(out: torch.Tensor, ref: np.ndarray, tol: float = 1e-5):
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=tol, atol=tol)


# ---------------------------------------------------------------- registry and specs

def test_registry_lists_exactly_the_fifteen_methods():
    assert set(METHODS) == EXPECTED and len(METHODS) == 15
    assert all(spec.name == name for name, spec in METHODS.items())
    with pytest.raises(AlloyError, match="choose one of: aoe, arcee_fusion"):
        get_method("frankenmerge")


def test_every_spec_is_complete_and_its_defaults_pass_its_checks():
    for name, spec in METHODS.items():
        assert spec.doc and spec.formula, name
        assert spec.random == (name.startswith(("dare", "della"))), name
        for p in (*spec.params, *spec.model_params):
            assert p.check(p.default, f"{name}.{p.name}") == p.default
            if p.kind in ("float", "int") and p.search_low is not None:
                assert p.search_low <= p.search_high
                p.check(p.search_low, name)
                p.check(p.search_high, name)
                assert not p.log or p.search_low > 0
    assert get_method("aoe").param("threshold").log
    assert get_method("ties").param("density").check(1.0, "x") == 1.0
    with pytest.raises(AlloyError, match="outside its valid range"):
        get_method("slerp").param("t").check(1.5, "slerp")


# ---------------------------------------------------------------- linear, aoe, passthrough

def test_linear_matches_weighted_average_and_one_hot_is_bit_exact():
    base, models = tensors(3)
    ws = [0.2, 0.5, 0.9]
    ref = sum(w * np64(m) for w, m in zip(ws, models))
    close(merge("linear", models, [{"weight": w} for w in ws]), ref / sum(ws))
    close(merge("linear", models, [{"weight": w} for w in ws], {"normalize": False}), ref)
    close(merge("linear", models[:2], [{"weight": 1.0}, {"weight": 3.0}]), (np64(models[0]) + 3 * np64(models[1])) / 4)
    for k in range(3):
        one_hot = [{"weight": float(i == k)} for i in range(3)]
        assert torch.equal(merge("linear", models, one_hot), models[k])
    # a listed base model is an ordinary averaged model
    out = merge("linear", [base, *models[:1]], [{"weight": 1.0}, {"weight": 1.0}], base=base, base_index=0)
    close(out, (np64(base) + np64(models[0])) / 2)
    assert torch.equal(merge("linear", models[:1]), models[0])


def test_passthrough_copies_or_scales_its_one_model():
    _, models = tensors(2)
    assert torch.equal(merge("passthrough", models[:1]), models[0])
    close(merge("passthrough", models[:1], [{"scale": 0.5}]), 0.5 * np64(models[0]))
    with pytest.raises(AlloyError, match="exactly 1"):
        merge("passthrough", models)


def _distance(model, base, norm):
    d = np.linalg.norm(np64(model) - np64(base))
    return d / np.linalg.norm(np64(base)) if norm == "relative" else d / math.sqrt(base.numel())


@pytest.mark.parametrize("norm", ["relative", "rms"])
def test_aoe_threshold_below_and_above_the_measured_distance(norm):
    base, models = tensors(2, scale=0.05)
    models[1] = base + 0.5 * (models[1] - base)
    listed = [base, *models]
    ws = [{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.5}]
    far = max(_distance(m, base, norm) for m in models)
    combination = sum(w["weight"] * np64(t) for w, t in zip(ws, listed))
    for threshold in (far * 0.999, _distance(models[1], base, norm) * 1.001):
        out = merge("aoe", listed, ws, {"threshold": threshold, "threshold_norm": norm}, base=base, base_index=0)
        close(out, combination)
    out = merge("aoe", listed, ws, {"threshold": far * 1.001, "threshold_norm": norm}, base=base, base_index=0)
    assert torch.equal(out, base)
    # the base need not be listed: the combination is over the listed models only
    out = merge("aoe", models, ws[1:], {"threshold": 0.0, "threshold_norm": norm}, base=base)
    close(out, (0.3 * np64(models[0]) + 0.5 * np64(models[1])) / 0.8)


def test_aoe_uses_known_distances_instead_of_measuring():
    base, models = tensors(2, scale=0.05)
    listed = [base, *models]
    spec = get_method("aoe")
    params = {"threshold": 0.1, "threshold_norm": "rms"}
    ws = [{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.5}]

    def run(known):
        return spec.fn(MergeInputs(listed, ws, base, 0, "t", base_distances=known), params)

    measured = [None, *({"relative": _distance(m, base, "relative"), "rms": _distance(m, base, "rms")}
                        for m in models)]
    assert torch.equal(run(measured), run(None))                 # the same decision as measuring
    near = [None, {"relative": 1.0, "rms": 0.05}, {"relative": 1.0, "rms": 0.09}]
    assert torch.equal(run(near), base)                          # told near: the base, without a pass
    far = [None, {"relative": 0.0, "rms": 0.0}, {"relative": 0.0, "rms": 0.2}]
    close(run(far), sum(w["weight"] * np64(t) for w, t in zip(ws, listed)))


def test_aoe_one_hot_and_identical_models():
    base, models = tensors(2)
    listed = [base, *models]
    for k in range(3):
        one_hot = [{"weight": float(i == k)} for i in range(3)]
        assert torch.equal(merge("aoe", listed, one_hot, base=base, base_index=0), listed[k])
    copies = [base.clone(), base.clone()]
    out = merge("aoe", [base, *copies], [{"weight": 0.1}, {"weight": 0.4}, {"weight": 0.5}], base=base, base_index=0)
    assert torch.equal(out, base)
    from alloy.merge.methods.aoe import tensor_distance
    assert tensor_distance(models[0], base) == pytest.approx(_distance(models[0], base, "relative"), rel=1e-7)
    assert tensor_distance(models[0], base, "rms") == pytest.approx(_distance(models[0], base, "rms"), rel=1e-7)
    assert tensor_distance(models[0], torch.zeros(SHAPE)) == math.inf


def test_weights_summing_to_zero_name_the_tensor():
    base, models = tensors(2)
    ws = [{"weight": 1.0}, {"weight": -1.0}]
    for name, kwargs in [("linear", {}), ("aoe", {"base": base}), ("nuslerp", {}),
                         ("task_arithmetic", {"base": base, "params": {"normalize": True}})]:
        with pytest.raises(AlloyError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*sum to zero"):
            merge(name, models, ws, **kwargs)
    close(merge("linear", models, ws, {"normalize": False}), np64(models[0]) - np64(models[1]))


# ---------------------------------------------------------------- task-arithmetic family

def ref_magnitude(delta, density):
    flat = delta.ravel()
    k = max(1, int(density * flat.size))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
    return np.where(keep, flat, 0.0).reshape(delta.shape)


def ref_breadcrumbs(delta, density, gamma):
    flat = delta.ravel()
    n = flat.size
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    keep = np.zeros(n, bool)
    keep[np.argsort(np.abs(flat), kind="stable")[bottom:bottom + target]] = True
    return np.where(keep, flat, 0.0).reshape(delta.shape)


def ref_combine(base, pruned, weights, consensus, normalize, lam=1.0):
    """Σ over models (TIES: only entries whose weighted sign matches the elected one), entry by entry."""
    out = np.array(base, copy=True)
    weighted = [w * d for w, d in zip(weights, pruned)]
    for idx in np.ndindex(base.shape):
        values = [x[idx] for x in weighted]
        if consensus:
            elected = 1.0 if sum(values) >= 0 else -1.0
            chosen = [(v, w) for v, w in zip(values, weights) if np.sign(v) == elected]
            total, divisor = sum(v for v, _ in chosen), sum(w for _, w in chosen)
            divisor = divisor if divisor != 0 else 1.0
        else:
            total, divisor = sum(values), sum(weights)
        out[idx] += lam * (total / divisor if normalize else total)
    return out


def _listed(base, models, ws, extra):
    return [base, *models], [{"weight": 0.0}] + [{"weight": w, **extra} for w in ws]


def test_task_arithmetic_matches_reference_and_skips_the_listed_base():
    base, models = tensors(3)
    ws = [0.5, -0.3, 0.8]
    deltas = [np64(m) - np64(base) for m in models]
    listed, mp = _listed(base, models, ws, {})
    close(merge("task_arithmetic", listed, mp, base=base, base_index=0),
          ref_combine(np64(base), deltas, ws, False, False))
    close(merge("task_arithmetic", listed, mp, {"normalize": True, "lambda": 0.7}, base=base, base_index=0),
          ref_combine(np64(base), deltas, ws, False, True, 0.7))
    # the base need not be listed; as in mergekit, density and rescale are accepted and change nothing
    close(merge("task_arithmetic", models, mp[1:], base=base), ref_combine(np64(base), deltas, ws, False, False))
    ignored = [{**d, "density": 0.3} for d in mp[1:]]
    assert torch.equal(merge("task_arithmetic", models, ignored, {"rescale": True}, base=base),
                       merge("task_arithmetic", models, mp[1:], base=base))


@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pruned_methods_match_reference(name, normalize):
    base, models = tensors(3, seed=3)
    ws, densities = [0.6, 0.3, 0.9], [0.3, 0.55, 0.8]
    extra = [{"density": d, "gamma": 0.05} if name != "ties" else {"density": d} for d in densities]
    mp = [{"weight": w, **e} for w, e in zip(ws, extra)]
    deltas = [np64(m) - np64(base) for m in models]
    if name == "ties":
        pruned = [ref_magnitude(d, e["density"]) for d, e in zip(deltas, extra)]
    else:
        pruned = [ref_breadcrumbs(d, e["density"], 0.05) for d, e in zip(deltas, extra)]
    out = merge(name, models, mp, {"normalize": normalize, "lambda": 1.2}, base=base)
    close(out, ref_combine(np64(base), pruned, ws, name != "breadcrumbs", normalize, 1.2))
    if name == "ties":
        # rescale: each pruned task vector keeps its L1 norm
        rescaled = [p * np.abs(d).sum() / np.abs(p).sum() for p, d in zip(pruned, deltas)]
        out = merge(name, models, mp, {"normalize": normalize, "rescale": True}, base=base)
        close(out, ref_combine(np64(base), rescaled, ws, True, normalize))


def test_density_one_reduces_to_task_arithmetic_or_plain_sign_consensus():
    base, models = tensors(3, seed=5)
    ws = [0.5, 0.4, 0.7]
    mp = [{"weight": w, "density": 1.0} for w in ws]
    plain = merge("task_arithmetic", models, [{"weight": w} for w in ws], base=base)
    for name in ("dare_linear", "breadcrumbs", "della_linear"):
        assert torch.equal(merge(name, models, mp, base=base), plain), name
    ties = merge("ties", models, mp, base=base)
    close(ties, ref_combine(np64(base), [np64(m) - np64(base) for m in models], ws, True, True))
    assert torch.equal(merge("della", models, mp, base=base), ties)
    assert torch.equal(merge("dare_ties", models, mp, {"normalize": True}, base=base), ties)
    assert torch.equal(merge("breadcrumbs_ties", models, mp, {"normalize": True}, base=base), ties)


def test_every_model_equal_to_the_base_gives_the_base():
    base, _ = tensors(1)
    copies = [base.clone(), base.clone()]
    mp = [{"weight": 0.5, "density": 0.5}, {"weight": 0.5, "density": 0.5}]
    for name in ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
                 "della", "della_linear", "model_stock", "arcee_fusion"):
        params = [{k: v for k, v in d.items() if get_method(name).param(k)} for d in mp]
        assert torch.equal(merge(name, copies, params, base=base), base), name
    assert torch.equal(merge("slerp", copies[:1], base=base), base)
    assert torch.equal(merge("nuslerp", copies, [{"weight": 1.0}, {"weight": 2.0}], base=base), base)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_are_reproducible_and_rescale_to_the_l1_norm(name):
    base, models = tensors(2, seed=7)
    mp = [{"weight": 1.0, "density": 0.4}, {"weight": 0.5, "density": 0.6}]
    first, again = merge(name, models, mp, base=base, seed=11), merge(name, models, mp, base=base, seed=11)
    other = merge(name, models, mp, base=base, seed=12)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # one model: recover the kept entries and check the L1 rescaling and the scale of what was kept
    out = merge(name, models[:1], mp[:1], {"normalize": False}, base=base, seed=3)
    delta, kept_delta = np64(models[0]) - np64(base), np64(out) - np64(base)
    kept = kept_delta != 0
    assert 0.2 < kept.mean() < 0.6
    factor = np.abs(delta).sum() / np.abs(delta[kept]).sum()
    np.testing.assert_allclose(kept_delta[kept], delta[kept] * factor, rtol=1e-5, atol=1e-6)
    out = merge(name, models[:1], mp[:1], {"normalize": False, "rescale": False}, base=base, seed=3)
    np.testing.assert_allclose(np64(out) - np64(base), np.where(kept, delta, 0.0), atol=1e-6)
    with pytest.raises(AlloyError, match="seeded generator"):
        merge(name, models, mp, base=base, generator=False)


def test_della_keeps_larger_magnitudes_more_often():
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(400, 50)
    model = torch.randn(400, 50, generator=g)
    out = merge("della_linear", [model], [{"weight": 1.0, "density": 0.5, "epsilon": 0.3}],
                {"rescale": False}, base=base, seed=1)
    kept = (out != 0).numpy()
    ranks = np.argsort(np.argsort(np.abs(model.numpy()), axis=1), axis=1) / 49.0
    # keep probability is 0.2 + 0.6·rank: about 0.23 in the lowest decile, 0.77 in the highest
    assert abs(kept[ranks < 0.1].mean() - 0.227) < 0.04
    assert abs(kept[ranks > 0.9].mean() - 0.773) < 0.04
    dare = (merge("dare_linear", [model], [{"weight": 1.0, "density": 0.3}], base=base, seed=2) != 0).numpy()
    assert abs(dare.mean() - 0.3) < 0.02
    with pytest.raises(AlloyError, match="density ± epsilon"):
        merge("della", [model], [{"weight": 1.0, "density": 0.9, "epsilon": 0.15}], base=base)


# ---------------------------------------------------------------- slerp, nuslerp

def ref_slerp(t, v0, v1, dot_threshold=0.9995):
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    dot = float(np.clip(np.sum((v0 / n0) * (v1 / n1)), -1, 1))
    if abs(dot) > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def test_slerp_matches_reference_with_exact_endpoints():
    base, models = tensors(1, scale=1.0)
    for t in (0.25, 0.5, 0.8):
        close(merge("slerp", [base, models[0]], params={"t": t}, base=base, base_index=0),
              ref_slerp(t, np64(base), np64(models[0])))
    assert torch.equal(merge("slerp", models, params={"t": 0.0}, base=base), base)
    assert torch.equal(merge("slerp", models, params={"t": 1.0}, base=base), models[0])
    colinear = 2.0 * base
    close(merge("slerp", [colinear], params={"t": 0.3}, base=base), 1.3 * np64(base))
    with pytest.raises(AlloyError, match="exactly 1 model"):
        merge("slerp", models * 2, params={"t": 0.3}, base=base)
    with pytest.raises(AlloyError, match="needs a base model"):
        merge("slerp", models, params={"t": 0.3})


def ref_nuslerp_vectors(t, v0, v1):
    """Slerp of each row of two 2-D arrays, written row by row."""
    out = np.empty_like(v0)
    for r in range(v0.shape[0]):
        a, b = v0[r], v1[r]
        cos = float(np.clip(a @ b / (max(np.linalg.norm(a), 1e-7) * max(np.linalg.norm(b), 1e-7)), -1, 1))
        if 1 - cos * cos <= 1e-16:
            out[r] = (1 - t) * a + t * b
        else:
            th = math.acos(cos)
            out[r] = (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)
    return out


@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_matches_reference(with_base):
    base, models = tensors(2, scale=0.7, seed=9)
    ws = [{"weight": 0.3}, {"weight": 0.9}]
    t = 0.9 / 1.2
    v0, v1 = np64(models[0]), np64(models[1])
    if with_base:
        v0, v1 = v0 - np64(base), v1 - np64(base)
    offset = np64(base) if with_base else 0.0
    kwargs = {"base": base} if with_base else {}
    flat = ref_nuslerp_vectors(t, v0.reshape(1, -1), v1.reshape(1, -1)).reshape(SHAPE)
    close(merge("nuslerp", models, ws, **kwargs), flat + offset)
    rows = ref_nuslerp_vectors(t, v0, v1)
    close(merge("nuslerp", models, ws, {"nuslerp_flatten": False}, **kwargs), rows + offset)
    columns = ref_nuslerp_vectors(t, v0.T, v1.T).T
    close(merge("nuslerp", models, ws, {"nuslerp_flatten": False, "nuslerp_row_wise": True}, **kwargs),
          columns + offset)
    if with_base:  # a listed base is not one of the two interpolated models
        close(merge("nuslerp", [base, *models], [{}, *ws], base=base, base_index=0), flat + offset)
    with pytest.raises(AlloyError, match="exactly 2 model"):
        merge("nuslerp", models[:1], ws[:1], **kwargs)


# ---------------------------------------------------------------- model_stock, arcee_fusion

def ref_model_stock(base, models, filter_wise):
    b = base if filter_wise else base.reshape(1, -1)
    ms = [m if filter_wise else m.reshape(1, -1) for m in models]
    out = np.empty_like(b)
    n = len(ms)
    for r in range(b.shape[0]):
        offsets = [m[r] - b[r] for m in ms]
        cos = np.mean([np.clip(offsets[i] @ offsets[j] / max(np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j]),
                                                              1e-6), -1, 1)
                       for i in range(n) for j in range(i + 1, n)])
        t = n * cos / (1 + (n - 1) * cos)
        out[r] = t * np.mean([m[r] for m in ms], axis=0) + (1 - t) * b[r]
    return out.reshape(base.shape)


def test_model_stock_matches_reference():
    base, models = tensors(3, seed=4)
    models[1] = models[1] + 0.5 * (models[0] - base)  # correlated task vectors: 0 < t < 1
    for fw in (False, True):
        close(merge("model_stock", models, params={"filter_wise": fw}, base=base),
              ref_model_stock(np64(base), [np64(m) for m in models], fw))
    close(merge("model_stock", [base, *models], params={"filter_wise": True}, base=base, base_index=0),
          ref_model_stock(np64(base), [np64(m) for m in models], True))
    with pytest.raises(AlloyError, match="at least 2"):
        merge("model_stock", models[:1], base=base)


def ref_fusion(base, model):
    """Keep model's entries whose |Δ|·KL(row) reaches median + 1.5·IQR (quantiles at ⌊q(n−1)⌋), float64."""
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    lp, lq = log_softmax(model), log_softmax(base)
    importance = np.abs(model - base) * (np.exp(lp) * (lp - lq)).sum(axis=-1, keepdims=True)
    s = np.sort(importance.ravel())
    n = s.size
    threshold = s[(n - 1) // 2] + 1.5 * (s[3 * (n - 1) // 4] - s[(n - 1) // 4])
    return np.where(importance >= threshold, model, base)


def test_arcee_fusion_matches_reference_and_chains_models():
    base, models = tensors(3, seed=6, scale=0.5)
    for m in models:
        m.mul_(torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)) < 0.5).add_(base * (m == 0))
    out = merge("arcee_fusion", models[:1], base=base)
    close(out, ref_fusion(np64(base), np64(models[0])), tol=0)
    assert 0 < (out != base).sum() < out.numel()
    chained = np64(base)
    for m in models:
        chained = ref_fusion(chained, np64(m))
    close(merge("arcee_fusion", [base, *models], base=base, base_index=0), chained, tol=0)


def test_arcee_fusion_decisions_on_nearly_identical_rows_are_exact_where_float32_is_not():
    from alloy.merge.methods.arcee_fusion import fusion_mask
    from alloy.tiny import perturbed_copy

    # A tiny Llama's q_proj (hidden size 64) as transformers initializes it, and a fine-tune stand-in
    # moved by 1e-4 relative noise.
    parent = torch.nn.Linear(64, 64, bias=False)
    torch.nn.init.normal_(parent.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    child = perturbed_copy(parent, scale=1e-4, seed=1)
    base, model = parent.weight.detach(), child.weight.detach()
    exact = exact_fusion_mask(base, model)
    assert np.array_equal(fusion_mask(model, base).numpy(), exact)
    out = merge("arcee_fusion", [model], base=base)
    assert np.array_equal((out != base).numpy(), exact & (model != base).numpy())
    # mergekit's float32 computation: softmax + 1e-8, Σ p·log(p/q), then the same threshold rule
    p, q = torch.softmax(model, -1) + 1e-8, torch.softmax(base, -1) + 1e-8
    importance = (model - base).abs() * (p * torch.log(p / q)).sum(-1, keepdim=True)
    s = torch.sort(importance.reshape(-1)).values
    n = s.numel()
    float32_mask = (importance >= s[(n - 1) // 2] + 1.5 * (s[3 * (n - 1) // 4] - s[(n - 1) // 4])).numpy()
    disagreement = float((float32_mask != exact).mean())
    print(f"float32 keep/drop disagreement with the exact decisions: {disagreement:.1%}")
    assert disagreement > 0.05


# ---------------------------------------------------------------- every method: dtypes, inputs, errors

CASES = {
    "linear": {"n": 2, "mp": {"weight": 0.5}}, "aoe": {"n": 2, "mp": {"weight": 0.5}, "base": True},
    "task_arithmetic": {"n": 2, "mp": {"weight": 0.5}, "base": True},
    "ties": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "dare_linear": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "dare_ties": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "breadcrumbs": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "breadcrumbs_ties": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "della": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "della_linear": {"n": 2, "mp": {"weight": 0.5, "density": 0.5}, "base": True},
    "slerp": {"n": 1, "mp": {}, "base": True}, "nuslerp": {"n": 2, "mp": {"weight": 0.5}},
    "model_stock": {"n": 2, "mp": {}, "base": True}, "arcee_fusion": {"n": 2, "mp": {}, "base": True},
    "passthrough": {"n": 1, "mp": {"scale": 0.5}},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_method_keeps_dtype_and_shape_and_leaves_inputs_alone(dtype):
    assert set(CASES) == EXPECTED
    for name, case in CASES.items():
        base, models = tensors(case["n"], dtype=dtype)
        for listed_base in ([False, True] if case.get("base") else [False]):
            listed = [base, *models] if listed_base else models
            mp = [dict(case["mp"]) for _ in listed]
            merge(name, listed, mp, base=base if case.get("base") else None, base_index=0 if listed_base else None)


def test_missing_base_and_mismatched_inputs_are_clear_errors():
    base, models = tensors(2)
    for name in ("aoe", "ties", "model_stock", "arcee_fusion", "della"):
        with pytest.raises(AlloyError, match=f"'{name}' needs a base model"):
            merge(name, models, [dict(CASES[name]["mp"]) for _ in models])
    with pytest.raises(AlloyError, match="differ in shape"):
        merge("linear", [models[0], models[1][:, :5]])
    with pytest.raises(AlloyError, match="at least 1 model"):
        merge("ties", [base], [{"weight": 1.0}], base=base, base_index=0)
    with pytest.raises(AlloyError, match="2 tensors but 1 sets of per-model parameters"):
        merge("linear", models, [{"weight": 1.0}])


def test_model_counts_for_recipe_validation():
    assert get_method("linear").count_models(3, base_listed=True) == 3
    assert get_method("ties").count_models(3, base_listed=True) == 2
    get_method("nuslerp").check_model_count(3, True, True, "recipe.yaml")
    with pytest.raises(AlloyError, match="recipe.yaml: merge method 'passthrough' takes exactly 1 model"):
        get_method("passthrough").check_model_count(2, False, False, "recipe.yaml")
    with pytest.raises(AlloyError, match="'slerp' takes exactly 1 model.* besides the base model, got 2"):
        get_method("slerp").check_model_count(3, True, True, "recipe.yaml")


# ---------------------------------------------------------------- exact selection: today's results, bit for bit

@pytest.mark.parametrize("kernels", [False, True])
def test_every_method_gives_the_recorded_results_bit_for_bit(kernels, monkeypatch):
    """Digests recorded from the implementation before radix selection (tests/method_cases.py), on torch's
    ops and with every tensor through the compiled CPU kernels."""
    import json

    from alloy.merge.methods import compiled
    from tests.method_cases import DIGESTS, all_digests

    if kernels:
        monkeypatch.setattr(compiled, "MIN_KERNEL_ENTRIES", 1)
    recorded = json.loads(DIGESTS.read_text())
    now = all_digests()
    assert set(now) == set(recorded)
    assert [k for k in recorded if now[k] != recorded[k]] == []


def tie_heavy(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Task-vector-like values with many equal magnitudes (bf16/fp16 have few mantissa bits; float32
    and float64 are rounded to a grid), some zeros and negative zeros."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.01
    if dtype in (torch.float32, torch.float64):
        x = (x * 2000).round() / 2000
    x = x.to(dtype)
    x[::13] = 0.0
    x[5::17] = -0.0
    return x


SIZES = [1, 7, 1000, 70_001]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_magnitude_selections_equal_stable_sorts_ties_included(dtype):
    from alloy.merge.methods import sparsify
    from tests import reference_methods as before

    for n in SIZES:
        x = tie_heavy(n, dtype, seed=n)
        for density, rescale in ((0.0, False), (0.001, True), (0.1, False), (0.5, True), (0.9, False), (1.0, True)):
            assert torch.equal(sparsify.magnitude(x, density, rescale),
                               before.magnitude(x, density, rescale, stable=True)), (n, density)
            for gamma in (0.0, 0.05, 0.4):
                assert torch.equal(sparsify.magnitude_outliers(x, density, gamma, rescale),
                                   before.magnitude_outliers(x, density, gamma, rescale, stable=True)), (n, density, gamma)
        for shape in ((n,), (1, n)) if n < 1000 else ((n // 250, 250),):
            rows = x[:math.prod(shape)].reshape(shape)
            for density, eps in ((0.5, 0.1), (0.3, 0.25)):
                new = sparsify.della_magprune(rows, density, eps, torch.Generator().manual_seed(n))
                old = before.della_magprune(rows, density, eps, torch.Generator().manual_seed(n), stable=True)
                assert torch.equal(new, old), (n, shape, density)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_row_order_is_a_stable_sort_of_each_row(dtype):
    from alloy.merge.methods.select import magnitude_keys, row_order

    for rows, width in ((1, 1), (3, 2), (7, 1000), (2, 70_001), (300, 250)):
        keys = magnitude_keys(tie_heavy(rows * width, dtype, seed=width).view(rows, width))
        assert torch.equal(row_order(keys), torch.sort(keys, dim=1, stable=True).indices), (rows, width)


def test_float32_thresholds_keep_every_comparison_of_float32_draws():
    from alloy.merge.methods.sparsify import float32_at_least

    exact = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.cat([exact, torch.tensor([0.5, 0.25, 1.0 / 3.0], dtype=torch.float64)])
    rounded = float32_at_least(exact)
    assert rounded.dtype == torch.float32 and torch.all(rounded.to(torch.float64) >= exact)
    inf = torch.tensor(float("inf"))
    for draws in (rounded, torch.nextafter(rounded, -inf), torch.nextafter(rounded, inf), exact.to(torch.float32)):
        assert torch.equal(draws < exact, draws < rounded)


def test_magnitude_selections_equal_todays_sorts_where_no_ties_fall_at_the_cut():
    from alloy.merge.methods import sparsify
    from tests import reference_methods as before

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        # distinct magnitudes, shuffled, with random signs
        x = ((torch.randperm(200_000, generator=g) + 1) * 1e-4).to(dtype)
        x = torch.where(torch.rand(x.shape, generator=g) < 0.5, -x, x)
        assert torch.unique(x.abs()).numel() == x.numel()
        for density in (0.01, 0.3, 0.7):
            assert torch.equal(sparsify.magnitude(x, density), before.magnitude(x, density))
            assert torch.equal(sparsify.magnitude_outliers(x, density, 0.05, rescale=True),
                               before.magnitude_outliers(x, density, 0.05, rescale=True))
            rows = x.view(400, 500)
            assert torch.equal(sparsify.della_magprune(rows, 0.5, 0.2, torch.Generator().manual_seed(1)),
                               before.della_magprune(rows, 0.5, 0.2, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_order_statistics_equal_a_sort_and_arcee_quartiles_equal_kthvalue(dtype):
    from alloy.merge.methods.arcee_fusion import fusion_threshold
    from alloy.merge.methods.select import key_value, order_statistics, value_keys
    from tests import reference_methods as before

    for n in SIZES:
        x = tie_heavy(n, dtype, seed=n + 1) * 100
        x[3::7] = -x[3::7]
        ordered = torch.sort(x.double()).values
        ranks = sorted({0, n // 4, n // 2, n - 1})
        for rank, stat in zip(ranks, order_statistics(value_keys(x), ranks)):
            assert key_value(stat.key, dtype) == float(ordered[rank])
            value = ordered[rank]
            assert (stat.below, stat.equal) == (int((ordered < value).sum()), int((ordered == value).sum())) or value == 0
        if dtype == torch.float64:
            assert fusion_threshold(x.abs()) == before.fusion_threshold(x.abs())
            assert fusion_threshold(x) == before.fusion_threshold(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_methods_on_cuda_match_the_cpu():
    """The same method code on CUDA: deterministic methods agree with the CPU result to float32 rounding
    (and the magnitude selections exactly); the random ones, whose generators differ by device, keep
    the same share."""
    from tests.method_cases import CASES, case_parents, run_case

    for index, (method, _, _) in enumerate(CASES):
        cpu = run_case(index, (96, 160), torch.float32)
        gpu = run_case(index, (96, 160), torch.float32, device="cuda").cpu()
        if get_method(method).random:
            base = case_parents(index, (96, 160), torch.float32)[0]
            kept_cpu, kept_gpu = float((cpu != base).float().mean()), float((gpu != base).float().mean())
            assert abs(kept_cpu - kept_gpu) < 0.03, (method, kept_cpu, kept_gpu)
        else:
            assert torch.allclose(gpu, cpu, rtol=1e-5, atol=1e-6), method
    from alloy.merge.methods import sparsify

    x = tie_heavy(70_001, torch.bfloat16, seed=3)
    for density in (0.1, 0.5):
        assert torch.equal(sparsify.magnitude(x.cuda(), density).cpu(), sparsify.magnitude(x, density))
        assert torch.equal(sparsify.magnitude_outliers(x.cuda(), density, 0.05).cpu(),
                           sparsify.magnitude_outliers(x, density, 0.05))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtypes and shapes, NaN at the same entries (of any sign and payload), and the same bits
    elsewhere (signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        nan = a.isnan()
        return torch.equal(nan, b.isnan()) and torch.equal(a[~nan].view(ints), b[~nan].view(ints))
    return torch.equal(a, b)


def task_vector_merges(x: torch.Tensor) -> list[torch.Tensor]:
    """The merges of task_arithmetic, ties, breadcrumbs and breadcrumbs_ties (the ones that run as one
    compiled pass on the CPU) of a base and three models around `x`, over densities that cut inside runs
    of equal magnitudes, keep all or none, with and without normalization and λ."""
    base = torch.roll(x, 11) * 0.5
    models = [base + x, base - x.flip(0) * 0.5, base + torch.roll(x, 3)]
    weights = [0.6, -0.3, 0.5]
    out = []
    for method, params, per_model in [
            ("task_arithmetic", {"lambda": 0.8}, [{}]), ("task_arithmetic", {"normalize": True}, [{}]),
            ("ties", {}, [{"density": d} for d in (0.0, 0.001, 0.3, 0.5, 1.0)]),
            ("ties", {"normalize": False, "lambda": 1.3}, [{"density": 0.4}]),
            ("breadcrumbs", {}, [{"density": d, "gamma": g} for d in (0.0, 0.5, 0.9) for g in (0.0, 0.05, 0.2)]),
            ("breadcrumbs_ties", {"normalize": True}, [{"density": 0.5, "gamma": 0.01}])]:
        spec = get_method(method)
        full = {**{p.name: p.default for p in spec.params}, **params}
        for mp in per_model:
            for count in (1, 3):
                model_params = [{**{p.name: p.default for p in spec.model_params}, **mp, "weight": w}
                                for w in weights[:count]]
                out.append(spec.fn(MergeInputs(models[:count], model_params, base, None, "t", None), full))
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_compiled_cpu_kernels_give_the_bits_of_the_torch_ops_over_several_spans(dtype, monkeypatch):
    """The CPU kernels (order statistics, rank masks, masked products, sign consensus, the one-pass
    task-vector merge) give the same bits as the torch ops that other devices run, on tie-heavy inputs
    with NaN and Inf entries, split into several spans that runs of equal keys cross."""
    from alloy.merge.methods import compiled, cpu_kernels, select, sparsify
    from alloy.merge.methods.task_arithmetic import sign_consensus

    def results() -> list[torch.Tensor]:
        out = []
        for n in SIZES:
            x = tie_heavy(n, dtype, seed=n)
            x[1::101], x[2::103], x[4::107] = float("nan"), float("inf"), float("-inf")
            for density in (0.001, 0.3, 0.5, 0.9):
                out.append(sparsify.magnitude(x, density, rescale=False))
                out.append(sparsify.magnitude_outliers(x, density, 0.05, rescale=False))
            values = select.value_keys(x)
            ranks = sorted({0, n // 3, n // 2, n - 1})
            out.append(torch.tensor([[s.key, s.below, s.equal] for s in select.order_statistics(values, ranks)]))
            out.append(select.rank_range_mask(values, n // 5, n - n // 4))
            out.append(select.top_k_mask(values, n // 3))
            weighted = [x * 0.3, x.flip(0) * -0.7, torch.roll(x, 5) * 0.5]
            for models in (1, 2, 3):
                for normalize in (True, False):
                    out.append(sign_consensus(weighted[:models], [0.3, -0.7, 0.5][:models], normalize))
            if dtype in (torch.float32, torch.float64):
                out.extend(task_vector_merges(x))
        return out

    monkeypatch.setattr(compiled, "MIN_KERNEL_ENTRIES", 1)
    monkeypatch.setattr(cpu_kernels, "MIN_SPAN", 997)
    # three spans, as with three torch threads (patched: a process that has run a vLLM CPU engine
    # ignores torch.set_num_threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert len(cpu_kernels.spans(SIZES[-1])) == 3
    with_kernels = results()
    monkeypatch.setattr(compiled, "uses_cpu_kernels", lambda *tensors: False)
    reference = results()
    assert len(with_kernels) == len(reference)
    for i, (a, b) in enumerate(zip(with_kernels, reference)):
        assert same_bits(a, b), i
    assert max(stop - start for start, stop in cpu_kernels.spans(3 * cpu_kernels.MAX_SPAN + 5)) <= cpu_kernels.MAX_SPAN


def test_the_compiled_weighted_average_into_a_resident_bf16_tensor_gives_the_bits_of_torchs_lerps(monkeypatch):
    """A convex weighted sum of 3–5 bfloat16 models written into a resident parameter on one thread
    (one compiled pass for its first two lerps) equals torch's chain of lerps bit for bit, with
    weights below and above 0.5 and NaN, Inf and signed zeros in the inputs."""
    from alloy.merge.methods import compiled, cpu_kernels
    from alloy.merge.methods.common import weighted_sum

    calls = []
    kernel = cpu_kernels.bf16_lerp_pair
    monkeypatch.setattr(cpu_kernels, "bf16_lerp_pair", lambda *args: calls.append(1) or kernel(*args))
    monkeypatch.setattr(compiled, "MIN_KERNEL_ENTRIES", 1)

    def results() -> list[torch.Tensor]:
        out = []
        for n in SIZES:
            models = [tie_heavy(n, torch.bfloat16, seed=n + i) * (1 + 3 * i) for i in range(5)]
            models[0][1::101], models[1][2::103], models[2][4::107] = float("nan"), float("inf"), float("-inf")
            for weights in ([0.4, 0.3, 0.3], [0.05, 0.05, 0.9], [0.7, 0.2, 0.1], [0.1, 0.2, 0.3, 0.15, 0.25],
                            [1.0, 3.0, 0.5, 2.0]):
                resident = torch.nn.Parameter(torch.full((n,), 7.0, dtype=torch.bfloat16))
                with torch.no_grad():
                    assert weighted_sum(models[:len(weights)], weights, convex=True, out=resident) is resident
                out.append(resident.detach().clone())
        return out

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one span (see the test above)
    with_kernel = results()
    assert len(calls) == len(with_kernel)  # every case went through the kernel
    monkeypatch.setattr(compiled, "uses_cpu_kernels", lambda *tensors: False)
    reference = results()
    for i, (a, b) in enumerate(zip(with_kernel, reference)):
        assert same_bits(a, b), i


def test_the_compiled_kernels_leave_llvmlite_readable_by_vllms_module_scan():
    """vLLM's CPU engine start reads vars() of every module object; llvmlite's handle must give a dict."""
    from llvmlite.binding import ffi

    import alloy.merge.methods.cpu_kernels  # noqa: F401

    assert vars(ffi.lib).get("kernel") is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_sign_consensus_equals_the_former_one_signed_zeros_included(dtype):
    from alloy.merge.methods.task_arithmetic import sign_consensus
    from tests import reference_methods as before

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        for normalize in (True, False):
            weights = [0.3, 0.7123, -0.41][:k]
            deltas = [(torch.randn(5000, generator=g) * 0.01).to(dtype) for _ in weights]
            for d in deltas:
                d[::7], d[3::11] = 0.0, -0.0
            weighted = [d * w for d, w in zip(deltas, weights)]
            new, old = sign_consensus(weighted, weights, normalize), before.sign_consensus(weighted, weights, normalize)
            assert torch.equal(new, old) and torch.equal(torch.signbit(new), torch.signbit(old)), (k, normalize)
            # a NaN or Inf in a task vector stays non-finite (the merge then names the parent), as before
            broken = [w.clone() for w in weighted]
            broken[0][10], broken[-1][20] = float("nan"), float("inf")
            new, old = sign_consensus(broken, weights, normalize), before.sign_consensus(broken, weights, normalize)
            assert torch.equal(new.isnan(), old.isnan()) and new[10].isnan() and not new[20].isfinite()
            finite = old.isfinite()
            assert torch.equal(new[finite], old[finite]) and torch.equal(new.isinf(), old.isinf()), (k, normalize)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_alloy_merge_on_cuda_matches_the_cpu_merge(tmp_path, tiny_tokenizer):
    import yaml

    from alloy.cli import main
    from tests.parents import read_all, write_parents

    parents = write_parents(tmp_path, "llama", tiny_tokenizer, n=3)
    for method, mp in (("linear", {"weight": 0.5}), ("ties", {"weight": 0.5, "density": 0.4}),
                       ("breadcrumbs", {"weight": 0.5, "density": 0.6, "gamma": 0.05})):
        recipe = tmp_path / f"{method}.yaml"
        recipe.write_text(yaml.safe_dump({"merge_method": method, "dtype": "float32", "base_model": str(parents[0]),
                                          "models": [{"model": str(p), "parameters": mp} for p in parents[1:]]}))
        for device in ("cpu", "cuda"):
            assert main(["merge", str(recipe), str(tmp_path / f"{method}-{device}"), "--device", device, "--quiet"]) == 0
        cpu, gpu = read_all(tmp_path / f"{method}-cpu"), read_all(tmp_path / f"{method}-cuda")
        assert set(cpu) == set(gpu)
        for name in cpu:
            assert torch.allclose(cpu[name], gpu[name], rtol=1e-5, atol=1e-6), (method, name)
