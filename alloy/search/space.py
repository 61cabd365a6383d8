"""Search spaces: which merge recipes a sweep may propose, what it optimizes and how it evaluates.

A search space is a YAML file:

```yaml
name: aoe-deepseek
parents:
  base: V3-0324                        # a label below, or a path
  models: {V3-0324: deepseek-ai/DeepSeek-V3-0324, R1: deepseek-ai/DeepSeek-R1}
recipe: {dtype: bfloat16, tokenizer_source: base}        # fixed recipe keys
default:                               # the recipe's top level: every group not listed under groups
  merge_method: linear
  weights: {V3-0324: 1.0}              # fixed (unnamed models get 0)
groups:
  routed_experts:
    merge_method: aoe                  # or a list: the sampler chooses one method per trial
    weights: simplex                   # free λ on the simplex (the default when weights is omitted)
    parameters:
      threshold: {low: 0.001, high: 0.3, log: true}      # a range; `search` takes the spec's range
objectives: [aime24/exact_match, {metric: tokens_mean, direction: minimize}]
evaluation: {tasks: [aime24], rungs: [8, 32, 128], repeats: 1, max_gen_toks: 32768,
             backend: auto, batch_size: 16}   # vllm | hf | auto; batch_size: the hf backend's batch
search: {sampler: tpe, seed: 0, trials: 64, concurrency: 4, resources: {gpu: 1, cpu: 8},
         start: [parents, uniform]}
```

A scope (`default` or a tensor group) sets its method (fixed or a choice), its per-model weights and its
method parameters. A parameter is a fixed value, a per-layer gradient (a list), a range `{low, high,
log, gradient: K, per_model}`, `{choices: [...]}` or `search` (the method's default search range).
Numeric parameters a scope does not name are searched over the method's default range when the method
spec has one, and keep the method default otherwise. Weights are `simplex` (λ on the simplex, drawn by
stick-breaking from independent uniforms so every point is a convex mix and the sampler still sees a
box: a coordinate u_k becomes the fraction 1 − (1 − u_k)^(1/(m−1−k)) of the mass left, which makes
uniform u's uniform on the simplex), `{simplex: [labels], gradient: K}` (a subset, K per-layer
anchors), `uniform`, or a mapping label → value / gradient / range (a box, not normalized here).

Parent paths are resolved against `parents.root` (relative to the YAML file) or else against the
current directory, and stored absolute in every recipe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from alloy.errors import AlloyError
from alloy.evaluation.passk import is_repeat_metric, repeat_metric_error
from alloy.evaluation.task_metrics import reported_metrics
from alloy.merge.groups import GROUPS

DEFAULT_SCOPE = "default"
START_POINTS = ("parents", "uniform")
# Output-length statistics an evaluation reports besides the task metrics (`task/metric`).
TOKEN_METRICS = ("tokens_mean", "tokens_median", "tokens_p90",
                 "thinking_tokens_mean", "thinking_tokens_median", "thinking_tokens_p90")
DEFAULT_RUNNER = "lm_eval"
CONFIRM_TOP = 3          # search.confirm.top by default
CONFIRM_FACTOR = 4       # search.confirm.samples by default: this many times the last rung

_TOP_KEYS = {"name", "parents", "recipe", "default", "groups", "objectives", "evaluation", "search"}
_PARENT_KEYS = {"models", "base", "root"}
_RECIPE_KEYS = {"dtype", "out_dtype", "tokenizer_source", "seed", "chat_template"}
_SCOPE_KEYS = {"merge_method", "weights", "parameters"}
_RANGE_KEYS = {"low", "high", "log", "gradient", "choices", "per_model"}
_EVAL_KEYS = {"runner", "tasks", "rungs", "repeats", "max_gen_toks", "thinking_budget", "generation",
              "data_dir", "synthetic", "backend", "batch_size"}
BACKENDS = ("auto", "vllm", "hf")
DEFAULT_BATCH_SIZE = 16  # requests the hf backend generates together in a sweep
_SEARCH_KEYS = {"sampler", "seed", "trials", "concurrency", "resources", "start", "reduction_factor", "prune",
                "prune_metric", "retries", "grid_points", "population_size", "study_name", "restart_strategy",
                "scalarization", "confirm", "warm_start"}


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One value the sampler draws: a float or int range, or a categorical choice.

    `role` tells starting points what the value means: ("simplex", k, labels) for the k-th
    stick-breaking coordinate over `labels`, ("weight", label) for a box weight, ("method",) for a
    method choice, ("param",) otherwise. `default` is the preferred value for starting points.
    """

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    role: tuple = ("param",)
    default: Any = None

    def suggest(self, trial: Any) -> Any:
        """Draw this value from an Optuna trial (or anything with its suggest_* methods)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def distribution(self) -> Any:
        """The equivalent `optuna.distributions` object."""
        import optuna.distributions as dist

        if self.kind == "categorical":
            return dist.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return dist.IntDistribution(int(self.low), int(self.high), log=self.log)
        return dist.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def grid(self, points: int) -> list:
        """`points` values spread over the range (geometrically when log), or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.low == self.high:
            return [self.low]
        fractions = [i / (points - 1) for i in range(points)]
        if self.log:
            values = [self.low * (self.high / self.low) ** f for f in fractions]
        else:
            values = [self.low + (self.high - self.low) * f for f in fractions]
        if self.kind == "int":
            return sorted({int(round(v)) for v in values})
        return [round_value(v) for v in values]

    def midpoint(self) -> Any:
        """The default when it lies in the range, else the range's (geometric) middle or first choice."""
        if self.kind == "categorical":
            return self.default if self.default in self.choices else self.choices[0]
        if self.default is not None and self.low <= self.default <= self.high:
            return self.default
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return int(round(mid)) if self.kind == "int" else round_value(mid)


Draw = Callable[[Dimension], Any]


