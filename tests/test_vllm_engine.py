"""Children swapped into a live vLLM engine, against fresh engines on the children `alloy merge` writes.

One engine per architecture (tiny Llama, Qwen3-MoE and DeepSeek-V3 shaped for vLLM's CPU kernels;
DeepSeek-V3 in bfloat16, which its CPU MLA attention needs; dense Qwen3 is Qwen3-MoE's attention with
Llama's dense MLP, so it adds no path of its own) is started
on the sweep's store with dummy weights and kept for the module; each child is swapped in from the
store. A fresh engine on the child's checkpoint is the reference: same greedy token ids, same
`alloy.evaluate` results on real task slices.
"""
from __future__ import annotations

import gc

import pytest

pytest.importorskip("vllm")

from alloy.errors import AlloyError  # noqa: E402
from alloy.io.checkpoint import Checkpoint  # noqa: E402
from tests.parents import merged_child, write_parents  # noqa: E402
from tests.vllm_swaps import greedy, recipes, swap_each  # noqa: E402

ARCHS = ("llama", "qwen3_moe", "deepseek_v3")
def evaluation(llm, shared_data):
    from alloy.evaluation import evaluate
    from alloy.evaluation.vllm_lm import ThinkingVLLM

    lm = ThinkingVLLM(llm, max_gen_toks=16, seed=0)
    result = evaluate(lm, None, ["aime24", "math500"], limit=2, max_gen_toks=16, data_dir=shared_data,
                      log_samples=True)
    return result.to_dict()["tasks"]


@pytest.fixture(scope="module", params=ARCHS)
def swapped(request, local_ray, tmp_path_factory, tiny_tokenizer, shared_data):
    """Per architecture: the outputs of each child swapped into one engine (and of the first child
    swapped back), and those of a fresh engine on each child's merged checkpoint."""
    from alloy.evaluation.vllm_lm import cpu_dtype, local_engine
    from alloy.workers.engine import VllmEngine
    from alloy.workers.store import start_stores

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    paths = write_parents(root, arch, tiny_tokenizer, vllm=True, scale=0.3)
    sweep = f"vllm-test-{arch}"
    stores = start_stores(sweep, {str(p): str(p) for p in paths}, base=str(paths[0]), detached=False)
    engine = VllmEngine(sweep)
    children = recipes(paths)

    def measure(llm):
        return {"tokens": greedy(llm), "eval": evaluation(llm, shared_data)}

    swaps = swap_each(engine, children, measure)
    fresh = []
    for i, recipe in enumerate(children):
        child = merged_child(root, recipe, f"child{i}")
        llm = local_engine(str(child), dtype=cpu_dtype(Checkpoint.open(child).config), enforce_eager=True)
        fresh.append(measure(llm))
        del llm
        gc.collect()
    yield dict(arch=arch, swaps=swaps, fresh=fresh, engine=engine, paths=paths)
    del engine, stores
    gc.collect()


@pytest.mark.slow
def test_swapped_child_equals_fresh_engine(swapped):
    for swap, fresh in zip(swapped["swaps"], swapped["fresh"]):
        assert swap["tokens"] == fresh["tokens"]
    assert swapped["swaps"][0]["tokens"] != swapped["swaps"][1]["tokens"]  # the children differ


@pytest.mark.slow
def test_swapping_back_restores_outputs(swapped):
    assert swapped["swaps"][2]["tokens"] == swapped["swaps"][0]["tokens"]
    assert swapped["swaps"][2]["eval"] == swapped["swaps"][0]["eval"]


@pytest.mark.slow
def test_evaluate_on_swapped_engine_equals_fresh_engine(swapped):
    for swap, fresh in zip(swapped["swaps"], swapped["fresh"]):
        assert swap["eval"] == fresh["eval"]
        for task in swap["eval"].values():
            assert task["n_samples"] == 2 and task["output_tokens"]["total"] > 0


@pytest.mark.slow
def test_recipe_for_other_parents_is_refused(swapped, tmp_path):
    recipe = recipes(swapped["paths"])[0]
    recipe["models"][0]["model"] = str(tmp_path / "elsewhere")
    with pytest.raises(AlloyError, match="does not hold"):
        swapped["engine"].swap(recipe)


def test_unservable_architecture_and_head_split_are_refused():
    from alloy.workers.engine import check_servable

    with pytest.raises(AlloyError, match="backend: hf"):
        check_servable({"architectures": ["NoSuchModelForCausalLM"], "num_attention_heads": 4}, 1, "x/config.json")
    with pytest.raises(AlloyError, match="do not divide"):
        check_servable({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 6}, 4, "x/config.json")
    check_servable({"architectures": ["LlamaForCausalLM"], "num_attention_heads": 8}, 4, "x/config.json")


@pytest.mark.slow
def test_tensor_parallel_2_on_cpu(local_ray, tmp_path, tiny_tokenizer):
    """Two CPU ranks (vLLM's `mp` executor, one CPU each): each rank merges its own shard of a
    Qwen3-MoE child (attention heads and every expert split over the ranks) from the store, and the
    engine then answers as a one-rank fresh engine on the child `alloy merge` writes (float32, so the
    ranks' sum order does not flip a greedy token); swapping back restores."""
    from alloy.evaluation.vllm_lm import local_engine
    from alloy.workers.engine import VllmEngine
    from alloy.workers.store import start_stores

    paths = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, vllm=True, scale=0.3, hidden_size=128)
    stores = start_stores("vllm-test-tp2", {str(p): str(p) for p in paths}, base=str(paths[0]), detached=False)
    engine = VllmEngine("vllm-test-tp2", tensor_parallel=2)
    children = recipes(paths)
    swapped = swap_each(engine, children)
    del engine
    gc.collect()
    assert swapped[0] != swapped[1] and swapped[2] == swapped[0]
    for i, recipe in enumerate(children):
        llm = local_engine(str(merged_child(tmp_path, recipe, f"child{i}")), dtype="float32", enforce_eager=True)
        assert greedy(llm) == swapped[i]
        del llm
        gc.collect()
    del stores


def test_padded_cpu_experts_are_refused():
    from alloy.workers.engine import check_servable

    config = {"architectures": ["Qwen3MoeForCausalLM"], "num_attention_heads": 4, "moe_intermediate_size": 32}
    check_servable(config, 1, "x/config.json", on_cpu=True)
    check_servable(config, 2, "x/config.json")  # on GPUs nothing is padded
    with pytest.raises(AlloyError, match="pad"):
        check_servable(config, 2, "x/config.json", on_cpu=True)
