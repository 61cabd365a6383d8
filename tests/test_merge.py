"""End-to-end merges of tiny parents of every supported architecture, from disk to disk."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from alloy.cli import main
from alloy.merge.groups import preset_for
from tests.parents import read_all, to_fp8_checkpoint, write_parents

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "deepseek_v3")


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def load_child(folder: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 7, 42, 9]])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()
    return model


@pytest.mark.parametrize("arch,dtype", [(a, torch.bfloat16 if i % 2 else torch.float32) for i, a in enumerate(ARCHS)])
def test_linear_merge_of_every_architecture(tmp_path, tiny_tokenizer, arch, dtype):
    parents = write_parents(tmp_path, arch, tiny_tokenizer, n=3, dtype=dtype, max_shard_size="40KB")
    weights = [0.5, 0.3, 0.2]
    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "linear",
        "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(parents, weights)],
    })
    out = tmp_path / "child"
    assert main(["merge", str(recipe), str(out), "--max-shard-size", "60KB", "--quiet"]) == 0

    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    for f in ("config.json", "generation_config.json", "tokenizer.json", "README.md", "alloy_recipe.yaml"):
        assert f in files
    child = read_all(out)
    inputs = [read_all(p) for p in parents]
    assert set(child) == set(inputs[0]), "no tensor may be dropped, renamed or added"
    groups = {preset_for(json.loads((parents[0] / "config.json").read_text())).group_of(n) for n in child}
    if arch in ("mixtral", "qwen3_moe", "deepseek_v3"):
        assert "routed_experts" in groups and "router" in groups
    for name, t in child.items():
        assert t.dtype == dtype
        ref = sum(w * p[name].double() for w, p in zip(weights, inputs))
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert torch.allclose(t.double(), ref, atol=tol, rtol=tol), name
    load_child(out)


@pytest.mark.parametrize("arch", ["deepseek_v3", "qwen3_moe"])
def test_aoe_one_hot_routed_experts_is_bit_exact(tmp_path, tiny_tokenizer, arch):
    v3, r1, r1b = write_parents(tmp_path, arch, tiny_tokenizer, n=3, dtype=torch.bfloat16)
    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "linear", "base_model": str(v3),
        "models": [{"model": str(v3), "parameters": {"weight": 1.0}},
                   {"model": str(r1), "parameters": {"weight": 0.0}},
                   {"model": str(r1b), "parameters": {"weight": 0.0}}],
        "groups": {"routed_experts": {"merge_method": "aoe", "parameters": {"threshold": 0.0},
                                      "model_parameters": {str(v3): {"weight": 0.0}, str(r1): {"weight": 1.0},
                                                           str(r1b): {"weight": 0.0}}}},
    })
    out = tmp_path / "chimera"
    assert main(["merge", str(recipe), str(out), "--quiet"]) == 0
    child, base, expert = read_all(out), read_all(v3), read_all(r1)
    preset = preset_for(json.loads((v3 / "config.json").read_text()))
    n_routed = 0
    for name, t in child.items():
        source = expert if preset.group_of(name) == "routed_experts" else base
        n_routed += preset.group_of(name) == "routed_experts"
        assert torch.equal(t, source[name]), name
    assert n_routed > 0
    load_child(out)


def test_fp8_parents_merge_to_fp8_and_to_bf16(tmp_path, tiny_tokenizer):
    from alloy.io.fp8 import dequantize

    bf16 = write_parents(tmp_path, "deepseek_v3", tiny_tokenizer, n=2, dtype=torch.bfloat16)
    fp8 = [to_fp8_checkpoint(p, tmp_path / f"fp8_{i}", block=(32, 32)) for i, p in enumerate(bf16)]
    recipe = {"merge_method": "linear", "base_model": str(fp8[0]),
              "models": [{"model": str(fp8[0]), "parameters": {"weight": 0.6}},
                         {"model": str(fp8[1]), "parameters": {"weight": 0.4}}]}
    write_recipe(tmp_path / "fp8.yaml", recipe)
    assert main(["merge", str(tmp_path / "fp8.yaml"), str(tmp_path / "out8"), "--quiet"]) == 0
    child, a, b = read_all(tmp_path / "out8"), read_all(fp8[0]), read_all(fp8[1])
    assert set(child) == set(a)
    cfg = json.loads((tmp_path / "out8" / "config.json").read_text())
    assert cfg["quantization_config"]["weight_block_size"] == [32, 32]
    n_fp8 = 0
    for name, t in child.items():
        if t.dtype != torch.float8_e4m3fn:
            continue
        n_fp8 += 1
        s = name + "_scale_inv"
        got = dequantize(t, child[s], block=(32, 32))
        ref = 0.6 * dequantize(a[name], a[s], block=(32, 32)) + 0.4 * dequantize(b[name], b[s], block=(32, 32))
        assert child[s].shape == a[s].shape
        # e4m3 keeps 3 mantissa bits: one rounding step is at most 1/16 of the block's largest value
        assert (got - ref).abs().max() <= ref.abs().max() / 14, name
        # new scales are amax/448 of the merged block, not an interpolation of the parents' scales
        assert torch.allclose(child[s][0, 0], ref[:32, :32].abs().max() / 448, rtol=1e-6)
    assert n_fp8 > 10

    recipe["out_dtype"] = "bfloat16"
    write_recipe(tmp_path / "bf16.yaml", recipe)
    assert main(["merge", str(tmp_path / "bf16.yaml"), str(tmp_path / "out16"), "--quiet"]) == 0
    child16 = read_all(tmp_path / "out16")
    assert not any(n.endswith("_scale_inv") for n in child16)
    assert all(t.dtype == torch.bfloat16 for t in child16.values())
    assert "quantization_config" not in json.loads((tmp_path / "out16" / "config.json").read_text())
    load_child(tmp_path / "out16")

    # one-hot: the FP8 child is the parent byte for byte (requantizing a dequantized block is exact)
    recipe.update(out_dtype=None, models=[{"model": str(fp8[0]), "parameters": {"weight": 0.0}},
                                          {"model": str(fp8[1]), "parameters": {"weight": 1.0}}])
    recipe.pop("out_dtype")
    write_recipe(tmp_path / "hot.yaml", recipe)
    assert main(["merge", str(tmp_path / "hot.yaml"), str(tmp_path / "hot"), "--quiet"]) == 0
    hot = read_all(tmp_path / "hot")
    for name, t in hot.items():
        assert torch.equal(t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t,
                           b[name].view(torch.uint8) if b[name].dtype == torch.float8_e4m3fn else b[name]), name


def test_mergekit_config_runs_unchanged(tmp_path, tiny_tokenizer, monkeypatch):
    parents = write_parents(tmp_path, "llama", tiny_tokenizer, n=3)
    monkeypatch.chdir(tmp_path)
    config = f"""
