"""The vLLM backend on GPUs: tensor parallel 1 and 2, two pipeline stages, DeepSeek-V3's MLA, and block-FP8
children (skipped without CUDA).

Each test swaps children into a live engine and compares with a fresh engine on the child that
`alloy merge` writes, as tests/test_vllm_engine.py does on the CPU build.
"""
from __future__ import annotations

import gc

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("vllm")

from tests.parents import merged_child, to_fp8_checkpoint, write_parents  # noqa: E402
from tests.vllm_swaps import greedy, recipes, swap_each  # noqa: E402


def swap_against_fresh(root, paths, sweep: str, tensor_parallel: int, out_dtype: str | None = None,
                       stages: int = 1) -> None:
    from vllm import LLM

    from alloy.workers.engine import VllmEngine
    from alloy.workers.store import start_stores

    stores = start_stores(sweep, {str(p): str(p) for p in paths}, base=str(paths[0]), detached=False)
    children = recipes(paths)
    if out_dtype:
        children = [{**r, "out_dtype": out_dtype} for r in children]
    engine = VllmEngine(sweep, tensor_parallel=tensor_parallel, pipeline_parallel=stages, executor="mp")
    swapped = swap_each(engine, children)
    del engine
    gc.collect()
    assert swapped[2] == swapped[0] and swapped[0] != swapped[1]
    for i, recipe in enumerate(children):
        llm = LLM(model=str(merged_child(root, recipe, f"child{i}")), tensor_parallel_size=tensor_parallel,
                  pipeline_parallel_size=stages, dtype="bfloat16", distributed_executor_backend="mp",
                  gpu_memory_utilization=0.3)
        assert greedy(llm) == swapped[i]
        del llm
        gc.collect()
    del stores


def test_tensor_parallel_1(local_ray, tmp_path, tiny_tokenizer):
    paths = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, vllm=True, scale=0.3, dtype=torch.bfloat16)
    swap_against_fresh(tmp_path, paths, "gpu-tp1", 1)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tensor_parallel_2(local_ray, tmp_path, tiny_tokenizer):
    paths = write_parents(tmp_path, "qwen3", tiny_tokenizer, vllm=True, scale=0.3, hidden_size=128,
                          dtype=torch.bfloat16)
    swap_against_fresh(tmp_path, paths, "gpu-tp2", 2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_pipeline_stages(local_ray, tmp_path, tiny_tokenizer):
    """Each stage's rank merges and loads only its own layers (`own_stage`)."""
    paths = write_parents(tmp_path, "qwen3", tiny_tokenizer, vllm=True, scale=0.3, hidden_size=128,
                          dtype=torch.bfloat16)
    swap_against_fresh(tmp_path, paths, "gpu-pp2", 1, stages=2)


def test_deepseek_v3_mla(local_ray, tmp_path, tiny_tokenizer):
    """The GPU MLA path: its processed W_UK/W_UV are recomputed from the swapped kv_b_proj."""
    paths = write_parents(tmp_path, "deepseek_v3", tiny_tokenizer, vllm=True, scale=0.3, hidden_size=128,
                          dtype=torch.bfloat16)
    swap_against_fresh(tmp_path, paths, "gpu-mla", 1)


def test_block_fp8_children(local_ray, tmp_path, tiny_tokenizer):
    bf16 = write_parents(tmp_path / "bf16", "llama", tiny_tokenizer, vllm=True, scale=0.3, hidden_size=256,
                         intermediate_size=512)
    paths = [to_fp8_checkpoint(p, tmp_path / f"fp8_{p.name}") for p in bf16]
    swap_against_fresh(tmp_path, paths, "gpu-fp8", 1, out_dtype="float8_e4m3fn")
