"""Parents in the Ray object store and children built in memory, against `alloy merge` on disk."""
from __future__ import annotations

import hashlib

import pytest
import ray
import torch

from alloy.errors import AlloyError
from tests.parents import disk_child, read_all, write_parents


def recipes_for(p: list) -> list[dict]:
    v3, r1, r2 = (str(x) for x in p)
    models = [{"model": v3, "parameters": {"weight": 1.0}}, {"model": r1, "parameters": {"weight": 0.0}},
              {"model": r2, "parameters": {"weight": 0.0}}]
    return [
        {"merge_method": "linear", "dtype": "bfloat16",  # merged straight into the bf16 resident model
         "models": [{"model": v3, "parameters": {"weight": 0.2}},
                                              {"model": r1, "parameters": {"weight": 0.5}},
                                              {"model": r2, "parameters": {"weight": 0.3}}]},
        {"merge_method": "linear", "base_model": v3, "models": models,
         "groups": {"routed_experts": {"merge_method": "aoe", "parameters": {"threshold": 0.01},
                                       "model_parameters": {v3: {"weight": 0.0}, r1: {"weight": 0.6},
                                                            r2: {"weight": 0.4}}}}},
        {"merge_method": "ties", "base_model": v3, "parameters": {"density": 0.6},
         "models": [{"model": v3}, {"model": r1, "parameters": {"weight": 0.7}},
                    {"model": r2, "parameters": {"weight": 0.5}}]},
        {"merge_method": "dare_linear", "base_model": v3, "seed": 11, "parameters": {"density": 0.5},
         "models": [{"model": r1, "parameters": {"weight": 0.5}}, {"model": r2, "parameters": {"weight": 0.5}}]},
    ]


def store_digest(sweep: str) -> str:
    from alloy.workers.store import connect_stores, merged_manifest

    manifest = merged_manifest(connect_stores(sweep))
    h = hashlib.sha256()
    for model in sorted(manifest.blocks):
        for block in sorted(manifest.blocks[model]):
            for name, arr in sorted(ray.get(manifest.blocks[model][block]).items()):
                h.update(name.encode())
                h.update(arr.tobytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_builders_match_alloy_merge(tmp_path, tiny_tokenizer, local_ray, arch):
    from alloy.workers.builder import builder_actor
    from alloy.workers.store import start_stores

    parents = write_parents(tmp_path, arch, tiny_tokenizer, n=3, dtype=torch.bfloat16)
    sweep = f"t-{arch}"
    stores = start_stores(sweep, {str(p): p for p in parents}, base=str(parents[0]), n_shards=2)
    digest = store_digest(sweep)
    manifest = ray.get(stores[1].load.remote())   # layer shard: aoe reads its distances from here
    assert manifest.base == str(parents[0]) and any(".experts." in n for n in manifest.distances[str(parents[1])])
    Builder = builder_actor(num_cpus=0.5)
    builders = [Builder.remote(sweep) for _ in range(2)]
    recipes = recipes_for(parents)
    # two builders, recipes in flight concurrently, each builder reused for several children
    for round_ in range(2):
        pending = [b.build.remote(r) for b, r in zip(builders, recipes[2 * round_: 2 * round_ + 2])]
        reports = ray.get(pending)
        states = ray.get([b.state_dict.remote() for b in builders])
        for recipe, report, state in zip(recipes[2 * round_: 2 * round_ + 2], reports, states):
            expected = disk_child(tmp_path, recipe, f"{arch}-{report.recipe_hash}")
            assert set(state) == {n for n in expected if not n.endswith("_scale_inv")}
            for name, t in state.items():
                assert torch.equal(t, expected[name]), (recipe["merge_method"], name)
    # materialize writes exactly what alloy merge writes
    out = tmp_path / "materialized"
    ray.get(builders[0].materialize.remote(recipes[1], str(out)))
    expected = read_all(tmp_path / f"{arch}-{ray.get(builders[1].plan.remote(recipes[1])).recipe.hash}")
    got = read_all(out)
    assert set(got) == set(expected) and all(torch.equal(got[n], expected[n]) for n in got)
    assert {p.name for p in out.iterdir()} >= {"config.json", "tokenizer.json", "README.md", "alloy_recipe.yaml"}
    # parents in the store are untouched after all those builds
    assert store_digest(sweep) == digest
    stats = ray.get(stores[0].stats.remote()).to_pylist() + ray.get(stores[1].stats.remote()).to_pylist()
    assert {r["model"] for r in stats} == {str(parents[1]), str(parents[2])}
    # every perturbed parameter differs; buffers the fine-tunes share (e_score_correction_bias) are at 0
    assert all(r["relative"] > 0 and r["rms"] > 0 for r in stats if "e_score_correction_bias" not in r["tensor"])
    assert "routed_experts" in {r["group"] for r in stats}
    for h in builders + stores:
        ray.kill(h)


@pytest.mark.slow
def test_store_restart_and_bad_recipes(tmp_path, tiny_tokenizer, local_ray):
    from alloy.workers.builder import builder_actor
    from alloy.workers.store import start_stores

    parents = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, n=3, dtype=torch.bfloat16)
    (other,) = write_parents(tmp_path / "dense", "llama", tiny_tokenizer, n=1, dtype=torch.bfloat16)
    sweep = "t-restart"
    (store,) = start_stores(sweep, {str(p): p for p in parents}, base=str(parents[0]))
    builder = builder_actor(num_cpus=0.5).remote(sweep)
    recipe = recipes_for(parents)[0]
    first = ray.get(builder.state_dict.remote()) if ray.get(builder.build.remote(recipe)) else None
    pid_before = ray.get(store.__ray_call__.remote(lambda self: __import__("os").getpid()))
    ray.kill(store, no_restart=False)  # the store dies mid-sweep; Ray restarts it
    report = ray.get(builder.build.remote(recipes_for(parents)[1]))
    assert report.tensors > 0
    ray.get(builder.build.remote(recipe))
    assert all(torch.equal(a, b) for a, b in zip(first.values(), ray.get(builder.state_dict.remote()).values()))
    assert ray.get(store.__ray_call__.remote(lambda self: __import__("os").getpid())) != pid_before

    missing = {**recipe, "models": recipe["models"] + [{"model": str(other), "parameters": {"weight": 1.0}}]}
    with pytest.raises(AlloyError, match="does not hold"):
        ray.get(builder.build.remote(missing))
    with pytest.raises(AlloyError, match="frobnicate"):
        ray.get(builder.build.remote({**recipe, "merge_method": "frobnicate"}))
    assert ray.get(builder.build.remote(recipe)).tensors > 0  # still usable

    # a store of a different architecture: a builder of the first sweep refuses its recipes
    start_stores("t-dense", {str(other): other})
    with pytest.raises(AlloyError, match="does not hold"):
        ray.get(builder.build.remote({"merge_method": "linear", "models": [{"model": str(other),
                                                                            "parameters": {"weight": 1}}]}))
    ray.kill(builder)


def test_store_refuses_what_does_not_fit(local_ray):
    from alloy.workers.store import _check_capacity

    with pytest.raises(AlloyError, match="object-store-memory"):
        _check_capacity(10**15, 0)


def test_a_worker_that_cannot_start_says_why(local_ray):
    from alloy.workers.pool import wait_started

    class Unstartable:
        def __init__(self):
            raise AlloyError("alloy's sandbox needs bubblewrap")

    actor = ray.remote(num_cpus=0)(Unstartable).remote()
    with pytest.raises(AlloyError, match="^a sweep worker could not start: alloy's sandbox needs bubblewrap$"):
        wait_started([actor])
