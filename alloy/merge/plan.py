"""The merge plan: a recipe checked against its parents, resolved into one task per output tensor.

Planning reads only configs, tokenizer files and safetensors headers, never tensor data, so every
problem of a recipe with its parents (missing folders, different architectures, vocabularies, tensor
names or shapes, bad parameter values for a tensor, weights summing to zero) is reported before any
heavy work. Disk merges (`alloy.merge.executor`) and in-memory builders execute the same plan.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from alloy.io.checkpoint import Checkpoint
from alloy.errors import AlloyError
from alloy.io.fp8 import FP8_DTYPE, SCALE_SUFFIX
from alloy.merge.groups import layer_index, preset_for
from alloy.merge.recipe import Recipe, evaluate_setting
from alloy.io.shards import OutputTensor

_FP8_GROUPS = ("attention", "mlp", "shared_experts", "routed_experts")


@dataclass(frozen=True)
class TensorTask:
    """How one output tensor is made: method, resolved parameters, shape and output dtype."""

    name: str
    group: str
    method: str
    params: Mapping[str, Any]
    model_params: tuple[Mapping[str, Any], ...]
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    seed: int

    @property
    def fp8_out(self) -> bool:
        """Written as block FP8 (followed by its `weight_scale_inv` tensor)."""
        return self.out_dtype == FP8_DTYPE


@dataclass
class MergePlan:
    """A recipe bound to its parent checkpoints, with one task per output tensor."""

    recipe: Recipe
    parents: dict[str, Checkpoint]          # recipe model name -> opened checkpoint
    tasks: list[TensorTask]
    config: dict                            # the child's config.json
    block: tuple[int, int] = (128, 128)     # FP8 block of FP8 outputs
    notes: list[str] = field(default_factory=list)

    @property
    def compute_dtype(self) -> torch.dtype:
        return getattr(torch, self.recipe.dtype)

    @property
    def listed(self) -> list[Checkpoint]:
        """The listed models' checkpoints, in recipe order."""
        return [self.parents[m.model] for m in self.recipe.models]

    @property
    def base(self) -> Checkpoint | None:
        return self.parents.get(self.recipe.base_model) if self.recipe.base_model else None

    @property
    def template(self) -> Checkpoint:
        """The parent whose config, generation config and layout the child follows."""
        return self.base or self.listed[0]

    def output_tensors(self) -> list[OutputTensor]:
        """Every tensor the child will hold, in write order (FP8 weights followed by their scales)."""
        out = []
        for t in self.tasks:
            out.append(OutputTensor(t.name, t.out_dtype, t.shape))
            if t.fp8_out:
                out.append(OutputTensor(t.name + SCALE_SUFFIX, torch.float32, scale_shape(t.shape, self.block)))
        return out

    def input_bytes(self) -> int:
        """Bytes of parent tensor data a full merge reads."""
        return sum(p.tensors[t.name].nbytes + (p.tensors[s].nbytes if (s := p.scale_name(t.name)) else 0)
                   for t in self.tasks for p in self.parents.values())