@dataclass(frozen=True)
class Setting:
    """How one parameter gets its value: `fixed`, or drawn (one dimension per gradient anchor)."""

    fixed: Any = None
    dims: tuple[Dimension, ...] = ()

    def resolve(self, draw: Draw, coefficients: dict) -> Any:
        if not self.dims:
            return self.fixed
        values = []
        for dim in self.dims:
            value = draw(dim)
            value = round_value(value) if dim.kind == "float" else value
            coefficients[dim.name] = value
            values.append(value)
        return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class Weights:
    """A scope's per-model weights: λ on the simplex over `simplex` labels, or one Setting per model."""

    simplex: tuple[str, ...] = ()
    anchors: int = 1
    dims: tuple[tuple[Dimension, ...], ...] = ()  # per anchor: the stick-breaking coordinates
    per_model: Mapping[str, Setting] = field(default_factory=dict)

    def resolve(self, scope: str, labels: Sequence[str], draw: Draw, coefficients: dict) -> dict[str, Any]:
        if not self.simplex:
            return {label: self.per_model[label].resolve(draw, coefficients) for label in labels}
        columns: dict[str, list[float]] = {label: [] for label in labels}
        for a, dims in enumerate(self.dims):
            lambdas = simplex_from_unit([draw(d) for d in dims])
            for label in labels:
                value = lambdas[self.simplex.index(label)] if label in self.simplex else 0.0
                columns[label].append(value)
                if label in self.simplex:
                    suffix = f".a{a}" if self.anchors > 1 else ""
                    coefficients[f"{scope}.weight.{label}{suffix}"] = value
        return {label: vals[0] if len(vals) == 1 else vals for label, vals in columns.items()}


@dataclass(frozen=True)
class Scope:
    """The recipe's top level (`default`) or one tensor group: methods, weights, parameters."""

    name: str
    methods: tuple[str, ...]
    method_dim: Dimension | None
    weights: Weights | None
    params: Mapping[str, Mapping[str, Setting]]               # method -> global parameter -> setting
    model_params: Mapping[str, Mapping[str, Any]]             # method -> parameter -> Setting | {label: Setting}

    def dimensions(self) -> list[Dimension]:
        """Every dimension this scope may draw (over all its method choices)."""
        dims = [self.method_dim] if self.method_dim else []
        if self.weights is not None:
            dims += [d for anchor in self.weights.dims for d in anchor]
            dims += [d for s in self.weights.per_model.values() for d in s.dims]
        for method in self.methods:
            dims += [d for s in self.params[method].values() for d in s.dims]
            for s in self.model_params[method].values():
                settings = s.values() if isinstance(s, Mapping) else [s]
                dims += [d for one in settings for d in one.dims]
        return dims


