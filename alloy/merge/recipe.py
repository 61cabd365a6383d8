"""Merge recipes: a mergekit config plus alloy's `groups:` block, validated, canonical and hashed.

A recipe names a method, the models (with per-model parameters), an optional base model, global
parameters and, per tensor group, overrides of the method, the parameters and the per-model
parameters. Parameter values are scalars, per-layer gradients (lists of numbers, interpolated over the
layers as mergekit does) or `{filter, value}` lists (the first entry whose filter is a substring of
the tensor name wins; an entry without filter matches everything).

Validation here needs no files: method and parameter names, value types and ranges, group names,
model counts, required parameters. Checks against the parents (shapes, vocabularies) live in
`alloy.merge.plan`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from alloy.errors import AlloyError
from alloy.merge.groups import GROUPS

COMPUTE_DTYPES = ("float32", "float64", "bfloat16", "float16")
OUT_DTYPES = ("float32", "bfloat16", "float16", "float8_e4m3fn")
_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "groups", "dtype", "out_dtype",
             "tokenizer_source", "seed", "chat_template"}
_GROUP_KEYS = {"merge_method", "parameters", "model_parameters"}

Setting = Any  # scalar | list[number] | list[{filter, value}]


@dataclass(frozen=True)
class ModelEntry:
    """One listed model and its per-model parameter settings."""

    model: str
    parameters: Mapping[str, Setting] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupOverride:
    """What a `groups:` entry changes for the tensors of one group."""

    merge_method: str | None = None
    parameters: Mapping[str, Setting] = field(default_factory=dict)
    model_parameters: Mapping[str, Mapping[str, Setting]] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodChoice:
    """The method and the unresolved settings that apply to one group's tensors."""

    method: str
    parameters: Mapping[str, Setting]                 # global settings (group over top level)
    model_parameters: tuple[Mapping[str, Setting], ...]  # per listed model (group over model entry)


