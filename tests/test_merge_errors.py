"""Every bad input of `alloy merge` fails with a message naming what is wrong, and leaves no output."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from alloy.cli import main
from alloy.merge.recipe import Recipe
from tests.parents import write_parents


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("parents")
    return write_parents(root, "llama", tiny_tokenizer, n=2)


def linear(a: Path, b: Path, **extra) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                                                {"model": str(b), "parameters": {"weight": 0.5}}], **extra}


def run_merge_expecting_error(tmp_path: Path, recipe: dict | str, capsys, *needles: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    out = tmp_path / "child"
    assert main(["merge", str(path), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not out.exists()
    assert not any(p.name.startswith(".child") for p in tmp_path.iterdir()), "staging folder left behind"


def copy_parent(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_model_folder(tmp_path, parents, capsys):
    run_merge_expecting_error(tmp_path, linear(parents[0], tmp_path / "nope"), capsys, "nope", "not found")


def test_missing_recipe_and_bad_yaml(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "absent.yaml"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    run_merge_expecting_error(tmp_path, "models: [\n", capsys, "recipe.yaml", "YAML")


def test_unreadable_config_and_weights(tmp_path, parents, capsys):
    bad = copy_parent(parents[1], tmp_path / "badcfg")
    (bad / "config.json").write_text("{not json")
    run_merge_expecting_error(tmp_path, linear(parents[0], bad), capsys, "config.json", "JSON")
    shard = copy_parent(parents[1], tmp_path / "badshard")
    (shard / "model.safetensors").write_bytes(b"garbage")
    run_merge_expecting_error(tmp_path, linear(parents[0], shard), capsys, "model.safetensors", "safetensors")


def test_different_architectures(tmp_path, parents, tiny_tokenizer, capsys):
    (other,) = write_parents(tmp_path, "qwen2", tiny_tokenizer, n=1)
    run_merge_expecting_error(tmp_path, linear(parents[0], other), capsys, "different architectures", "Qwen2")


def test_different_shapes(tmp_path, parents, tiny_tokenizer, capsys):
    (wide,) = write_parents(tmp_path / "wide", "llama", tiny_tokenizer, n=1, intermediate_size=160)
    run_merge_expecting_error(tmp_path, linear(parents[0], wide), capsys, "mlp", "shape")


def test_different_vocabularies(tmp_path, parents, capsys):
    from alloy.tiny import train_tokenizer

    other = copy_parent(parents[1], tmp_path / "othervocab")
    train_tokenizer(["completely different text " * 50, "zebra quartz jukebox"]).save_pretrained(other)
    run_merge_expecting_error(tmp_path, linear(parents[0], other), capsys, "different vocabularies", "tokenizer")


def test_unknown_method_parameter_group(tmp_path, parents, capsys):
    run_merge_expecting_error(tmp_path, {**linear(*parents), "merge_method": "frobnicate"}, capsys, "frobnicate")
    run_merge_expecting_error(tmp_path, linear(*parents, parameters={"densty": 0.5}), capsys, "densty")
    run_merge_expecting_error(tmp_path, linear(*parents, groups={"experts": {"merge_method": "linear"}}),
                              capsys, "groups.experts", "routed_experts")
    run_merge_expecting_error(tmp_path, linear(*parents, groups={"mlp": {"parameters": {"threshold": 0.1}}}),
                              capsys, "groups.mlp", "threshold")


def test_weights_sum_to_zero(tmp_path, parents, capsys):
    recipe = linear(*parents)
    recipe["models"][0]["parameters"]["weight"] = 1.0
    recipe["models"][1]["parameters"]["weight"] = -1.0
    run_merge_expecting_error(tmp_path, recipe, capsys, "sum to zero")
    # only some tensors sum to zero: still caught before any tensor is read
    recipe["models"][1]["parameters"]["weight"] = [{"filter": "mlp", "value": -1.0}, {"value": 0.5}]
    run_merge_expecting_error(tmp_path, recipe, capsys, "mlp", "sum to zero")
    # nuslerp normalizes its two weights whatever the parameters say
    nuslerp = linear(*parents, merge_method="nuslerp")
    nuslerp["models"][0]["parameters"]["weight"], nuslerp["models"][1]["parameters"]["weight"] = 1.0, -1.0
    run_merge_expecting_error(tmp_path, nuslerp, capsys, "sum to zero")


def test_missing_required_weight_and_bad_values(tmp_path, parents, capsys):
    recipe = linear(*parents)
    del recipe["models"][1]["parameters"]["weight"]
    run_merge_expecting_error(tmp_path, recipe, capsys, "weight", str(parents[1]))
    recipe = linear(*parents, base_model=str(parents[0]), merge_method="ties",
                    parameters={"density": 1.5})
    run_merge_expecting_error(tmp_path, recipe, capsys, "density", "range")
    run_merge_expecting_error(tmp_path, {**linear(*parents), "slices": []}, capsys, "slices")


def test_nan_in_an_input_names_the_tensor(tmp_path, parents, capsys):
    from safetensors.torch import load_file, save_file

    sick = copy_parent(parents[1], tmp_path / "sick")
    sd = load_file(sick / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    sd[name][0, 0] = math.nan
    save_file(sd, str(sick / "model.safetensors"), metadata={"format": "pt"})
    run_merge_expecting_error(tmp_path, linear(parents[0], sick), capsys, name, "NaN", "sick")


def test_output_exists(tmp_path, parents, capsys):
    (tmp_path / "child").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(linear(*parents)))
    assert main(["merge", str(path), str(tmp_path / "child"), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(path), str(tmp_path / "child"), "--quiet", "--overwrite"]) == 0
    assert (tmp_path / "child" / "config.json").is_file()


def test_interrupted_merge_leaves_nothing(tmp_path, parents):
    from alloy.merge.executor import run_merge
    from alloy.merge.plan import plan_merge

    plan = plan_merge(Recipe.from_dict(linear(*parents)))

    def boom(task):
        if task.name.endswith("layers.1.mlp.up_proj.weight"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_merge(plan, tmp_path / "child", progress=False, on_tensor=boom)
    assert list(tmp_path.iterdir()) == []


def test_canonical_form_and_hash(parents):
    a = Recipe.from_dict(linear(*parents))
    spelled = {"models": [{"model": str(parents[0]), "parameters": {"weight": 1 / 2}},
                          {"model": str(parents[1]), "parameters": {"weight": 0.5}}],
               "merge_method": "linear", "parameters": {"normalize": True}, "seed": 7}
    b = Recipe.from_dict(spelled)
    assert a.hash == b.hash and a.canonical_json() == b.canonical_json()
    c = Recipe.from_dict({**linear(*parents), "models": [{"model": str(parents[0]), "parameters": {"weight": 0.6}},
                                                         {"model": str(parents[1]), "parameters": {"weight": 0.4}}]})
    assert c.hash != a.hash
    assert Recipe.from_dict(yaml.safe_load(a.to_yaml())).hash == a.hash
    # seeds matter only for random methods
    dare = {**linear(*parents), "merge_method": "dare_linear", "base_model": str(parents[0])}
    assert Recipe.from_dict({**dare, "seed": 1}).hash != Recipe.from_dict({**dare, "seed": 2}).hash
    assert json.loads(a.canonical_json())["seed"] is None


def test_merge_does_not_touch_parents(tmp_path, parents):
    before = {p: {f.name: f.read_bytes() for f in p.iterdir()} for p in parents}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(linear(*parents)))
    assert main(["merge", str(path), str(tmp_path / "child"), "--quiet"]) == 0
    assert before == {p: {f.name: f.read_bytes() for f in p.iterdir()} for p in parents}
    assert torch.cuda.is_available() or main(["merge", str(path), str(tmp_path / "c2"), "--device", "cuda",
                                              "--quiet"]) == 2