def scale_shape(shape: Sequence[int], block: tuple[int, int]) -> tuple[int, int]:
    """Shape of the per-block scale tensor of a 2-D FP8 weight."""
    return (-(-shape[0] // block[0]), -(-shape[1] // block[1]))


def resolve_model_path(name: str, base_dir: Path) -> Path:
    """The local folder of a recipe model name (relative names resolve against `base_dir`)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_dir():
        raise AlloyError(f"model {name!r}: folder {path} not found. alloy reads local Hugging Face folders: "
                         f"download the model first (e.g. `huggingface-cli download {name} --local-dir DIR`) "
                         f"and name DIR in the recipe")
    return path


def plan_merge(recipe: Recipe, base_dir: str | Path = ".", parents: Mapping[str, Checkpoint] | None = None) -> MergePlan:
    """Check `recipe` against its parents and resolve every output tensor's task.

    `parents` may supply already-opened checkpoints by recipe model name (e.g. from a store);
    the others are opened from `base_dir`.
    """
    base_dir = Path(base_dir)
    opened = dict(parents or {})
    for name in recipe.model_names:
        if name not in opened:
            opened[name] = Checkpoint.open(resolve_model_path(name, base_dir))
    _check_same_architecture(opened)
    _check_same_vocabulary(opened)
    names = _check_same_tensors(opened)

    template = opened[recipe.base_model] if recipe.base_model else opened[recipe.models[0].model]
    preset = preset_for(template.config)
    num_layers = template.num_layers
    fp8_parents = any(p.is_fp8 for p in opened.values())
    block = _fp8_block(opened)
    tasks = []
    for name in names:
        group = preset.group_of(name)
        tasks.append(_task(recipe, name, group, template, num_layers, opened))
    config = _child_config(template.config, tasks, recipe, fp8_parents, block)
    return MergePlan(recipe, opened, tasks, config, block)


# --------------------------------------------------------------------------------------------------
def _task(recipe: Recipe, name: str, group: str, template: Checkpoint, num_layers: int,
          parents: Mapping[str, Checkpoint]) -> TensorTask:
    from alloy.merge.methods import get_method

    choice = recipe.method_for(group)
    spec = get_method(choice.method)
    t = _depth(name, group, num_layers)
    where = f"tensor {name} (group {group}, method {choice.method})"
    params = {}
    for p in spec.params:
        value = evaluate_setting(choice.parameters[p.name], name, t) if p.name in choice.parameters else None
        params[p.name] = p.default if value is None else p.check(value, where)
    model_params = []
    for i, (entry, settings) in enumerate(zip(recipe.models, choice.model_parameters)):
        resolved = {}
        for p in spec.model_params:
            setting = settings.get(p.name, choice.parameters.get(p.name))
            value = evaluate_setting(setting, name, t) if setting is not None else None
            if value is None and p.required and i != recipe.base_index:
                raise AlloyError(f"{where}: model {entry.model!r} has no value of '{p.name}' for this tensor "
                                 f"(a filter list without a default entry?)")
            resolved[p.name] = p.default if value is None else p.check(value, f"{where}, model {entry.model}")
        model_params.append(resolved)
    if spec.normalized_weight_total(params, model_params, recipe.base_index) == 0:
            raise AlloyError(f"{where}: the models' weights sum to zero, so they cannot be normalized; give at "
                             f"least one model a non-zero weight for this tensor")
    info = template.tensors[name]
    out_dtype = _out_dtype(recipe, name, group, info, parents)
    seed = int.from_bytes(hashlib.sha256(f"{recipe.seed}:{name}".encode()).digest()[:8], "little") >> 1
    return TensorTask(name, group, choice.method, params, tuple(model_params), info.shape, out_dtype, seed)


def _depth(name: str, group: str, num_layers: int) -> float:
    """Relative depth t in [0, 1] for per-layer gradients (embeddings 0, final norm and head 1)."""
    layer = layer_index(name)
    if layer is None:
        return 0.0 if group == "embed" else 1.0
    return 1.0 if num_layers <= 1 else min(1.0, layer / (num_layers - 1))


def _out_dtype(recipe: Recipe, name: str, group: str, info, parents: Mapping[str, Checkpoint]) -> torch.dtype:
    stored_fp8 = info.dtype == FP8_DTYPE
    if not info.dtype.is_floating_point and not stored_fp8:
        return info.dtype
    if recipe.out_dtype == "float8_e4m3fn":
        quantizable = stored_fp8 or (group in _FP8_GROUPS and name.endswith(".weight") and len(info.shape) == 2)
        return FP8_DTYPE if quantizable else torch.bfloat16
    if recipe.out_dtype:
        return getattr(torch, recipe.out_dtype)
    if stored_fp8:
        return FP8_DTYPE
    return info.dtype


def weight_names(ckpt: Checkpoint) -> list[str]:
    """A checkpoint's tensor names without FP8 scale tensors (which belong to their weights)."""
    return [n for n in ckpt.names if not (n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in ckpt.tensors)]


def _check_same_architecture(parents: Mapping[str, Checkpoint]) -> None:
    items = list(parents.items())
    ref_name, ref = items[0]
    key = lambda c: (c.config.get("model_type"), tuple(c.config.get("architectures") or ()))  # noqa: E731
    for name, ck in items[1:]:
        if key(ck) != key(ref):
            raise AlloyError(f"parents have different architectures: {ref.path} is {key(ref)[1] or key(ref)[0]} and "
                             f"{ck.path} is {key(ck)[1] or key(ck)[0]}; alloy merges fine-tunes of one architecture")
        for field_name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "n_routed_experts",
                           "num_experts", "num_local_experts", "first_k_dense_replace"):
            if ref.config.get(field_name) != ck.config.get(field_name):
                raise AlloyError(f"parents differ in config.json '{field_name}': {ref.path} has "
                                 f"{ref.config.get(field_name)}, {ck.path} has {ck.config.get(field_name)}")


def _check_same_vocabulary(parents: Mapping[str, Checkpoint]) -> None:
    items = list(parents.values())
    ref = items[0]
    for ck in items[1:]:
        a, b = ref.vocabulary, ck.vocabulary
        if (a[0] == b[0] and a[1] != b[1]) or ref.config.get("vocab_size") != ck.config.get("vocab_size"):
            raise AlloyError(
                f"parents have different vocabularies: {ref.path} and {ck.path} differ in their {a[0]} "
                f"(vocab_size {ref.config.get('vocab_size')} vs {ck.config.get('vocab_size')}). Merging embeddings "
                f"of different tokenizers mixes unrelated token rows: merge only fine-tunes that share the base "
                f"tokenizer, or first align the odd one's embeddings to the base vocabulary")


def _check_same_tensors(parents: Mapping[str, Checkpoint]) -> list[str]:
    items = list(parents.values())
    ref = items[0]
    names = weight_names(ref)
    ref_set = set(names)
    for ck in items[1:]:
        other = set(weight_names(ck))
        if other != ref_set:
            missing, extra = sorted(ref_set - other), sorted(other - ref_set)
            raise AlloyError(f"parents hold different tensors: {ck.path} lacks {missing[:5]} and has extra "
                             f"{extra[:5]} compared with {ref.path} ({len(missing)} missing, {len(extra)} extra)")
        for n in names:
            if ref.tensors[n].shape != ck.tensors[n].shape:
                raise AlloyError(f"tensor {n}: shape {list(ref.tensors[n].shape)} in {ref.path} but "
                                 f"{list(ck.tensors[n].shape)} in {ck.path}")
    return names


def _fp8_block(parents: Mapping[str, Checkpoint]) -> tuple[int, int]:
    from alloy.io.fp8 import block_size

    for p in parents.values():
        if p.is_fp8:
            return block_size(p.config)
    return (128, 128)


def _child_config(template: Mapping, tasks: Sequence[TensorTask], recipe: Recipe, fp8_parents: bool,
                  block: tuple[int, int]) -> dict:
    config = json.loads(json.dumps(template))
    fp8_out = any(t.fp8_out for t in tasks)
    float_dtypes = {t.out_dtype for t in tasks if t.out_dtype.is_floating_point and not t.fp8_out}
    if float_dtypes:
        dtype_name = str(max(float_dtypes, key=lambda d: d.itemsize)).removeprefix("torch.")
        config["torch_dtype"] = dtype_name
        if "dtype" in config:
            config["dtype"] = dtype_name
    if fp8_out:
        q = dict(config.get("quantization_config") or {})
        q.update({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": q.get("activation_scheme", "dynamic"),
                  "weight_block_size": list(block)})
        config["quantization_config"] = q
    elif fp8_parents:
        config.pop("quantization_config", None)
    return config
