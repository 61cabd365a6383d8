"""The synthetic runner: a known function of a recipe's coefficients, shaped like a merge, plus seeded noise.

It builds no model. It is where the search itself is tested and measured (samplers, ASHA, confirmation,
resume; bench/search_bench.py), and it lets a search space be tried end to end in seconds. Its
objectives: a smooth optimum inside the simplex (`target`, `group_targets`), an AoE-style sharp step in
δ and λ where a behaviour flips (`step`), a per-group mix where only some groups matter
(`group_importance`), and noise that shrinks with the sample count: Gaussian, or `noise: binomial`, the
score being the share of n questions answered right. Imports only the merge layer and the intervals.
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from alloy.errors import AlloyError
from alloy.evaluation.intervals import wilson
from alloy.merge.groups import GROUPS

# How much each tensor group's mix matters to the synthetic score.
GROUP_IMPORTANCE: dict[str, float] = {"routed_experts": 4.0, "attention": 2.0, "mlp": 2.0, "shared_experts": 1.0,
                                      "router": 1.0, "embed": 0.5, "lm_head": 0.5, "norm": 0.25, "other": 0.25}


@dataclass(frozen=True)
class Step:
    """AoE's sharp transition: a behaviour that is on only where `group`'s weight of `parent` is at least
    λ_c and its threshold δ is at most δ_c; it carries the share `height` of the score.

        on = σ(s·(λ − λ_c)) · σ(s·(log10 δ_c − log10 δ))        q ← q·(1 − h + h·on)
    """

    parent: str
    weight: float = 0.5
    threshold: float = 0.05
    height: float = 0.5
    sharpness: float = 40.0
    group: str = "routed_experts"

    @classmethod
    def from_dict(cls, raw: Any, labels: Sequence[str], where: str) -> "Step":
        """Validate `evaluation.synthetic.step`; errors name `where` and the key."""
        if not isinstance(raw, Mapping) or raw.get("parent") not in labels:
            raise AlloyError(f"{where}: expected {{parent: LABEL, weight, threshold, height, sharpness, group}} with "
                             f"parent one of {list(labels)}")
        extra = set(raw) - {"parent", "weight", "threshold", "height", "sharpness", "group"}
        if extra:
            raise AlloyError(f"{where}: unknown key(s) {sorted(extra)}")
        if raw.get("group", cls.group) not in GROUPS:
            raise AlloyError(f"{where}.group: expected a tensor group of {list(GROUPS)}")
        values = {}
        for key, low, high in (("weight", 0.0, 1.0), ("threshold", 1e-12, math.inf), ("height", 0.0, 1.0),
                               ("sharpness", 0.0, math.inf)):
            value = raw.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise AlloyError(f"{where}.{key}: expected a number in [{low}, {high}], got {value!r}")
            values[key] = float(value)
        return cls(parent=raw["parent"], group=raw.get("group", cls.group), **values)

    def on(self, weight: float, delta: float) -> float:
        """How far the behaviour is on (0 to 1) at this weight of the parent and threshold."""
        return (_sigmoid(self.sharpness * (weight - self.weight))
                * _sigmoid(self.sharpness * (math.log10(self.threshold) - math.log10(max(delta, 1e-12)))))


@dataclass(frozen=True)
class SyntheticOptions:
    """Knobs of the synthetic runner (`evaluation.synthetic` in a search space).

    target: the best mix over the parents (label → weight, normalized), for every group;
    group_targets: group → mix, overriding `target` for that group;
    threshold: the best AoE threshold δ*; noise: score noise (standard deviation at one sample), or
    `binomial` (each of the n questions is answered right with probability the noise-free score);
    step: the AoE behaviour flip, {parent, weight: λ_c, threshold: δ_c, height: h, sharpness: s, group};
    group_importance: group → how much its mix matters (replaces `GROUP_IMPORTANCE`; unlisted: 0);
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
    binomial: bool = False
    step: "Step | None" = None
    group_importance: Mapping[str, float] = field(default_factory=lambda: dict(GROUP_IMPORTANCE))
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
                   "seconds_per_sample", "seed", "step", "group_importance"}
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
        binomial = raw.get("noise") == "binomial"
        importance = raw.get("group_importance", GROUP_IMPORTANCE)
        if not isinstance(importance, Mapping) or set(importance) - set(GROUPS) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in importance.values()):
            raise AlloyError(f"{where}.group_importance: expected a mapping tensor group → non-negative number; "
                             f"groups are {list(GROUPS)}")
        return cls(labels=labels, target=target,
                   group_targets={g: mix(v, f"group_targets.{g}") for g, v in group_targets.items()},
                   threshold=number("threshold", 0.01, 1e-12),
                   noise=0.0 if binomial else number("noise", 0.05, 0.0), binomial=binomial,
                   step=None if raw.get("step") is None else Step.from_dict(raw["step"], labels, f"{where}.step"),
                   group_importance={g: float(importance.get(g, 0.0)) for g in GROUPS},
                   tokens=number("tokens", 4000.0, 1.0),
                   verbosity=tuple(float(verbosity.get(label, 0.0)) for label in labels),
                   fail_fraction=number("fail_fraction", 0.0, 0.0, 1.0),
                   seconds_per_sample=number("seconds_per_sample", 0.0, 0.0), seed=seed)


