"""Executing a merge plan: per-tensor merging, and the streaming disk merge behind `alloy merge`.

`merge_tensor` is the one place a child tensor is computed; the disk merge here and the in-memory
builders both call it, so a child built in memory is bit-identical to the one written to disk.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch

from alloy.io.atomic import atomic_dir, check_output_dir
from alloy.errors import AlloyError
from alloy.io.fp8 import SCALE_SUFFIX, quantize
from alloy.merge.methods.spec import MergeInputs
from alloy.merge.plan import MergePlan, TensorTask
from alloy.io.shards import ShardWriter, parse_size


def merge_tensor(task: TensorTask, tensors: Sequence[torch.Tensor], base: torch.Tensor | None,
                 base_index: int | None, input_names: Sequence[str] = (),
                 out: torch.Tensor | None = None,
                 base_distances: Sequence[Mapping[str, float] | None] | None = None) -> torch.Tensor:
    """The merged tensor of one task, in the compute dtype of its inputs.

    `tensors` are the listed models' tensors in recipe order (compute dtype, one device), `base` the
    base model's. Inputs are never modified. `out` (same shape, the compute dtype) is where methods
    that can write in place put the result; the returned tensor is `out` or a new one.
    `base_distances` are the models' known distances to the base (see `MergeInputs`). A non-finite
    result is an AlloyError naming the tensor and, when one is, the parent whose input was non-finite
    (`input_names` labels the inputs).
    """
    from alloy.merge.methods import get_method

    spec = get_method(task.method)
    device = tensors[0].device
    generator = torch.Generator(device=device).manual_seed(task.seed) if spec.random else None
    inputs = MergeInputs(tensors=tensors, model_params=task.model_params, base=base, base_index=base_index,
                         name=task.name, generator=generator, out=out, base_distances=base_distances)
    out = spec.fn(inputs, task.params)
    if out.is_floating_point() and not all_finite(out):
        labelled = list(zip(input_names or [f"model {i}" for i in range(len(tensors))], tensors))
        if base is not None:
            labelled.append(("base model", base))
        bad = [label for label, t in labelled if not all_finite(t)]
        culprit = f"; input from {', '.join(bad)} holds NaN or Inf" if bad else ""
        raise AlloyError(f"tensor {task.name}: the merge ({task.method}) produced NaN or Inf{culprit}")
    return out


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or ±Inf.

    A sum propagates NaN and Inf in one vectorized pass, an order of magnitude faster than
    `torch.isfinite(t).all()` (or than a float64 sum); only a non-finite sum (which a huge finite
    tensor could also give, by overflow) is confirmed element by element.
    """
    if math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def finalize_tensor(task: TensorTask, merged: torch.Tensor, block: tuple[int, int]) -> list[tuple[str, torch.Tensor]]:
    """The stored form of a merged tensor: cast to its output dtype, or quantized to FP8 plus its scale."""
    if task.fp8_out:
        q, scale = quantize(merged, block)
        return [(task.name, q), (task.name + SCALE_SUFFIX, scale)]
    return [(task.name, merged.to(task.out_dtype))]


