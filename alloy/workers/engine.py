"""Children swapped into a live vLLM engine: the vLLM backend of the sweep's workers.

A `VllmEngine` starts once per worker for the parents' architecture without reading any weights
(`load_format="dummy"`, on the config and tokenizer of a parent). For each candidate, `swap` calls
`SwapExtension.alloy_swap` on every rank of the engine through `collective_rpc`: each rank plans the
recipe against the sweep's `ParentStore` manifest, merges the child tensor by tensor straight from the
object store (the same `stored_tensors` as `alloy merge`, on the rank's own device) and feeds the
tensors to vLLM's in-place `reload_weights` as an iterator, so no process ever holds a whole child
and the transfer buffer is one store block per parent plus one tensor. vLLM's own `load_weights` then
shards each tensor for its rank (tensor parallel) or, for a block-FP8 child (DeepSeek-V3), takes the
FP8 values and scales through its FP8 loading and re-processing path. Two steps vLLM 0.32's reload
misses are done around it: the MLA projections that its CPU attention releases after packing are given
back their shape before the reload, and the fused MoE experts are repacked after it. Then the prefix
cache is reset.

Engines of one worker's GPUs: tensor parallel over `gpu` GPUs of one node (`tensor_parallel`), and
pipeline parallel across nodes where one node is too small (`pipeline_parallel`, the search space's
`resources.stages`: the model's layers split into that many stages, each on one node's GPUs). One
rank runs in the worker's own process (`uni` executor); more ranks run as Ray actors of the sweep's
cluster (vLLM's Ray executor) or, on a CPU host, as local processes (`mp`). Each rank merges and
loads only the layers of its own stage (`own_stage`).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import ray
import torch

from alloy.errors import AlloyError
from alloy.merge.executor import stored_tensors
from alloy.merge.groups import layer_index
from alloy.merge.plan import MergePlan
from alloy.merge.recipe import Recipe
from alloy.workers.builder import plan_in_store, store_sources
from alloy.workers.store import StoreManifest, connect_stores, merged_manifest

EXTENSION = "alloy.workers.engine.SwapExtension"
_STORE_ERRORS = (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError, ray.exceptions.RayActorError)


CPU_MOE_ALIGNMENT = 32  # vLLM's CPU MoE kernels pad each rank's expert width to a multiple of this


def check_servable(config: Mapping[str, Any], tensor_parallel: int, where: str, on_cpu: bool = False,
                   stages: int = 1) -> None:
    """AlloyError unless vLLM serves the architecture of `config`, `tensor_parallel` divides its
    attention heads, each of the `stages` pipeline stages gets a layer and, for an engine on CPUs
    (`on_cpu`), each rank's share of an expert's width needs no padding, which vLLM 0.32's in-place
    reload cannot follow. `where` names the model in the message. Imports vllm."""
    from vllm.model_executor.models import ModelRegistry

    architectures = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if not architectures or not any(a in supported for a in architectures):
        raise AlloyError(f"{where}: vLLM cannot serve the architecture {architectures or '(none in config.json)'}; "
                         f"use evaluation.backend: hf (transformers) for it")
    heads = config.get("num_attention_heads")
    if heads and heads % tensor_parallel:
        raise AlloyError(f"{where}: {tensor_parallel} GPUs per worker do not divide the model's {heads} attention "
                         f"heads, so vLLM cannot split it by tensor parallelism; ask for a gpu count that divides "
                         f"{heads}")
    layers = config.get("num_hidden_layers")
    if layers and stages > layers:
        raise AlloyError(f"{where}: {stages} pipeline stages (search.resources.stages) for the model's {layers} "
                         f"layers leave some stage without a layer; ask for at most {layers} stages")
    width = config.get("moe_intermediate_size") or (config.get("intermediate_size")
                                                    if config.get("num_local_experts") else None)
    if on_cpu and width and (width // tensor_parallel) % CPU_MOE_ALIGNMENT:
        raise AlloyError(f"{where}: each of the {tensor_parallel} engine ranks would hold {width // tensor_parallel} "
                         f"of the experts' {width} intermediate features, which vLLM's CPU MoE kernels pad to a "
                         f"multiple of {CPU_MOE_ALIGNMENT}, and its in-place reload cannot swap padded experts; "
                         f"use evaluation.backend: hf on CPUs for this model")


class SwapExtension:
    """Methods vLLM adds to each of its workers (`worker_extension_cls`), reached through `collective_rpc`."""

    def alloy_swap(self, sweep: str, recipe: dict, address: str) -> dict[str, Any]:
        """Load the child of `recipe` into this rank's model in place, merging from the sweep's stores
        (`address`: the Ray cluster's, for ranks that run in processes of their own)."""
        start = time.perf_counter()
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        for attempt in range(2):
            manifest = _manifest(sweep, refresh=attempt > 0)
            plan = plan_in_store(manifest, recipe, sweep, _template(manifest).config.get("architectures"))
            _check_layout(plan, _template(manifest))
            plan = own_stage(plan, stage_layers(self.model_runner.get_model()))
            restore_released_mla_weights(self.model_runner.get_model())
            try:
                self.model_runner.reload_weights(weights_iterator=_weights(plan, self.device, manifest))
                break
            except _STORE_ERRORS:
                if attempt:
                    raise  # a store restarted: fetch its new refs once, then give up
        repacked = repack_fused_experts(self.model_runner.get_model())
        return {"recipe_hash": plan.recipe.hash, "tensors": len(plan.tasks), "moe_layers": repacked,
                "seconds": time.perf_counter() - start}


_MANIFESTS: dict[str, StoreManifest] = {}


def _manifest(sweep: str, refresh: bool = False) -> StoreManifest:
    """The sweep's store manifest, fetched once per process."""
    if refresh or sweep not in _MANIFESTS:
        _MANIFESTS[sweep] = merged_manifest(connect_stores(sweep))
    return _MANIFESTS[sweep]


def _template(manifest: StoreManifest):
    return next(iter(manifest.checkpoints.values()))


def _check_layout(plan: MergePlan, template) -> None:
    engine_fp8 = "quantization_config" in template.config
    child_fp8 = any(task.fp8_out for task in plan.tasks)
    if child_fp8 != engine_fp8:
        raise AlloyError(f"recipe {plan.recipe.hash} makes a {'block-FP8' if child_fp8 else 'non-FP8'} child, but the "
                         f"engine was started for {'block-FP8' if engine_fp8 else 'non-FP8'} checkpoints like "
                         f"{template.path}; set the recipe's out_dtype to the parents' layout")


def stage_layers(model: torch.nn.Module) -> range | None:
    """The decoder layers of this rank's pipeline stage (vLLM's `start_layer` and `end_layer`), or None
    when the engine has one stage."""
    from vllm.distributed import get_pp_group

    if get_pp_group().world_size == 1:
        return None
    for module in model.modules():
        if isinstance(getattr(module, "start_layer", None), int) and isinstance(getattr(module, "end_layer", None), int):
            return range(module.start_layer, module.end_layer)
    return None


def own_stage(plan: MergePlan, layers: range | None) -> MergePlan:
    """`plan` without the tensors of decoder layers outside `layers` (another stage's, which this rank
    neither holds nor needs merged); tensors of no layer (embeddings, head, norms) stay, and vLLM's
    `load_weights` skips those the stage lacks."""
    if layers is None:
        return plan
    return replace(plan, tasks=[t for t in plan.tasks if (layer := layer_index(t.name)) is None or layer in layers])


def _weights(plan: MergePlan, device: torch.device, manifest: StoreManifest) -> Iterator[tuple[str, torch.Tensor]]:
    """The child's tensors under their checkpoint names, one at a time, in store-block order."""
    for _, stored in stored_tensors(plan, device, store_sources(manifest, plan)):
        yield from stored


def restore_released_mla_weights(model: torch.nn.Module) -> int:
    """Give back each MLA layer's `kv_b_proj` weight that vLLM's CPU (AMX) attention released after
    packing it, as an empty tensor of its loaded shape, so an in-place reload can load the new weight
    into it; the attention layer packs it again (and releases it) at the end of the reload. Returns
    the number of layers restored."""
    count = 0
    for module in model.modules():
        projection = getattr(module, "kv_b_proj", None) if getattr(module, "is_amx_bmm_enabled", False) else None
        if projection is not None and projection.weight.numel() == 0:
            shape = (projection.output_size_per_partition, projection.input_size_per_partition)
            projection.weight = torch.nn.Parameter(torch.empty(shape, dtype=projection.params_dtype),
                                                   requires_grad=False)
            count += 1
    return count


def repack_fused_experts(model: torch.nn.Module) -> int:
    """Run each fused-MoE layer's kernel preparation again after an in-place reload; vLLM 0.32 runs it
    only on the first load, so a reloaded MoE layer would compute with the old packed experts.
    Returns the number of MoE layers."""
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase

    count = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        kernel = getattr(method, "moe_kernel", None)
        if isinstance(method, FusedMoEMethodBase) and kernel is not None:
            kernel.fused_experts.process_weights_after_loading(module)
            count += 1
    return count


class VllmEngine:
    """One long-lived vLLM engine for a sweep's parents, whose weights are swapped per child.

    tensor_parallel and pipeline_parallel: the engine's ranks (`gpu` of the search space, and nodes);
    executor: vLLM's distributed executor for more than one rank (`ray` in a cluster, `mp` on a CPU
    host, each rank bound to its share of the CPUs); dtype: the engine's compute dtype (bfloat16 on GPUs;
    on CPUs `cpu_dtype`: float32, or bfloat16 for MLA).
    """

    def __init__(self, sweep: str, *, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                 executor: str | None = None, dtype: str | None = None, seed: int = 0,
                 max_model_len: int | None = None):
        from alloy.evaluation.vllm_lm import cpu_dtype, cpu_engine_args, cpu_ranks_env, local_engine

        self.sweep = sweep
        manifest = _manifest(sweep, refresh=True)
        template = _template(manifest)
        on_gpu = torch.cuda.is_available()
        check_servable(template.config, tensor_parallel, str(template.path), on_cpu=not on_gpu, stages=pipeline_parallel)
        dtype = dtype or ("bfloat16" if on_gpu else cpu_dtype(template.config))
        # CPU engines run eagerly, except pipeline-parallel ones: vLLM 0.32's eager CPU path never sets up
        # the buffers that carry activations between stages
        options: dict[str, Any] = dict(load_format="dummy", worker_extension_cls=EXTENSION,
                                       enforce_eager=not on_gpu and pipeline_parallel == 1)
        ranks = tensor_parallel * pipeline_parallel
        if ranks == 1:
            self.llm = local_engine(str(template.path), dtype=dtype, seed=seed, max_model_len=max_model_len, **options)
        else:
            from vllm import LLM

            if on_gpu and pipeline_parallel == 1:
                os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")  # every rank on this node
            with nullcontext() if on_gpu else cpu_ranks_env(ranks):
                self.llm = LLM(model=str(template.path), dtype=dtype, seed=seed, max_model_len=max_model_len,
                               tensor_parallel_size=tensor_parallel, pipeline_parallel_size=pipeline_parallel,
                               distributed_executor_backend=executor or ("ray" if on_gpu else "mp"),
                               **cpu_engine_args(), **options)
        self.template: Path = template.path
        self.current: str | None = None

    def swap(self, recipe: Recipe | Mapping[str, Any]) -> float:
        """Make the engine serve the child of `recipe`; returns the seconds it took (merge and load)."""
        start = time.perf_counter()
        recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
        self.current = None  # while its weights are being replaced the engine serves no child
        self.llm.collective_rpc("alloy_swap", args=(self.sweep, recipe.to_dict(),
                                                    ray.get_runtime_context().gcs_address))
        self.llm.reset_prefix_cache()
        self.current = recipe.hash
        return time.perf_counter() - start