class SyntheticRunner:
    """A known function of a recipe's coefficients plus seeded noise that shrinks as 1/√n.

    Per tensor group g the recipe gives a mix w_g over the parents (normalized weights, per-layer
    gradients averaged; uniform for methods without weights) and, for methods with a `threshold`,
    a threshold δ_g. With targets t_g and importances a_g (`group_importance`):

        q = exp(−Σ_g a_g·(‖w_g − t_g‖² + 0.1·log10(δ_g/δ*)²))        (1 at the optimum)
        q ← q·(1 − h + h·on(λ, δ))        with a `step` (see `Step`)
        score_j = (0.1 + 0.05·j) + 0.7·q        for the j-th score objective (clipped to [0, 1])
        tokens_mean = tokens·(1 + Σ_i verbosity_i·m_i), m = the importance-weighted mean mix

    Each score comes with its 95% interval (`METRIC.lo`, `METRIC.hi`): Wilson over the answers for
    binomial noise, the normal interval of the Gaussian noise otherwise. Binomial answers are drawn per
    question and repeat index, so a larger rung keeps the answers of a smaller one, and other repeat
    indices (the confirmation's) are new draws, as with the real evaluator. `repeats` is the number of
    answers per question the search's own evaluations draw (`evaluation.repeats`).
    No model is built; it exists to test the search and to try a search space end to end.
    """

    def __init__(self, score_metrics: Sequence[str], options: SyntheticOptions, repeats: int = 1):
        self.score_metrics = list(score_metrics)
        self.options = options
        self.repeats = repeats

    def run(self, recipe: dict, recipe_hash: str, n_samples: int, repeats: range | None = None) -> dict[str, float]:
        """Metrics of `recipe` at `n_samples` questions, answered once per repeat index in `repeats`
        (default `range(self.repeats)`; deterministic for a given hash, count and repeats)."""
        repeats = range(self.repeats) if repeats is None else repeats
        draws = [(d, r) for r in repeats for d in range(n_samples)]
        start = time.perf_counter()
        o = self.options
        if o.fail_fraction and int(recipe_hash[:8], 16) / 2 ** 32 < o.fail_fraction:
            raise RuntimeError(f"synthetic failure for recipe {recipe_hash} (evaluation.synthetic.fail_fraction)")
        quality, mix = self.quality(recipe)
        merge_s = time.perf_counter() - start
        if o.seconds_per_sample:
            time.sleep(o.seconds_per_sample * len(draws))
        spread = o.noise / math.sqrt(len(draws))
        noise_key = str(n_samples) if repeats == range(1) else f"{n_samples}:{repeats.start}-{repeats.stop}"
        out: dict[str, float] = {}
        for j, metric in enumerate(self.score_metrics):
            expected = self.expected_score(j, quality)
            if o.binomial:
                right = sum(self._uniform(recipe_hash, f"{metric}:q{d}" + (f":r{r}" if r else "")) < expected
                            for d, r in draws)
                out[metric] = right / len(draws)
                out[f"{metric}.lo"], out[f"{metric}.hi"] = wilson(right, len(draws))
            else:
                noisy = min(1.0, max(0.0, expected + self._noise(recipe_hash, noise_key, metric) * spread))
                out[metric] = noisy
                half = 1.96 * spread
                out[f"{metric}.lo"], out[f"{metric}.hi"] = max(0.0, noisy - half), min(1.0, noisy + half)
        tokens = self.expected_tokens(mix) * math.exp(self._noise(recipe_hash, noise_key, "tokens") * spread)
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
        total, mix, flip = 0.0, [0.0] * len(o.labels), 1.0
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
            delta = None
            if spec.param("threshold") is not None:
                delta = max(_mean_setting(choice.parameters.get("threshold", 0.0), evaluate_setting), 1e-12)
                penalty += 0.1 * math.log10(delta / o.threshold) ** 2
            if o.step is not None and group == o.step.group:
                # no threshold (a method without one) leaves the behaviour where δ → ∞: off
                on = 0.0 if delta is None else o.step.on(weights[o.labels.index(o.step.parent)], delta)
                flip = 1.0 - o.step.height + o.step.height * on
            a = o.group_importance[group]
            total += a * penalty
            mix = [m + a * w for m, w in zip(mix, weights)]
        norm = sum(o.group_importance.values()) or 1.0
        return math.exp(-total) * flip, [m / norm for m in mix]

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

    def true_score(self, recipe: dict, index: int = 0) -> float:
        """The noise-free value of the `index`-th score objective for `recipe`."""
        return self.expected_score(index, self.quality(recipe)[0])

    def _noise(self, recipe_hash: str, draws: str, metric: str) -> float:
        key = f"{self.options.seed}:{recipe_hash}:{draws}:{metric}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big")).gauss(0.0, 1.0)

    def _uniform(self, recipe_hash: str, what: str) -> float:
        digest = hashlib.sha256(f"{self.options.seed}:{recipe_hash}:{what}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(x / 2.0))


def _mean_setting(setting: Any, evaluate: Callable[[Any, str, float], Any]) -> float:
    values = [evaluate(setting, "", t / 4) for t in range(5)]
    return sum(float(v or 0.0) for v in values) / len(values)