@dataclass(frozen=True)
class Recipe:
    """A validated merge recipe. Build it with `Recipe.from_dict` or `load_recipe`."""

    merge_method: str
    models: tuple[ModelEntry, ...]
    base_model: str | None = None
    parameters: Mapping[str, Setting] = field(default_factory=dict)
    groups: Mapping[str, GroupOverride] = field(default_factory=dict)
    dtype: str = "float32"
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    seed: int = 0
    chat_template: str | None = None
    source: str = "<recipe>"

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<recipe>") -> "Recipe":
        """Parse and validate a recipe dict (mergekit config + `groups:`); raise AlloyError naming the key."""
        from alloy.merge.methods import get_method

        if not isinstance(data, Mapping):
            raise AlloyError(f"{source}: a recipe is a mapping with at least merge_method and models")
        if "slices" in data or "modules" in data:
            raise AlloyError(f"{source}: 'slices'/'modules' configs are not supported; list the parents "
                             f"under 'models' and use per-layer gradients or 'groups' instead")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise AlloyError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        method = data.get("merge_method")
        if not isinstance(method, str):
            raise AlloyError(f"{source}: 'merge_method' is required (one of alloy's methods, e.g. linear)")
        get_method(method)
        models = _parse_models(data.get("models"), source)
        base = data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise AlloyError(f"{source}: 'base_model' must be a model path or name, got {base!r}")
        dtype = data.get("dtype") or "float32"
        if dtype not in COMPUTE_DTYPES:
            raise AlloyError(f"{source}: dtype {dtype!r} is not a compute dtype; use one of {COMPUTE_DTYPES}")
        out_dtype = data.get("out_dtype")
        if out_dtype is not None and out_dtype not in OUT_DTYPES:
            raise AlloyError(f"{source}: out_dtype {out_dtype!r} is not supported; use one of {OUT_DTYPES}")
        tok = data.get("tokenizer_source")
        if tok == "union":
            raise AlloyError(f"{source}: tokenizer_source 'union' is not supported: alloy merges parents that "
                             f"share one vocabulary; use 'base' or a model path")
        seed = data.get("seed")
        seed = 0 if seed is None else seed  # the canonical form writes null for recipes with no random method
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AlloyError(f"{source}: 'seed' must be an integer, got {seed!r}")
        groups = _parse_groups(data.get("groups") or {}, {m.model for m in models} | ({base} if base else set()),
                               source)
        params = data.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise AlloyError(f"{source}: 'parameters' must be a mapping of parameter name to value")
        recipe = cls(merge_method=method, models=models, base_model=base, parameters=dict(params),
                     groups=groups, dtype=dtype, out_dtype=out_dtype, tokenizer_source=tok, seed=seed,
                     chat_template=data.get("chat_template"), source=source)
        recipe._validate()
        return recipe

    # ----------------------------------------------------------------------------------------------
    def method_for(self, group: str) -> MethodChoice:
        """The method and settings for the tensors of `group` (its override, else the top level)."""
        override = self.groups.get(group)
        if override is None:
            return MethodChoice(self.merge_method, self.parameters,
                                tuple(m.parameters for m in self.models))
        params = {**self.parameters, **override.parameters}
        per_model = tuple({**m.parameters, **override.model_parameters.get(m.model, {})} for m in self.models)
        return MethodChoice(override.merge_method or self.merge_method, params, per_model)

    @property
    def base_index(self) -> int | None:
        """Position of the base model among the listed models, or None."""
        for i, m in enumerate(self.models):
            if m.model == self.base_model:
                return i
        return None

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every parent the recipe reads: listed models, then the base if it is not listed."""
        names = tuple(m.model for m in self.models)
        return names + ((self.base_model,) if self.base_model and self.base_model not in names else ())

    def methods_used(self) -> set[str]:
        """Names of every method the recipe applies somewhere."""
        return {self.merge_method} | {g.merge_method for g in self.groups.values() if g.merge_method}

    # ----------------------------------------------------------------------------------------------
    def canonical(self) -> dict:
        """The canonical form: every key present, defaults filled, keys sorted, numbers normalized.

        Two recipes that differ only in spelling (key order, an explicit default, 1 vs 1.0, a seed
        of a recipe with no random method) have the same canonical form and hash.
        """
        from alloy.merge.methods import get_method

        def fill(method: str, params: Mapping[str, Setting]) -> dict:
            spec = get_method(method)
            out = {p.name: p.default for p in spec.params if p.default is not None}
            out.update({k: _normalize(v) for k, v in params.items()})
            return dict(sorted(out.items()))

        random = any(get_method(m).random for m in self.methods_used())
        groups = {}
        for name in sorted(self.groups):
            g = self.groups[name]
            groups[name] = {
                "merge_method": g.merge_method or self.merge_method,
                "parameters": fill(g.merge_method, g.parameters) if g.merge_method else
                {k: _normalize(v) for k, v in sorted(g.parameters.items())},
                "model_parameters": {m: {k: _normalize(v) for k, v in sorted(p.items())}
                                     for m, p in sorted(g.model_parameters.items())},
            }
        return {
            "merge_method": self.merge_method,
            "base_model": self.base_model,
            "models": [{"model": m.model, "parameters": {k: _normalize(v) for k, v in sorted(m.parameters.items())}}
                       for m in self.models],
            "parameters": fill(self.merge_method, self.parameters),
            "groups": groups,
            "dtype": self.dtype,
            "out_dtype": self.out_dtype,
            "tokenizer_source": self.tokenizer_source,
            "chat_template": self.chat_template,
            "seed": self.seed if random else None,
        }

    def canonical_json(self) -> str:
        """The canonical form as compact, sorted JSON (what the hash is computed over)."""
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Content hash of the canonical form (16 hex digits)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """A plain dict that `from_dict` turns back into an equal recipe (the canonical form)."""
        return {k: v for k, v in self.canonical().items() if v is not None and v != {}}

    def to_yaml(self) -> str:
        """The recipe as YAML, readable by `alloy merge` (and by mergekit when it uses no alloy keys)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        from alloy.merge.methods import get_method

        names = [m.model for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise AlloyError(f"{self.source}: model(s) listed twice: {sorted(dupes)}")
        if self.tokenizer_source not in (None, "base") and self.tokenizer_source not in self.model_names:
            raise AlloyError(f"{self.source}: tokenizer_source {self.tokenizer_source!r} is not one of the "
                             f"recipe's models {list(self.model_names)} (or 'base')")
        if self.tokenizer_source == "base" and not self.base_model:
            raise AlloyError(f"{self.source}: tokenizer_source 'base' needs a base_model")

        used = [(None, self.merge_method)] + [(g, o.merge_method or self.merge_method)
                                              for g, o in self.groups.items()]
        known_top = set()
        for _, method in used:
            spec = get_method(method)
            known_top |= {p.name for p in (*spec.params, *spec.model_params)}
        for key, value in self.parameters.items():
            if key not in known_top:
                raise AlloyError(f"{self.source}: parameters.{key}: no method of this recipe takes '{key}'")
        for m in self.models:
            for key in m.parameters:
                if key not in known_top:
                    raise AlloyError(f"{self.source}: models[{m.model}].parameters.{key}: no method of this "
                                     f"recipe takes '{key}'")

        for group, method in used:
            spec = get_method(method)
            where = f"{self.source}: " + (f"groups.{group}" if group else "top level")
            choice = self.method_for(group) if group else self.method_for("")
            spec.check_model_count(len(self.models), self.base_index is not None, self.base_model is not None, where)
            override = self.groups.get(group) if group else None
            explicit_global = override.parameters if override else self.parameters
            for key in explicit_global:
                if override is not None and spec.param(key) is None:
                    raise AlloyError(f"{where}.parameters.{key}: method '{method}' has no parameter '{key}'")
            for key, value in choice.parameters.items():
                p = spec.param(key)
                if p is not None:
                    _check_setting(p, value, f"{where}.parameters.{key}")
            if override is not None:
                for model, params in override.model_parameters.items():
                    for key in params:
                        if spec.param(key) is None or spec.param(key) not in spec.model_params:
                            raise AlloyError(f"{where}.model_parameters.{model}.{key}: method '{method}' has no "
                                             f"per-model parameter '{key}'")
            for i, (entry, params) in enumerate(zip(self.models, choice.model_parameters)):
                is_base = i == self.base_index
                for p in spec.model_params:
                    value = params.get(p.name, choice.parameters.get(p.name))
                    if value is None:
                        if p.required and not is_base:
                            raise AlloyError(f"{where}: model {entry.model!r} needs parameter '{p.name}' for "
                                             f"method '{method}' (set it under the model's parameters or "
                                             f"globally)")
                        continue
                    _check_setting(p, value, f"{where}: models[{entry.model}].{p.name}")


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML file; errors name the file."""
    from alloy.io.yaml_files import read_yaml

    return Recipe.from_dict(read_yaml(path, "recipe file"), source=str(path))


def evaluate_setting(setting: Setting, tensor_name: str, t: float) -> Any:
    """The value of a parameter setting for one tensor at relative depth t in [0, 1].

    Gradients (lists of numbers) interpolate linearly over t, so [a, b, c] gives a at the first layer,
    b in the middle and c at the last; `{filter, value}` lists pick the first entry whose filter is a
    substring of the tensor name (no filter, or '*', matches all). Returns None when no entry matches.
    """
    if isinstance(setting, list):
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            flt = cond.get("filter")
            if flt is None or flt == "*" or flt in tensor_name:
                return evaluate_setting(cond["value"], tensor_name, t)
        return None
    if isinstance(setting, Mapping):
        return evaluate_setting([setting], tensor_name, t)
    return setting


# --------------------------------------------------------------------------------------------------
def _parse_models(raw: Any, source: str) -> tuple[ModelEntry, ...]:
    if not isinstance(raw, list) or not raw:
        raise AlloyError(f"{source}: 'models' must be a non-empty list of {{model: PATH, parameters: {{...}}}}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("model"), str):
            raise AlloyError(f"{source}: models[{i}] must have a 'model' path, got {item!r}")
        extra = set(item) - {"model", "parameters"}
        if extra:
            raise AlloyError(f"{source}: models[{i}] has unknown key(s) {sorted(extra)}")
        params = item.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise AlloyError(f"{source}: models[{i}].parameters must be a mapping")
        out.append(ModelEntry(item["model"], dict(params)))
    return tuple(out)


def _parse_groups(raw: Any, models: set[str], source: str) -> dict[str, GroupOverride]:
    if not isinstance(raw, Mapping):
        raise AlloyError(f"{source}: 'groups' must map a tensor group to its overrides")
    out = {}
    for name, body in raw.items():
        if name not in GROUPS:
            raise AlloyError(f"{source}: groups.{name}: no such tensor group; groups are {list(GROUPS)}")
        body = body or {}
        if not isinstance(body, Mapping) or set(body) - _GROUP_KEYS:
            raise AlloyError(f"{source}: groups.{name} may only set {sorted(_GROUP_KEYS)}")
        method = body.get("merge_method")
        if method is not None:
            from alloy.merge.methods import get_method

            get_method(method)
        mp = body.get("model_parameters") or {}
        for model in mp:
            if model not in models:
                raise AlloyError(f"{source}: groups.{name}.model_parameters names {model!r}, which is not one of "
                                 f"the recipe's models {sorted(models)}")
        out[name] = GroupOverride(method, dict(body.get("parameters") or {}),
                                  {m: dict(p or {}) for m, p in mp.items()})
    return out


def _check_setting(spec, setting: Setting, where: str) -> None:
    if isinstance(setting, list):
        if not setting:
            raise AlloyError(f"{where}: an empty list is not a valid setting")
        if all(isinstance(e, Mapping) for e in setting):
            for j, cond in enumerate(setting):
                if "value" not in cond or set(cond) - {"filter", "value"}:
                    raise AlloyError(f"{where}[{j}]: a conditional setting is {{filter: SUBSTRING, value: V}}")
                _check_setting(spec, cond["value"], f"{where}[{j}].value")
            return
        if spec.kind not in ("float", "int"):
            raise AlloyError(f"{where}: only numeric parameters take per-layer gradients")
        for j, v in enumerate(setting):
            spec.check(v, f"{where}[{j}]")
        return
    if isinstance(setting, Mapping):
        _check_setting(spec, [setting], where)
        return
    spec.check(setting, where)


def _normalize(value: Setting) -> Setting:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalize(v) for k, v in sorted(value.items())}
    return value