@dataclass(frozen=True)
class Objective:
    """A metric the sweep optimizes, named as the evaluation reports it."""

    metric: str
    direction: str  # "maximize" | "minimize"

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction ("max" / "min")."""
        return "max" if self.direction == "maximize" else "min"


@dataclass(frozen=True)
class Evaluation:
    """How a candidate is scored: runner, tasks, rungs of sample counts, generation settings."""

    runner: str
    tasks: tuple[str, ...]
    rungs: tuple[int, ...]
    repeats: int = 1
    max_gen_toks: int | None = None
    thinking_budget: int | None = None
    generation: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    synthetic: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "auto"         # what the workers evaluate on: vllm, hf, or auto (vllm where it can run)
    batch_size: int = DEFAULT_BATCH_SIZE  # the hf backend's batch of generated requests


def samples_answers(evaluation: Evaluation) -> bool:
    """Whether the evaluation draws its answers at random (several repeats, or a temperature above 0),
    so that a new repeat index gives a new, independent answer; greedy answers are the same every time."""
    temperature = evaluation.generation.get("temperature")
    return evaluation.repeats > 1 or (isinstance(temperature, (int, float)) and temperature > 0)


@dataclass(frozen=True)
class SearchSettings:
    """The sweep itself: sampler, budget, parallelism, pruning, retries, starting points, the
    confirmation stage and the warm start."""

    sampler: str = "tpe"
    seed: int = 0
    trials: int = 32
    concurrency: int = 1
    cpu: float = 1.0
    gpu: float = 0.0
    stages: int = 1                                 # vLLM pipeline stages per worker, each of `gpu` GPUs on one node
    start: tuple[str, ...] = ()
    reduction_factor: float = 3.0
    prune: bool = True
    prune_metric: str = ""
    retries: int = 0
    grid_points: int = 3
    population_size: int | None = None
    study_name: str = "alloy"
    restart_strategy: str = "none"                  # cmaes: "none" | "ipop"
    scalarization: Mapping[str, float] = field(default_factory=dict)   # metric → weight (single-objective samplers)
    confirm_top: int = 3                            # candidates re-scored at the end (0: no confirmation)
    confirm_samples: int = 0                        # their sample count (> the last rung; 0: 4 × the last rung)
    confirm_repeats: int = 0                        # their new answers per question (0: evaluation.repeats)
    warm_start: str | None = None                   # an earlier sweep folder whose best recipes start this one
    warm_start_top: int = 4


@dataclass(frozen=True)
class Candidate:
    """One point of the space: its recipe, the recipe's content hash and its free coefficients."""

    recipe: dict
    recipe_hash: str
    canonical_json: str
    coefficients: dict
    params: dict


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with `load_space` or `SearchSpace.from_dict`."""

    source: str
    name: str
    models: tuple[tuple[str, str], ...]   # (label, absolute path), recipe order
    base: str | None                      # absolute path
    recipe_defaults: Mapping[str, Any]
    scopes: tuple[Scope, ...]
    objectives: tuple[Objective, ...]
    evaluation: Evaluation
    search: SearchSettings
    document: Mapping[str, Any]           # the YAML with parent paths resolved (what a sweep saves)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>", base_dir: str | Path | None = None,
                  check_paths: bool = True) -> "SearchSpace":
        """Validate a parsed search-space YAML; raise AlloyError naming the key path at fault.

        base_dir: the folder relative `parents.root` and `evaluation.data_dir` are resolved against.
        check_paths: require parent folders (and data_dir) to exist.
        """
        return _parse(data, source, Path(base_dir) if base_dir else Path.cwd(), check_paths)

    @property
    def labels(self) -> tuple[str, ...]:
        """The parents' labels in recipe order."""
        return tuple(label for label, _ in self.models)

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        return [o.direction for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        """The objectives' metric names, in order."""
        return [o.metric for o in self.objectives]

    def dimensions(self) -> list[Dimension]:
        """Every dimension any trial may draw (conditional ones included)."""
        return [d for scope in self.scopes for d in scope.dimensions()]

    def distributions(self) -> dict[str, Any]:
        """name → optuna distribution for every dimension."""
        return {d.name: d.distribution() for d in self.dimensions()}

    def grid(self) -> dict[str, list]:
        """name → grid values, for Optuna's GridSampler."""
        return {d.name: d.grid(self.search.grid_points) for d in self.dimensions()}

    def grid_size(self) -> int:
        """How many points the grid has (an upper bound when method choices make parameters conditional)."""
        return math.prod(len(v) for v in self.grid().values()) if self.dimensions() else 1

    # ----------------------------------------------------------------------------------------------
    def define_by_run(self, trial: Any) -> dict:
        """Draw every free value of one trial from an Optuna trial; return them by name."""
        return self._walk(lambda dim: dim.suggest(trial)).params

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """The candidate a trial's drawn values (as `define_by_run` returns them) describe."""
        def draw(dim: Dimension) -> Any:
            if dim.name not in params:
                raise AlloyError(f"{self.source}: trial values lack '{dim.name}'; they do not come from this "
                                 f"search space (was it edited after the sweep started?)")
            return params[dim.name]
        return self._walk(draw)

    def recipe_for(self, params: Mapping[str, Any]) -> dict:
        """The recipe dict a trial's drawn values describe."""
        return self.candidate(params).recipe

    def start_points(self) -> list[tuple[str, dict]]:
        """(label, drawn values) of the configured starting points: `parent:LABEL` puts every free
        weight on that parent (a simplex at its vertex, a weight range at 1 clamped into the range, the
        others at their low end; linear when a scope may choose it); `uniform` is the centre of every
        simplex. Other values take their defaults."""
        points = []
        free = self._free_labels()
        for kind in self.search.start:
            # a parent no free weight can select (e.g. a base outside every simplex) has no start point
            targets = [f"parent:{label}" for label in self.labels if label in free] if kind == "parents" else ["uniform"]
            for target in targets:
                params = self._walk(_start_draw(target.removeprefix("parent:") if kind == "parents" else None)).params
                if all(params != p for _, p in points):
                    points.append((target, params))
        return points

    def _free_labels(self) -> set[str]:
        """Labels of the parents that some free weight (a simplex or a weight range) can move."""
        seen: set[str] = set()

        def record(dim: Dimension) -> Any:
            if dim.role[0] == "simplex":
                seen.update(dim.role[2])
            elif dim.role[0] == "weight":
                seen.add(dim.role[1])
            return dim.midpoint()

        self._walk(record)
        return seen

    def to_yaml(self) -> str:
        """The space as YAML, parent paths resolved (what a sweep folder keeps)."""
        return yaml.safe_dump(dict(self.document), sort_keys=False)

    def create_sampler(self, start_points: Sequence[Mapping[str, Any]] = ()) -> Any:
        """The seeded Optuna sampler the space names (alloy.search.samplers.create_sampler)."""
        from alloy.search.samplers import create_sampler

        return create_sampler(self, start_points)

    # ----------------------------------------------------------------------------------------------
    def _walk(self, draw: Draw) -> Candidate:
        from alloy.merge.methods import get_method
        from alloy.merge.recipe import Recipe

        params: dict[str, Any] = {}

        def take(dim: Dimension) -> Any:
            value = draw(dim)
            params[dim.name] = value
            return value

        coefficients: dict[str, Any] = {}
        paths = dict(self.models)
        recipe: dict[str, Any] = {"merge_method": None, "base_model": self.base, "models": []}
        recipe.update(self.recipe_defaults)
        groups: dict[str, Any] = {}
        for scope in self.scopes:
            method = take(scope.method_dim) if scope.method_dim else scope.methods[0]
            if scope.method_dim:
                coefficients[scope.method_dim.name] = method
            spec = get_method(method)
            per_model: dict[str, dict] = {label: {} for label in self.labels}
            if scope.weights is not None and _takes_weights(spec):
                for label, value in scope.weights.resolve(scope.name, self.labels, take, coefficients).items():
                    per_model[label]["weight"] = value
            global_params = {p: s.resolve(take, coefficients) for p, s in scope.params[method].items()}
            for pname, setting in scope.model_params[method].items():
                if isinstance(setting, Setting):
                    value = setting.resolve(take, coefficients)
                    for label in self.labels:
                        per_model[label][pname] = value
                else:
                    for label, one in setting.items():
                        per_model[label][pname] = one.resolve(take, coefficients)
            if scope.name == DEFAULT_SCOPE:
                recipe["merge_method"] = method
                recipe["parameters"] = global_params
                recipe["models"] = [{"model": paths[label], "parameters": per_model[label]} for label in self.labels]
            else:
                groups[scope.name] = {"merge_method": method, "parameters": global_params,
                                      "model_parameters": {paths[label]: p for label, p in per_model.items() if p}}
        if groups:
            recipe["groups"] = groups
        parsed = Recipe.from_dict(recipe, source=f"{self.source} (candidate recipe)")
        return Candidate(recipe, parsed.hash, parsed.canonical_json(), coefficients, params)


def load_space(path: str | Path, check_paths: bool = True) -> SearchSpace:
    """Read and completely validate a search-space YAML file (before any Ray or model work).

    check_paths: require the parent folders (and evaluation.data_dir) to exist.
    """
    from alloy.io.yaml_files import read_yaml

    path = Path(path)
    return SearchSpace.from_dict(read_yaml(path, "search space"), source=str(path), base_dir=path.resolve().parent,
                                 check_paths=check_paths)


# --------------------------------------------------------------------------------------------------
def simplex_from_unit(units: Sequence[float]) -> list[float]:
    """Stick-breaking: m−1 numbers in [0, 1] → m non-negative weights summing to 1 (rounded to 1e-6).

    Uniform inputs give points uniform on the simplex (coordinate k takes a Beta(1, m−1−k) fraction
    of the mass left)."""
    m = len(units) + 1
    rest, out = 1.0, []
    for k, u in enumerate(units):
        fraction = 1.0 - (1.0 - min(max(float(u), 0.0), 1.0)) ** (1.0 / (m - 1 - k))
        out.append(rest * fraction)
        rest -= rest * fraction
    out.append(rest)
    rounded = [round(w, 6) for w in out[:-1]]
    return rounded + [max(0.0, round(1.0 - math.fsum(rounded), 6))]


def unit_from_simplex(weights: Sequence[float]) -> list[float]:
    """The inverse of `simplex_from_unit`: m weights summing to 1 → m−1 numbers in [0, 1]."""
    m = len(weights)
    rest, out = 1.0, []
    for k in range(m - 1):
        fraction = min(1.0, weights[k] / rest) if rest > 1e-12 else 0.0
        out.append(1.0 - (1.0 - fraction) ** (m - 1 - k))
        rest -= weights[k]
    return out


def round_value(value: float) -> float:
    """A drawn float rounded to 6 significant digits (so recipes read well and hash stably)."""
    return float(f"{float(value):.6g}")


def is_token_metric(metric: str) -> bool:
    """Whether `metric` is an output-length statistic (minimized by default)."""
    return metric in TOKEN_METRICS or metric.split("/")[-1] in TOKEN_METRICS


def _takes_weights(spec: Any) -> bool:
    return any(p.name == "weight" for p in spec.model_params)


def _start_draw(target: str | None) -> Draw:
    """Values of a starting point: every simplex at `target`'s vertex (its centre when None)."""
    def draw(dim: Dimension) -> Any:
        kind = dim.role[0]
        if kind == "simplex":
            _, k, labels = dim.role
            vertex = [1.0 if label == target else 0.0 for label in labels]
            point = vertex if target in labels else [1.0 / len(labels)] * len(labels)
            return unit_from_simplex(point)[k]
        if kind == "weight":
            if target is None:
                return dim.midpoint()
            return min(max(1.0, dim.low), dim.high) if dim.role[1] == target else dim.low  # the parent: 1
        if kind == "method":
            return "linear" if "linear" in dim.choices and target is not None else dim.midpoint()
        return dim.midpoint()
    return draw


# --------------------------------------------------------------------------------------------------
# Parsing
def _mapping(value: Any, where: str, source: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AlloyError(f"{source}: {where}: expected a mapping, got {value!r}")
    return value


def _unknown(data: Mapping, allowed: set[str], where: str, source: str) -> None:
    extra = set(data) - allowed
    if extra:
        raise AlloyError(f"{source}: {where}: unknown key(s) {sorted(map(str, extra))}; allowed: {sorted(allowed)}")


def _int(value: Any, where: str, source: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise AlloyError(f"{source}: {where}: expected an integer >= {low}, got {value!r}")
    return value


def _number(value: Any, where: str, source: str, low: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (strict and value == low):
        raise AlloyError(f"{source}: {where}: expected a number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def _parse(data: Any, source: str, base_dir: Path, check_paths: bool) -> SearchSpace:
    if not isinstance(data, Mapping):
        raise AlloyError(f"{source}: a search space is a mapping with parents, objectives, evaluation and search")
    _unknown(data, _TOP_KEYS, "top level", source)
    document = dict(data)
    models, base, parents_doc = _parse_parents(data.get("parents"), source, base_dir, check_paths)
    document["parents"] = parents_doc
    labels = tuple(label for label, _ in models)
    recipe_defaults = dict(_mapping(data.get("recipe"), "recipe", source))
    _unknown(recipe_defaults, _RECIPE_KEYS, "recipe", source)
    tok = recipe_defaults.get("tokenizer_source")
    if tok in labels:
        recipe_defaults["tokenizer_source"] = dict(models)[tok]

    default_raw = data.get("default")
    if default_raw is None:
        if base is None:
            raise AlloyError(f"{source}: default: required when parents.base is not set (the recipe's top-level "
                             f"method and weights, e.g. {{merge_method: linear, weights: simplex}})")
        base_label = next((label for label, path in models if path == base), None)
        default_raw = {"merge_method": "linear", "weights": {base_label: 1.0} if base_label else "uniform"}
    scopes = [_parse_scope(DEFAULT_SCOPE, default_raw, labels, source)]
    for group, body in _mapping(data.get("groups"), "groups", source).items():
        if group not in GROUPS:
            raise AlloyError(f"{source}: groups.{group}: no such tensor group; groups are {list(GROUPS)}")
        scopes.append(_parse_scope(group, body, labels, source))

    evaluation = _parse_evaluation(data.get("evaluation"), source, base_dir, check_paths)
    if evaluation.data_dir:
        document["evaluation"] = {**data["evaluation"], "data_dir": evaluation.data_dir}
    objectives = _parse_objectives(data.get("objectives"), evaluation, source)
    search = _parse_search(data.get("search"), objectives, source)
    if search.confirm_top and not search.confirm_samples:
        search = replace(search, confirm_samples=CONFIRM_FACTOR * evaluation.rungs[-1])
    if search.confirm_top and search.confirm_samples <= evaluation.rungs[-1]:
        raise AlloyError(f"{source}: search.confirm.samples: {search.confirm_samples} is not above the last rung "
                         f"({evaluation.rungs[-1]}); the confirmation scores candidates on more questions")
    if search.stages > 1 and (evaluation.runner != "lm_eval" or evaluation.backend != "vllm"):
        raise AlloyError(f"{source}: search.resources.stages: {search.stages} pipeline stages per worker are vLLM "
                         f"engine stages; set evaluation.backend: vllm (the hf backend runs one model per worker)")
    if search.confirm_top and not search.confirm_repeats:
        search = replace(search, confirm_repeats=evaluation.repeats)
    if search.confirm_top and search.confirm_repeats > 1 and not samples_answers(evaluation):
        raise AlloyError(f"{source}: search.confirm.repeats: {search.confirm_repeats} new answers per question, but "
                         f"the evaluation decodes greedily (evaluation.repeats 1, no evaluation.generation."
                         f"temperature above 0), so every new answer would be the same; leave it out or sample")
    name = data.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise AlloyError(f"{source}: name: expected a string, got {name!r}")
    space = SearchSpace(source=source, name=name, models=models, base=base, recipe_defaults=recipe_defaults,
                        scopes=tuple(scopes), objectives=objectives, evaluation=evaluation, search=search,
                        document=document)
    _check_recipes(space)
    from alloy.search.samplers import check_sampler

    check_sampler(space)
    if evaluation.runner == "synthetic":
        from alloy.search.synthetic import SyntheticOptions

        SyntheticOptions.from_dict(evaluation.synthetic, labels, f"{source}: evaluation.synthetic")
    return space


def _parse_parents(raw: Any, source: str, base_dir: Path, check_paths: bool):
    raw = _mapping(raw, "parents", source)
    if not raw:
        raise AlloyError(f"{source}: parents: required: {{models: [PATH, ...], base: LABEL_OR_PATH}}")
    _unknown(raw, _PARENT_KEYS, "parents", source)
    root = raw.get("root")
    if root is not None and not isinstance(root, str):
        raise AlloyError(f"{source}: parents.root: expected a folder path, got {root!r}")
    root_dir = (base_dir / root).resolve() if root else Path.cwd()
    listed = raw.get("models")
    if isinstance(listed, list):
        pairs = []
        for i, item in enumerate(listed):
            if not isinstance(item, str) or not item:
                raise AlloyError(f"{source}: parents.models[{i}]: expected a path, got {item!r}")
            pairs.append((Path(item).name, item))
    elif isinstance(listed, Mapping):
        pairs = [(str(k), v) for k, v in listed.items()]
    else:
        raise AlloyError(f"{source}: parents.models: expected a list of paths or a mapping label → path")
    if not pairs:
        raise AlloyError(f"{source}: parents.models: list at least one parent")
    models, seen = [], set()
    for label, path in pairs:
        if not isinstance(path, str) or not path:
            raise AlloyError(f"{source}: parents.models.{label}: expected a path, got {path!r}")
        if label in seen or "/" in label or not label or label != label.strip():
            raise AlloyError(f"{source}: parents.models.{label}: labels must be unique, non-empty and without '/'; "
                             f"give the parents as a mapping label → path")
        seen.add(label)
        models.append((label, _resolve_parent(path, root_dir, f"parents.models.{label}", source, check_paths)))
    paths = dict(models)
    base = raw.get("base")
    if base is not None:
        if not isinstance(base, str):
            raise AlloyError(f"{source}: parents.base: expected a label or a path, got {base!r}")
        base = paths[base] if base in paths else _resolve_parent(base, root_dir, "parents.base", source, check_paths)
    doc = {"models": {label: path for label, path in models}, "base": base}
    return tuple(models), base, doc


def _resolve_parent(path: str, root: Path, where: str, source: str, check: bool) -> str:
    resolved = Path(path).expanduser()
    resolved = resolved if resolved.is_absolute() else (root / resolved)
    resolved = Path(str(resolved.resolve()) if check else str(resolved))
    if check and not resolved.is_dir():
        raise AlloyError(f"{source}: {where}: parent folder {resolved} does not exist; edit the path in the "
                         f"search space (relative paths are read from {root})")
    return str(resolved)


def _parse_scope(name: str, raw: Any, labels: tuple[str, ...], source: str) -> Scope:
    from alloy.merge.methods import METHODS, get_method

    where = "default" if name == DEFAULT_SCOPE else f"groups.{name}"
    raw = _mapping(raw, where, source)
    _unknown(raw, _SCOPE_KEYS, where, source)
    methods = raw.get("merge_method", "linear")
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise AlloyError(f"{source}: {where}.merge_method: expected a method name or a list of them")
    if len(set(methods)) != len(methods):
        raise AlloyError(f"{source}: {where}.merge_method: a method is listed twice")
    for m in methods:
        if m not in METHODS:
            raise AlloyError(f"{source}: {where}.merge_method: unknown method '{m}'; known: {sorted(METHODS)}")
    specs = {m: get_method(m) for m in methods}
    method_dim = (Dimension(f"{name}.merge_method", "categorical", choices=tuple(methods), role=("method",))
                  if len(methods) > 1 else None)

    weighted = [m for m in methods if _takes_weights(specs[m])]
    weights = None
    if weighted:
        weight_spec = specs[weighted[0]].param("weight")
        weights = _parse_weights(name, raw.get("weights", "simplex"), weight_spec, labels, f"{where}.weights", source)
    elif "weights" in raw:
        raise AlloyError(f"{source}: {where}.weights: none of the methods {methods} takes per-model weights")

    params_raw = _mapping(raw.get("parameters"), f"{where}.parameters", source)
    per_method = {k: _mapping(v, f"{where}.parameters.{k}", source) for k, v in params_raw.items() if k in methods}
    shared = {k: v for k, v in params_raw.items() if k not in methods}
    for key in shared:
        if key == "weight":
            raise AlloyError(f"{source}: {where}.parameters.weight: set per-model weights under {where}.weights")
        if all(specs[m].param(key) is None for m in methods):
            raise AlloyError(f"{source}: {where}.parameters.{key}: no method among {methods} has a parameter "
                             f"'{key}'")
    params: dict[str, dict[str, Setting]] = {}
    model_params: dict[str, dict[str, Any]] = {}
    for m in methods:
        spec = specs[m]
        for key in per_method.get(m, {}):
            if spec.param(key) is None or key == "weight":
                raise AlloyError(f"{source}: {where}.parameters.{m}.{key}: method '{m}' has no parameter '{key}'")
        explicit = {**{k: v for k, v in shared.items() if spec.param(k) is not None}, **per_method.get(m, {})}
        prefix = f"{name}.{m}" if len(methods) > 1 else name
        params[m], model_params[m] = {}, {}
        for p in spec.params:
            value = explicit.get(p.name, "search" if _searchable(p) else None)
            pwhere = f"{where}.parameters.{m + '.' if m in per_method else ''}{p.name}"
            if value is not None:
                params[m][p.name] = _parse_setting(value, p, f"{prefix}.{p.name}", pwhere, source,
                                                   allow_per_model=False)
        for p in spec.model_params:
            if p.name == "weight":
                continue
            value = explicit.get(p.name, "search" if _searchable(p) else None)
            pwhere = f"{where}.parameters.{m + '.' if m in per_method else ''}{p.name}"
            if value is None:
                continue
            if isinstance(value, Mapping) and value and set(value) <= set(labels):
                model_params[m][p.name] = {
                    label: _parse_setting(value.get(label, p.default), p, f"{prefix}.{p.name}.{label}",
                                          f"{pwhere}.{label}", source, allow_per_model=False)
                    for label in labels}
            elif isinstance(value, Mapping) and value.get("per_model"):
                model_params[m][p.name] = {
                    label: _parse_setting(value, p, f"{prefix}.{p.name}.{label}", pwhere, source)
                    for label in labels}
            else:
                model_params[m][p.name] = _parse_setting(value, p, f"{prefix}.{p.name}", pwhere, source)
    return Scope(name, tuple(methods), method_dim, weights, params, model_params)


def _searchable(p: Any) -> bool:
    return p.kind in ("float", "int") and p.search_low is not None and p.search_high is not None


def _parse_setting(value: Any, p: Any, name: str, where: str, source: str, allow_per_model: bool = True) -> Setting:
    if value == "search":
        if not _searchable(p):
            raise AlloyError(f"{source}: {where}: parameter '{p.name}' has no default search range; give "
                             f"{{low, high}}")
        value = {}
    if isinstance(value, Mapping):
        _unknown(value, _RANGE_KEYS if allow_per_model else _RANGE_KEYS - {"per_model"}, where, source)
        anchors = _int(value.get("gradient", 1), f"{where}.gradient", source, 1)
        if "choices" in value:
            choices = value["choices"]
            if not isinstance(choices, list) or not choices:
                raise AlloyError(f"{source}: {where}.choices: expected a non-empty list")
            checked = tuple(p.check(c, f"{source}: {where}.choices") for c in choices)
            dims = tuple(Dimension(_anchor(name, a, anchors), "categorical", choices=checked, default=p.default)
                         for a in range(anchors))
            return Setting(dims=dims)
        if p.kind not in ("float", "int"):
            raise AlloyError(f"{source}: {where}: parameter '{p.name}' is {p.kind}; give a value or {{choices: [...]}}")
        low = value.get("low", p.search_low)
        high = value.get("high", p.search_high)
        if low is None or high is None:
            raise AlloyError(f"{source}: {where}: give both low and high (parameter '{p.name}' has no default "
                             f"search range)")
        low = p.check(low, f"{source}: {where}.low")
        high = p.check(high, f"{source}: {where}.high")
        if low > high:
            raise AlloyError(f"{source}: {where}: low > high ({low} > {high}); the range is empty")
        log = value.get("log", p.log)
        if not isinstance(log, bool):
            raise AlloyError(f"{source}: {where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise AlloyError(f"{source}: {where}: a log-scale range needs low > 0, got {low}")
        dims = tuple(Dimension(_anchor(name, a, anchors), p.kind, low=low, high=high, log=log, default=p.default)
                     for a in range(anchors))
        return Setting(dims=dims)
    if isinstance(value, list):
        if not value:
            raise AlloyError(f"{source}: {where}: an empty list is not a setting")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return Setting(fixed=[p.check(v, f"{source}: {where}[{i}]") for i, v in enumerate(value)])
        return Setting(fixed=value)  # {filter, value} lists: the recipe validates them
    return Setting(fixed=p.check(value, f"{source}: {where}"))


def _anchor(name: str, a: int, anchors: int) -> str:
    return f"{name}.a{a}" if anchors > 1 else name


def _parse_weights(scope: str, raw: Any, spec: Any, labels: tuple[str, ...], where: str, source: str) -> Weights:
    if raw == "uniform":
        return Weights(per_model={label: Setting(fixed=round_value(1.0 / len(labels))) for label in labels})
    if raw == "simplex":
        raw = {"simplex": True}
    if not isinstance(raw, Mapping):
        raise AlloyError(f"{source}: {where}: expected simplex, uniform, {{simplex: [...], gradient: K}} or a "
                         f"mapping label → weight")
    if "simplex" in raw:
        _unknown(raw, {"simplex", "gradient"}, where, source)
        subset = raw["simplex"]
        subset = list(labels) if subset is True else subset
        if not isinstance(subset, list) or not subset or not all(s in labels for s in subset):
            raise AlloyError(f"{source}: {where}.simplex: expected true or a list of parent labels {list(labels)}")
        if len(set(subset)) != len(subset):
            raise AlloyError(f"{source}: {where}.simplex: a parent is listed twice")
        anchors = _int(raw.get("gradient", 1), f"{where}.gradient", source, 1)
        subset = tuple(label for label in labels if label in subset)
        dims = tuple(tuple(Dimension(f"{scope}.weights{f'.a{a}' if anchors > 1 else ''}.s{k}", "float", 0.0, 1.0,
                                     role=("simplex", k, subset))
                           for k in range(len(subset) - 1))
                     for a in range(anchors))
        return Weights(simplex=subset, anchors=anchors, dims=dims)
    for key in raw:
        if key not in labels:
            raise AlloyError(f"{source}: {where}.{key}: not a parent label; labels are {list(labels)}")
    per_model = {}
    for label in labels:
        setting = _parse_setting(raw.get(label, 0.0), spec, f"{scope}.weights.{label}", f"{where}.{label}", source,
                                 allow_per_model=False)
        dims = tuple(Dimension(d.name, d.kind, d.low, d.high, d.log, d.choices, ("weight", label), d.default)
                     for d in setting.dims)
        per_model[label] = Setting(setting.fixed, dims)
    return Weights(per_model=per_model)


def _parse_evaluation(raw: Any, source: str, base_dir: Path, check_paths: bool) -> Evaluation:
    raw = _mapping(raw, "evaluation", source)
    _unknown(raw, _EVAL_KEYS, "evaluation", source)
    runner = raw.get("runner", DEFAULT_RUNNER)
    if not isinstance(runner, str) or not runner:
        raise AlloyError(f"{source}: evaluation.runner: expected a runner name, got {runner!r}")
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise AlloyError(f"{source}: evaluation.tasks: expected a non-empty list of task names")
    known = _known_tasks()
    if known is not None:
        for t in tasks:
            if t not in known:
                raise AlloyError(f"{source}: evaluation.tasks: unknown task '{t}'; known: {sorted(known)}")
    rungs = raw.get("rungs", [raw.get("samples", 32)])
    if not isinstance(rungs, list) or not rungs:
        raise AlloyError(f"{source}: evaluation.rungs: expected a list of sample counts, e.g. [8, 32, 128]")
    rungs = [_int(r, f"evaluation.rungs[{i}]", source, 1) for i, r in enumerate(rungs)]
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise AlloyError(f"{source}: evaluation.rungs: sample counts must increase strictly, got {rungs}")
    repeats = _int(raw.get("repeats", 1), "evaluation.repeats", source, 1)
    max_gen = raw.get("max_gen_toks")
    max_gen = None if max_gen is None else _int(max_gen, "evaluation.max_gen_toks", source, 1)
    thinking = raw.get("thinking_budget")
    thinking = None if thinking is None else _int(thinking, "evaluation.thinking_budget", source, 1)
    generation = dict(_mapping(raw.get("generation"), "evaluation.generation", source))
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        if not isinstance(data_dir, str):
            raise AlloyError(f"{source}: evaluation.data_dir: expected a folder path, got {data_dir!r}")
        data_dir = str((base_dir / Path(data_dir).expanduser()).resolve())
        if check_paths and not Path(data_dir).is_dir():
            raise AlloyError(f"{source}: evaluation.data_dir: folder {data_dir} does not exist")
    synthetic = dict(_mapping(raw.get("synthetic"), "evaluation.synthetic", source))
    backend = raw.get("backend", "auto")
    if backend not in BACKENDS:
        raise AlloyError(f"{source}: evaluation.backend: expected one of {list(BACKENDS)}, got {backend!r}")
    batch_size = _int(raw.get("batch_size", DEFAULT_BATCH_SIZE), "evaluation.batch_size", source, 1)
    return Evaluation(runner, tuple(tasks), tuple(rungs), repeats, max_gen, thinking, generation, data_dir, synthetic,
                      backend, batch_size)


def _known_tasks() -> Any:
    try:
        from alloy.evaluation.datasets import TASKS
    except ImportError:
        return None
    return TASKS


def _parse_objectives(raw: Any, evaluation: Evaluation, source: str) -> tuple[Objective, ...]:
    if isinstance(raw, (str, Mapping)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise AlloyError(f"{source}: objectives: expected a list of metrics, e.g. [aime24/exact_match, "
                         f"{{metric: tokens_mean, direction: minimize}}]")
    out = []
    for i, item in enumerate(raw):
        where = f"objectives[{i}]"
        if isinstance(item, str):
            item = {"metric": item}
        item = _mapping(item, where, source)
        _unknown(item, {"metric", "direction"}, where, source)
        metric = item.get("metric")
        if not isinstance(metric, str) or not metric:
            raise AlloyError(f"{source}: {where}.metric: expected a metric name such as aime24/exact_match")
        task = metric.split("/")[0] if "/" in metric else None
        if not is_token_metric(metric) and task not in evaluation.tasks:
            raise AlloyError(f"{source}: {where}.metric: '{metric}' is neither TASK/METRIC for a task of "
                             f"evaluation.tasks {list(evaluation.tasks)} nor a token statistic {list(TOKEN_METRICS)}")
        if task is not None and task not in evaluation.tasks:
            raise AlloyError(f"{source}: {where}.metric: task '{task}' is not in evaluation.tasks")
        if task is not None:
            name = metric.split("/", 1)[1]
            problem = repeat_metric_error(name, evaluation.repeats)
            if problem:
                raise AlloyError(f"{source}: {where}.metric: '{metric}': {problem}")
            if not is_repeat_metric(name) and metric not in reported_metrics(task):
                raise AlloyError(f"{source}: {where}.metric: task '{task}' reports no '{metric}'; it reports "
                                 f"{list(reported_metrics(task))} (and pass@k / avg@n with evaluation.repeats)")
        direction = item.get("direction", "minimize" if is_token_metric(metric) else "maximize")
        direction = {"max": "maximize", "min": "minimize"}.get(direction, direction)
        if direction not in ("maximize", "minimize"):
            raise AlloyError(f"{source}: {where}.direction: expected maximize or minimize, got {direction!r}")
        if any(o.metric == metric for o in out):
            raise AlloyError(f"{source}: {where}: metric '{metric}' is listed twice")
        out.append(Objective(metric, direction))
    return tuple(out)


def _parse_search(raw: Any, objectives: tuple[Objective, ...], source: str) -> SearchSettings:
    raw = _mapping(raw, "search", source)
    _unknown(raw, _SEARCH_KEYS, "search", source)
    from alloy.search.samplers import RESTART_STRATEGIES, SAMPLERS

    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise AlloyError(f"{source}: search.sampler: unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    resources = _mapping(raw.get("resources"), "search.resources", source)
    _unknown(resources, {"cpu", "gpu", "stages"}, "search.resources", source)
    start = raw.get("start", [])
    start = [start] if isinstance(start, str) else start
    if not isinstance(start, list) or any(s not in START_POINTS for s in start):
        raise AlloyError(f"{source}: search.start: expected a list of {list(START_POINTS)}, got {start!r}")
    prune = raw.get("prune", True)
    if not isinstance(prune, bool):
        raise AlloyError(f"{source}: search.prune: expected true or false, got {prune!r}")
    prune_metric = raw.get("prune_metric", objectives[0].metric)
    if prune_metric not in [o.metric for o in objectives]:
        raise AlloyError(f"{source}: search.prune_metric: '{prune_metric}' is not one of the objectives")
    population = raw.get("population_size")
    study_name = raw.get("study_name", "alloy")
    if not isinstance(study_name, str) or not study_name:
        raise AlloyError(f"{source}: search.study_name: expected a non-empty string")
    return SearchSettings(
        sampler=sampler,
        seed=_int(raw.get("seed", 0), "search.seed", source, 0),
        trials=_int(raw.get("trials", 32), "search.trials", source, 1),
        concurrency=_int(raw.get("concurrency", 1), "search.concurrency", source, 1),
        cpu=_number(resources.get("cpu", 1), "search.resources.cpu", source, 0.0),
        gpu=_number(resources.get("gpu", 0), "search.resources.gpu", source, 0.0),
        stages=_int(resources.get("stages", 1), "search.resources.stages", source, 1),
        start=tuple(dict.fromkeys(start)),
        reduction_factor=_number(raw.get("reduction_factor", 3), "search.reduction_factor", source, 1.0, strict=True),
        prune=prune,
        prune_metric=prune_metric,
        retries=_int(raw.get("retries", 0), "search.retries", source, 0),
        grid_points=_int(raw.get("grid_points", 3), "search.grid_points", source, 2),
        population_size=None if population is None else _int(population, "search.population_size", source, 2),
        study_name=study_name,
        restart_strategy=_choice(raw.get("restart_strategy", "none"), RESTART_STRATEGIES, "search.restart_strategy",
                                 source),
        scalarization={str(k): _number(v, f"search.scalarization.{k}", source, 0.0)
                       for k, v in _mapping(raw.get("scalarization"), "search.scalarization", source).items()},
        **_parse_confirm(raw.get("confirm"), source), **_parse_warm_start(raw.get("warm_start"), source),
    )


def _choice(value: Any, allowed: Sequence[str], where: str, source: str) -> str:
    if value not in allowed:
        raise AlloyError(f"{source}: {where}: expected one of {list(allowed)}, got {value!r}")
    return value


def _parse_confirm(raw: Any, source: str) -> dict[str, int]:
    """`search.confirm: {top: K, samples: N, repeats: R}` (default {top: 3}; `false` turns it off) → the
    SearchSettings fields; N = 0 stands for 4 × the last rung and R = 0 for evaluation.repeats (resolved,
    and checked against the evaluation, by `_parse`)."""
    if raw is False:
        return {"confirm_top": 0}
    raw = _mapping(raw, "search.confirm", source)
    _unknown(raw, {"top", "samples", "repeats"}, "search.confirm", source)
    return {"confirm_top": _int(raw.get("top", CONFIRM_TOP), "search.confirm.top", source, 0),
            "confirm_samples": _int(raw.get("samples", 0), "search.confirm.samples", source, 0),
            "confirm_repeats": _int(raw.get("repeats", 0), "search.confirm.repeats", source, 0)}


def _parse_warm_start(raw: Any, source: str) -> dict[str, Any]:
    """`search.warm_start: PATH` or `{from: PATH, top: K}` → the SearchSettings fields."""
    if raw is None:
        return {}
    raw = {"from": raw} if isinstance(raw, str) else _mapping(raw, "search.warm_start", source)
    _unknown(raw, {"from", "top"}, "search.warm_start", source)
    if not isinstance(raw.get("from"), str) or not raw["from"]:
        raise AlloyError(f"{source}: search.warm_start: expected the folder (or name) of an earlier sweep")
    return {"warm_start": raw["from"], "warm_start_top": _int(raw.get("top", 4), "search.warm_start.top", source, 1)}


def _check_recipes(space: SearchSpace) -> None:
    """Build the recipe of every method choice (others at their defaults) so a bad combination of
    method, models and parameters fails now, not in a trial."""
    base_draw = _start_draw(None)
    for scope in space.scopes:
        for method in scope.methods:
            def draw(dim: Dimension, scope=scope, method=method) -> Any:
                return method if dim is scope.method_dim else base_draw(dim)
            space._walk(draw)
