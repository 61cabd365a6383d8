"""Children built in memory: a resident model skeleton whose weights are overwritten per recipe.

A `ChildBuilder` holds one model of the parents' architecture, made once without initializing its
weights. For each recipe it plans the merge against the store's parent metadata, fetches only the
blocks the recipe needs from the object store (zero-copy), merges out of place with the same
`merge_tensor` as `alloy merge`, and copies each result into the resident parameter (mapping
per-expert on-disk tensors into transformers' fused expert tensors). The store's objects are never
written. `materialize` writes the current recipe's child as a checkpoint, atomically.

Run it inside a Ray actor (`BuilderActor`, one per GPU or CPU slot) or in any process connected to
the cluster; the sweep's workers hold a builder and an evaluator side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray
import torch

from alloy.errors import AlloyError
from alloy.io.fp8 import dequantize
from alloy.io.layout import Slot, slots_for
from alloy.merge.executor import MergeReport, finalize_tensor, merge_tensor, read_task_inputs, run_merge
from alloy.merge.plan import MergePlan, TensorTask, plan_merge, weight_names
from alloy.merge.recipe import Recipe
from alloy.workers.store import BlockSource, StoreManifest, block_of, connect_stores, merged_manifest


@dataclass
class BuildReport:
    """What one in-memory build did."""

    recipe_hash: str
    tensors: int
    input_bytes: int
    seconds: float


class ChildBuilder:
    """Builds children of a sweep's parents into one resident model."""

    def __init__(self, sweep: str, device: str = "cpu", dtype: str = "bfloat16"):
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise AlloyError("the builder was asked for CUDA, but this worker has no GPU")
        self.sweep, self.device, self.dtype = sweep, device, getattr(torch, dtype)
        self._stores = connect_stores(sweep)
        self._manifest = merged_manifest(self._stores)
        self.template = template = next(iter(self._manifest.checkpoints.values()))
        self.architecture = template.config.get("architectures")
        config = AutoConfig.for_model(**{k: v for k, v in template.config.items() if k != "quantization_config"})
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model = model.to(device).eval()
        self._params = dict(self.model.state_dict(keep_vars=True))
        self._slots: dict[str, Slot] = slots_for(weight_names(template), self.model)
        self.current: str | None = None

    @property
    def parents(self) -> list[str]:
        """The recipe model names the store holds."""
        return list(self._manifest.checkpoints)

    def plan(self, recipe: Recipe | Mapping[str, Any]) -> MergePlan:
        """Plan `recipe` against the store's parents; AlloyError if it names one the store lacks."""
        return plan_in_store(self._manifest, recipe, self.sweep, self.architecture)

    def build(self, recipe: Recipe | Mapping[str, Any]) -> BuildReport:
        """Make the resident model the child of `recipe` (no new model is allocated)."""
        start = time.perf_counter()
        plan = self.plan(recipe)
        self.current = None  # while its weights are being overwritten the model is no child at all
        for attempt in range(2):
            try:
                self._fill(plan)
                break
            except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError, ray.exceptions.RayActorError):
                if attempt:
                    raise
                self._manifest = merged_manifest(self._stores)  # a store restarted: fetch its new refs
        self.current = plan.recipe.hash
        return BuildReport(plan.recipe.hash, len(plan.tasks), plan.input_bytes(), time.perf_counter() - start)

    def materialize(self, recipe: Recipe | Mapping[str, Any], out: str | Path, max_shard_size: str | int = "5GB",
                    overwrite: bool = False) -> MergeReport:
        """Write the child of `recipe` as a checkpoint folder, atomically, exactly as `alloy merge` would."""
        plan = self.plan(recipe)
        return run_merge(plan, out, device=self.device, max_shard_size=max_shard_size, overwrite=overwrite,
                         progress=False, sources=self._sources(plan))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The resident child's tensors under their on-disk names (copies, on the CPU)."""
        return {n: s.view(self._params).detach().to("cpu").clone() for n, s in self._slots.items()}

    # ----------------------------------------------------------------------------------------------
    def _known_distances(self, plan: MergePlan, task: TensorTask) -> list[dict[str, float] | None] | None:
        """The store's distances of each listed model to the base for `task`, where they equal what the
        method would compute from its inputs: same base, and inputs whose compute-dtype values are
        the float32 values the store measured (a float32 merge, or inputs stored in the compute dtype)."""
        manifest = self._manifest
        if plan.recipe.base_model is None or plan.recipe.base_model != manifest.base:
            return None
        exact = plan.compute_dtype == torch.float32 or all(
            ck.tensors[task.name].dtype == plan.compute_dtype for ck in plan.parents.values())
        if not exact:
            return None
        return [manifest.distances.get(m.model, {}).get(task.name) for m in plan.recipe.models]

    def _sources(self, plan: MergePlan) -> dict[str, BlockSource]:
        return store_sources(self._manifest, plan)

    def _fill(self, plan: MergePlan) -> None:
        sources = self._sources(plan)
        labels = [m.model for m in plan.recipe.models]
        with torch.no_grad():
            for task in sorted(plan.tasks, key=lambda t: block_of(t.name)):
                tensors, base = read_task_inputs(plan, task, self.device, sources)
                slot = self._slots[task.name].view(self._params)
                # when the resident parameter holds the merged dtype itself, methods write straight into it
                direct = (not task.fp8_out and slot.dtype == plan.compute_dtype == task.out_dtype
                          and slot.is_contiguous())
                merged = merge_tensor(task, tensors, base, plan.recipe.base_index, labels,
                                      out=slot if direct else None, base_distances=self._known_distances(plan, task))
                if merged is slot:
                    continue
                stored = finalize_tensor(task, merged, plan.block)
                value = dequantize(stored[0][1], stored[1][1], self.dtype, plan.block) if task.fp8_out else stored[0][1]
                slot.copy_(value)


def plan_in_store(manifest: StoreManifest, recipe: Recipe | Mapping[str, Any], sweep: str,
                  architecture: list[str] | None) -> MergePlan:
    """Plan `recipe` against the parents of a store manifest; AlloyError if it names a parent the store
    lacks or is for another architecture than `architecture` (the resident model's)."""
    recipe = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    missing = [m for m in recipe.model_names if m not in manifest.checkpoints]
    if missing:
        raise AlloyError(f"recipe {recipe.hash} names parent(s) {missing} that the store of sweep "
                         f"{sweep!r} does not hold; it holds {list(manifest.checkpoints)}")
    plan = plan_merge(recipe, parents={m: manifest.checkpoints[m] for m in recipe.model_names})
    if plan.template.config.get("architectures") != architecture:
        raise AlloyError(f"recipe {recipe.hash} is for {plan.template.config.get('architectures')}, but this "
                         f"worker holds a {architecture} model")
    return plan


def store_sources(manifest: StoreManifest, plan: MergePlan) -> dict[str, BlockSource]:
    """Where a build reads each parent of `plan`: its blocks in the object store."""
    return {m: BlockSource(manifest.checkpoints[m], manifest.blocks[m]) for m in plan.parents}


def builder_actor(num_gpus: float = 0, num_cpus: float = 1, resources: dict[str, float] | None = None):
    """The Ray actor class of ChildBuilder with its resources (one GPU, or a CPU slot)."""
    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, resources=resources or {}, max_restarts=1)(ChildBuilder)
