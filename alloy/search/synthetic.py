"""The synthetic runner: a known, smooth function of a recipe's coefficients plus seeded noise.

It builds no model. It is where the search itself is tested and measured (samplers, ASHA, resume),
and it lets a search space be tried end to end in seconds. Imports only the merge layer's recipe
types.
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from alloy.errors import AlloyError
from alloy.merge.groups import GROUPS

# How much each tensor group's mix matters to the synthetic score.
GROUP_IMPORTANCE: dict[str, float] = {"routed_experts": 4.0, "attention": 2.0, "mlp": 2.0, "shared_experts": 1.0,
                                      "router": 1.0, "embed": 0.5, "lm_head": 0.5, "norm": 0.25, "other": 0.25}


@dataclass(frozen=True)
class SyntheticOptions:
    """Knobs of the synthetic runner (`evaluation.synthetic` in a search space).

    target: the best mix over the parents (label → weight, normalized), for every group;
    group_targets: group → mix, overriding `target` for that group;
    threshold: the best AoE threshold δ*; noise: score noise (standard deviation at one sample);
    tokens: mean output tokens of a child that is all first parent; verbosity: label → extra tokens per
    unit of that parent's weight (relative; default: 0 for the first parent rising to 1 for the last);
    fail_fraction: the share of recipes (picked by hash) whose evaluation raises;
    seconds_per_sample: time the evaluation sleeps per sample.
    """

    labels: tuple[str, ...]
    target: tuple[float, ...]
    group_targets: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    threshold: float = 0.01
    noise: float = 0.05
    tokens: float = 4000.0
    verbosity: tuple[float, ...] = ()
    fail_fraction: float = 0.0
    seconds_per_sample: float = 0.0
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], labels: Sequence[str], where: str) -> "SyntheticOptions":
        """Validate `evaluation.synthetic`; errors name `where` and the key."""
        labels = tuple(labels)
        allowed = {"target", "group_targets", "threshold", "noise", "tokens", "verbosity", "fail_fraction",
                   "seconds_per_sample", "seed"}
        extra = set(raw) - allowed
        if extra:
            raise AlloyError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")

        def number(key: str, default: float, low: float, high: float = math.inf) -> float:
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise AlloyError(f"{where}.{key}: expected a number in [{low}, {high}], got {value!r}")
            return float(value)

        def mix(value: Any, key: str) -> tuple[float, ...]:
            if not isinstance(value, Mapping) or not value or set(value) - set(labels):
                raise AlloyError(f"{where}.{key}: expected a mapping parent label → weight over {list(labels)}")
            weights = [value.get(label, 0.0) for label in labels]
            bad = any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights)
            if bad or sum(weights) <= 0:
                raise AlloyError(f"{where}.{key}: weights must be non-negative numbers with a positive sum")
            return tuple(w / sum(weights) for w in weights)

        default_target = {label: i + 1.0 for i, label in enumerate(labels)}
        target = mix(raw.get("target", default_target), "target")
        group_targets = raw.get("group_targets") or {}
        if not isinstance(group_targets, Mapping) or set(group_targets) - set(GROUPS):
            raise AlloyError(f"{where}.group_targets: expected a mapping tensor group → mix; groups are {list(GROUPS)}")
        verbosity = raw.get("verbosity", {label: i / max(1, len(labels) - 1) for i, label in enumerate(labels)})
        if not isinstance(verbosity, Mapping) or set(verbosity) - set(labels) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in verbosity.values()):
            raise AlloyError(f"{where}.verbosity: expected a mapping parent label → number")
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise AlloyError(f"{where}.seed: expected an integer, got {seed!r}")
        return cls(labels=labels, target=target,
                   group_targets={g: mix(v, f"group_targets.{g}") for g, v in group_targets.items()},
                   threshold=number("threshold", 0.01, 1e-12), noise=number("noise", 0.05, 0.0),
                   tokens=number("tokens", 4000.0, 1.0),
                   verbosity=tuple(float(verbosity.get(label, 0.0)) for label in labels),
                   fail_fraction=number("fail_fraction", 0.0, 0.0, 1.0),
                   seconds_per_sample=number("seconds_per_sample", 0.0, 0.0), seed=seed)


class SyntheticRunner:
    """A smooth known function of a recipe's coefficients plus seeded noise that shrinks as 1/√n.

    Per tensor group g the recipe gives a mix w_g over the parents (normalized weights, per-layer
    gradients averaged; uniform for methods without weights) and, for methods with a `threshold`,
    a threshold δ_g. With targets t_g and importances a_g (`GROUP_IMPORTANCE`):

        q = exp(−Σ_g a_g·(‖w_g − t_g‖² + 0.1·log10(δ_g/δ*)²))        (1 at the optimum)
        score_j = (0.1 + 0.05·j) + 0.7·q        for the j-th score objective (clipped to [0, 1])
        tokens_mean = tokens·(1 + Σ_i verbosity_i·m_i), m = the importance-weighted mean mix

    No model is built; it exists to test the search and to try a search space end to end.
    """

    def __init__(self, score_metrics: Sequence[str], options: SyntheticOptions):
        self.score_metrics = list(score_metrics)
        self.options = options

    def run(self, recipe: dict, recipe_hash: str, n_samples: int) -> dict[str, float]:
        """Metrics of `recipe` at `n_samples` samples (deterministic for a given hash and count)."""
        start = time.perf_counter()
        o = self.options
        if o.fail_fraction and int(recipe_hash[:8], 16) / 2 ** 32 < o.fail_fraction:
            raise RuntimeError(f"synthetic failure for recipe {recipe_hash} (evaluation.synthetic.fail_fraction)")
        quality, mix = self.quality(recipe)
        merge_s = time.perf_counter() - start
        if o.seconds_per_sample:
            time.sleep(o.seconds_per_sample * n_samples)
        spread = o.noise / math.sqrt(n_samples)
        out: dict[str, float] = {}
        for j, metric in enumerate(self.score_metrics):
            noisy = self.expected_score(j, quality) + self._noise(recipe_hash, n_samples, metric) * spread
            out[metric] = min(1.0, max(0.0, noisy))
        tokens = self.expected_tokens(mix) * math.exp(self._noise(recipe_hash, n_samples, "tokens") * spread)
        out.update(tokens_mean=tokens, tokens_median=0.9 * tokens, tokens_p90=1.8 * tokens,
                   thinking_tokens_mean=0.8 * tokens, thinking_tokens_median=0.72 * tokens,
                   thinking_tokens_p90=1.44 * tokens)
        out["merge_s"] = merge_s
        out["eval_s"] = time.perf_counter() - start - merge_s
        return out

    def quality(self, recipe: dict) -> tuple[float, list[float]]:
        """(q, importance-weighted mean mix over the parents) of a recipe, without noise."""
        from alloy.merge.methods import get_method
        from alloy.merge.recipe import Recipe, evaluate_setting

        parsed = Recipe.from_dict(recipe, source="synthetic runner recipe")
        o = self.options
        if len(parsed.models) != len(o.labels):
            raise AlloyError(f"synthetic runner: the recipe lists {len(parsed.models)} models, the search space "
                             f"{len(o.labels)} parents")
        total, mix = 0.0, [0.0] * len(o.labels)
        for group in GROUPS:
            choice = parsed.method_for(group)
            spec = get_method(choice.method)
            if spec.param("weight") is not None and spec.param("weight") in spec.model_params:
                weights = [_mean_setting(p.get("weight", 0.0), evaluate_setting) for p in choice.model_parameters]
            else:
                weights = [1.0] * len(o.labels)
            total_w = sum(weights)
            weights = [w / total_w for w in weights] if total_w > 0 else [1.0 / len(weights)] * len(weights)
            target = o.group_targets.get(group, o.target)
            penalty = sum((w - t) ** 2 for w, t in zip(weights, target))
            if spec.param("threshold") is not None:
                delta = max(_mean_setting(choice.parameters.get("threshold", 0.0), evaluate_setting), 1e-12)
                penalty += 0.1 * math.log10(delta / o.threshold) ** 2
            a = GROUP_IMPORTANCE[group]
            total += a * penalty
            mix = [m + a * w for m, w in zip(mix, weights)]
        norm = sum(GROUP_IMPORTANCE.values())
        return math.exp(-total), [m / norm for m in mix]

    @staticmethod
    def expected_score(index: int, quality: float) -> float:
        """The noise-free value of the `index`-th score objective at quality q."""
        return (0.1 + 0.05 * index) + 0.7 * quality

    def expected_tokens(self, mix: Sequence[float]) -> float:
        """The noise-free mean output tokens of a child whose mean mix is `mix`."""
        return self.options.tokens * (1.0 + sum(v * m for v, m in zip(self.options.verbosity, mix)))

    def best_score(self, index: int = 0) -> float:
        """The optimum of the `index`-th score objective (at q = 1)."""
        return self.expected_score(index, 1.0)

    def _noise(self, recipe_hash: str, n_samples: int, metric: str) -> float:
        key = f"{self.options.seed}:{recipe_hash}:{n_samples}:{metric}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big")).gauss(0.0, 1.0)


def _mean_setting(setting: Any, evaluate: Callable[[Any, str, float], Any]) -> float:
    values = [evaluate(setting, "", t / 4) for t in range(5)]
    return sum(float(v or 0.0) for v in values) / len(values)