models:
  - model: {parents[0].name}
  - model: {parents[1].name}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {parents[2].name}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: ties
base_model: {parents[0].name}
parameters:
  normalize: true
dtype: float32
"""
    (tmp_path / "ties.yaml").write_text(config)
    assert main(["merge", "ties.yaml", "out", "--quiet"]) == 0
    child, base = read_all(tmp_path / "out"), read_all(parents[0])
    assert set(child) == set(base)
    changed = [n for n in child if not torch.equal(child[n], base[n])]
    assert len(changed) > len(child) // 2
    load_child(tmp_path / "out")


def test_per_layer_gradient_and_filters(tmp_path, tiny_tokenizer):
    a, b = write_parents(tmp_path, "llama", tiny_tokenizer, n=2, num_layers=3)
    recipe = write_recipe(tmp_path / "r.yaml", {
        "merge_method": "linear",
        "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                   {"model": str(b), "parameters": {"weight": [
                       {"filter": "self_attn", "value": [0.0, 1.0]},
                       {"filter": "mlp", "value": 3.0},
                       {"value": 0.0}]}}],
    })
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 0
    child, pa, pb = read_all(tmp_path / "out"), read_all(a), read_all(b)
    for name, t in child.items():
        if "self_attn" in name:
            layer = int(name.split(".")[2])
            w = layer / 2  # gradient [0, 1] over 3 layers: 0, 0.5, 1
        elif "mlp" in name:
            w = 3.0
        else:
            w = 0.0
        ref = (pa[name].double() + w * pb[name].double()) / (1 + w)
        assert torch.allclose(t.double(), ref, atol=1e-6), name


def test_legacy_bin_parent(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file

    a, b = write_parents(tmp_path, "qwen2", tiny_tokenizer, n=2)
    sd = load_file(b / "model.safetensors")
    (b / "model.safetensors").unlink()
    torch.save(sd, b / "pytorch_model.bin")
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 0.0}}, {"model": str(b), "parameters": {"weight": 1.0}}]})
    assert main(["merge", str(recipe), str(tmp_path / "out"), "--quiet"]) == 0
    child = read_all(tmp_path / "out")
    assert all(torch.equal(child[n], sd[n]) for n in sd)


def test_progress_and_summary_unless_quiet(tmp_path, tiny_tokenizer, capsys):
    a, b = write_parents(tmp_path, "llama", tiny_tokenizer, n=2)
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 1}}, {"model": str(b), "parameters": {"weight": 1}}]})
    assert main(["merge", str(recipe), str(tmp_path / "o1")]) == 0
    captured = capsys.readouterr()
    assert "merging" in captured.err and "merged" in captured.out
    assert main(["merge", str(recipe), str(tmp_path / "o2"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_inspect_prints_groups(tmp_path, tiny_tokenizer, capsys):
    base, other = write_parents(tmp_path, "deepseek_v3", tiny_tokenizer, n=2)
    assert main(["inspect", str(base), "--distances", str(other)]) == 0
    out = capsys.readouterr().out
    for g in ("embed", "attention", "mlp", "router", "shared_experts", "routed_experts", "lm_head", "total"):
        assert g in out
    assert "preset deepseek_v3" in out and "distances to" in out
    assert main(["inspect", "--distances", str(base), str(other)]) == 0   # the spelling of DESIGN.md
    assert capsys.readouterr().out == out
    assert main(["inspect"]) == 2