class TensorSource(Protocol):
    """Where a parent's tensors come from: its files (`Checkpoint`) or the object store."""

    def read_for_compute(self, name: str, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        ...


def read_task_inputs(plan: MergePlan, task: TensorTask, device: str | torch.device,
                     sources: Mapping[str, TensorSource] | None = None
                     ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The listed models' tensors and the base's for one task, in the compute dtype.

    `sources` maps recipe model names to where their tensors are read (default: the plan's checkpoints).
    """
    sources = sources or plan.parents
    dtype = plan.compute_dtype
    recipe = plan.recipe
    tensors = [sources[m.model].read_for_compute(task.name, dtype, device) for m in recipe.models]
    if recipe.base_model is None:
        return tensors, None
    index = recipe.base_index
    base = tensors[index] if index is not None else sources[recipe.base_model].read_for_compute(task.name, dtype, device)
    return tensors, base


def stored_tensors(plan: MergePlan, device: str | torch.device,
                   sources: Mapping[str, TensorSource] | None = None
                   ) -> Iterator[tuple[TensorTask, list[tuple[str, torch.Tensor]]]]:
    """Each task of `plan` with the stored form of its merged tensor (`finalize_tensor`), one at a time:
    at most one child tensor (plus its inputs) is alive while the caller consumes it."""
    labels = [m.model for m in plan.recipe.models]
    for task in plan.tasks:
        tensors, base = read_task_inputs(plan, task, device, sources)
        merged = merge_tensor(task, tensors, base, plan.recipe.base_index, labels)
        yield task, finalize_tensor(task, merged, plan.block)


def check_device(device: str) -> torch.device:
    """The torch device `device` names, when merging can run there (cpu, cuda, cuda:N); else AlloyError."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise AlloyError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise AlloyError(f"--device {device!r}: alloy merges on cpu or cuda (cuda:N)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise AlloyError(f"--device {device} was asked for, but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise AlloyError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def check_not_a_parent(out: Path, parents: Sequence[Path]) -> None:
    """AlloyError when writing (or replacing) `out` would destroy a parent: `out` is a parent's folder,
    lies inside one, or holds one."""
    target = out.resolve()
    for parent in parents:
        folder = Path(parent).resolve()
        if target == folder or folder in target.parents or target in folder.parents:
            raise AlloyError(f"output {out} would overwrite the parent checkpoint {parent}; choose another folder")


@dataclass
class MergeReport:
    """What a disk merge did."""

    out: Path
    tensors: int
    input_bytes: int
    output_bytes: int
    seconds: float


def run_merge(plan: MergePlan, out: str | Path, device: str = "cpu", max_shard_size: str | int = "5GB",
              overwrite: bool = False, progress: bool = True,
              on_tensor: Callable[[TensorTask], None] | None = None,
              sources: Mapping[str, TensorSource] | None = None, scores: dict | None = None) -> MergeReport:
    """Merge tensor by tensor from the parents' files into a new checkpoint folder at `out`.

    The folder appears only when the merge is complete (staged under a hidden name, then renamed); an
    error or interruption leaves nothing at `out`. `sources` replaces the parents' files as the place
    tensors are read from (the in-memory builders pass the object store); `scores` go into the
    model card (exported sweep children).
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    check_not_a_parent(out, [ck.path for ck in plan.parents.values()])
    check_device(device)
    shard_bytes = parse_size(max_shard_size)
    start = time.perf_counter()
    outputs = plan.output_tensors()
    bar = _progress(plan.input_bytes(), progress)
    with atomic_dir(out, overwrite) as staging:
        writer = ShardWriter(staging, outputs, shard_bytes)
        for task, stored in stored_tensors(plan, device, sources):
            for name, tensor in stored:
                writer.write(name, tensor)
            if bar is not None:
                bar.update(sum(p.tensors[task.name].nbytes for p in plan.parents.values()))
            if on_tensor is not None:
                on_tensor(task)
        writer.close()
        write_child_files(plan, staging, scores)
    if bar is not None:
        bar.close()
    return MergeReport(out, len(plan.tasks), plan.input_bytes(), sum(t.nbytes for t in outputs),
                       time.perf_counter() - start)


def write_child_files(plan: MergePlan, folder: Path, scores: dict | None = None) -> None:
    """Everything but the weights: config, generation config, tokenizer files, model card, recipe."""
    import json

    recipe = plan.recipe
    (folder / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
    template = plan.template
    if (template.path / "generation_config.json").is_file():
        shutil.copy2(template.path / "generation_config.json", folder / "generation_config.json")
    tok_source = recipe.tokenizer_source
    tok_ckpt = plan.parents[recipe.base_model] if tok_source == "base" else plan.parents.get(tok_source, template)
    for f in tok_ckpt.tokenizer_files():
        shutil.copy2(f, folder / f.name)
    if recipe.chat_template:
        (folder / "chat_template.jinja").write_text(recipe.chat_template)
    recipe_yaml = recipe.to_yaml()
    (folder / "alloy_recipe.yaml").write_text(recipe_yaml)
    (folder / "README.md").write_text(model_card(plan, recipe_yaml, scores))


def model_card(plan: MergePlan, recipe_yaml: str, scores: dict | None = None) -> str:
    """A Hugging Face model card naming the parents, the recipe and (for exported sweep children) scores."""
    recipe = plan.recipe
    lines = ["---", "library_name: transformers", "tags: [merge, alloy]", "base_model:"]
    lines += [f"- {name}" for name in recipe.model_names]
    lines += ["---", "", f"# Merged model `{recipe.hash}`", "",
              f"Built by alloy with `{recipe.merge_method}`"
              + (f" (per-group: {', '.join(f'{g}: {o.merge_method or recipe.merge_method}' for g, o in recipe.groups.items())})"
                 if recipe.groups else "") + ".", "", "## Parents", ""]
    lines += [f"- `{name}`" + (" (base)" if name == recipe.base_model else "") for name in recipe.model_names]
    if scores:
        lines += ["", "## Scores", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in scores.items()]
    lines += ["", "## Recipe", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def _progress(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="merging", dynamic_ncols=True)
