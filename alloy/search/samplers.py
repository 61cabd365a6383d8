"""The Optuna samplers a sweep can use (`search.sampler`), and what each needs from a search space.

- `tpe`: multivariate, grouped TPE with a constant liar (the default);
- `cmaes`: CMA-ES (the `cmaes` package through Optuna), started from the centroid of the starting
  points, with IPOP restarts when `search.restart_strategy: ipop` (each restart doubles the population
  and starts from a random point once the previous run has converged);
- `gp`: Optuna's Gaussian-process sampler (log-EI; log-EHVI for several objectives), for continuous
  spaces of moderate dimension;
- `nsga2`, `random` and `grid`.

CMA-ES optimizes one objective and handles no categorical choice: a space with several objectives is
scalarized for it (see `scalarize`), and a space with a method choice or a `{choices: [...]}`
parameter is refused when it loads. Every sampler learns only from COMPLETE trials; trials that ASHA
stopped reach Optuna as PRUNED (alloy.search.sweep) and starting points are enqueued trials.
"""
from __future__ import annotations

import math
import threading
import warnings
from typing import Any, Mapping, Sequence

import optuna
from optuna.samplers import CmaEsSampler

from alloy.errors import AlloyError

SAMPLERS = ("tpe", "cmaes", "gp", "nsga2", "random", "grid")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)     # scalarized when the space has several objectives
NO_CATEGORICAL_SAMPLERS = ("cmaes",)       # refuse method choices and {choices: [...]} parameters
RESTART_STRATEGIES = ("none", "ipop")
SCALAR_METRIC = "scalarized"               # the reported value a scalarized study optimizes
ROUND_ATTR = "alloy:cma_round"             # trial system attribute: which CMA-ES run (restart) asked it


def check_sampler(space: Any) -> None:
    """AlloyError (naming the key) when the space's sampler cannot search this space as configured."""
    s = space.search
    if s.restart_strategy != "none" and s.sampler != "cmaes":
        raise AlloyError(f"{space.source}: search.restart_strategy: only the cmaes sampler restarts "
                         f"(sampler is {s.sampler})")
    if s.sampler in NO_CATEGORICAL_SAMPLERS:
        categorical = [d.name for d in space.dimensions() if d.kind == "categorical"]
        if categorical:
            raise AlloyError(f"{space.source}: search.sampler: {s.sampler} cannot search categorical choices "
                             f"({', '.join(categorical)}); fix them, or use tpe, gp or nsga2")
    if s.scalarization and not scalarizes(space):
        raise AlloyError(f"{space.source}: search.scalarization: only used by {list(SINGLE_OBJECTIVE_SAMPLERS)} "
                         f"on several objectives; remove it")
    if scalarizes(space):
        from alloy.search.space import is_token_metric

        unknown = sorted(set(s.scalarization) - set(space.metrics))
        if unknown:
            raise AlloyError(f"{space.source}: search.scalarization: {unknown} are not objectives "
                             f"({space.metrics})")
        tokens = [m for m in space.metrics if is_token_metric(m) and m not in s.scalarization]
        if tokens:
            raise AlloyError(f"{space.source}: search.scalarization: {s.sampler} optimizes one weighted sum of the "
                             f"objectives; give the weight of {tokens} (its units differ from the scores'), "
                             f"e.g. {{{tokens[0]}: 0.0001}}")


def scalarizes(space: Any) -> bool:
    """Whether the study optimizes one weighted sum of several objectives (`SCALAR_METRIC`)."""
    return space.search.sampler in SINGLE_OBJECTIVE_SAMPLERS and len(space.objectives) > 1


def scalar_weights(space: Any) -> dict[str, float]:
    """metric → weight of the scalarization: `search.scalarization`, 1 for a score objective it omits."""
    return {m: float(space.search.scalarization.get(m, 1.0)) for m in space.metrics}


def scalarize(space: Any, metrics: Mapping[str, float]) -> float:
    """The documented scalarization, maximized: Σ_m w_m·v_m over maximized objectives minus Σ_m w_m·v_m
    over minimized ones (w from `scalar_weights`)."""
    weights = scalar_weights(space)
    return math.fsum((1.0 if o.direction == "maximize" else -1.0) * weights[o.metric] * float(metrics[o.metric])
                     for o in space.objectives)


def study_target(space: Any) -> tuple[str | list[str], str | list[str]]:
    """(metric, mode) of the Optuna study in Ray Tune's spelling: one objective, the scalarization, or
    a list for several objectives."""
    if scalarizes(space):
        return SCALAR_METRIC, "max"
    if len(space.objectives) > 1:
        return space.metrics, [o.mode for o in space.objectives]
    return space.metrics[0], space.objectives[0].mode


def reported_scalar(space: Any, metrics: Mapping[str, float]) -> dict[str, float]:
    """{SCALAR_METRIC: value} for a scalarized study, else nothing (added to each rung's report)."""
    return {SCALAR_METRIC: scalarize(space, metrics)} if scalarizes(space) else {}


def create_sampler(space: Any, start_points: Sequence[Mapping[str, Any]] = ()) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler the space names; CMA-ES starts at the centroid of `start_points`
    (the space's own starting points when none are given)."""
    s = space.search
    startup = min(10, max(3, s.trials // 5))
    with warnings.catch_warnings():  # multivariate/group/constant_liar and GP options are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=s.seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=startup)
        if s.sampler == "cmaes":
            points = list(start_points) or [p for _, p in space.start_points()]
            return RestartingCmaEsSampler(seed=s.seed, start_points=points, restarts=s.restart_strategy == "ipop",
                                          popsize=s.population_size)
        if s.sampler == "gp":
            return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup)
    if s.sampler == "nsga2":
        population = s.population_size or max(4, min(50, s.trials // 4))
        return PicklableNSGAIISampler(seed=s.seed, population_size=population)
    if s.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II sampler, picklable: Tune pickles the searcher with its sampler when it saves the
    sweep's state, and Optuna 5.1's genetic samplers hold a thread lock (for their generation cache),
    which is left out of the pickle and made anew on loading."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class RestartingCmaEsSampler(CmaEsSampler):
    """Optuna's CMA-ES sampler, started from the centroid of given points, with optional IPOP restarts.

    Run k (0 first) keeps its optimizer and generations under its own system-attribute prefix, so the
    study alone holds the state and a resumed sweep continues the same run. With `restarts`, when run
    k's optimizer meets its stopping criteria (`cmaes.CMA.should_stop`), run k + 1 starts from a
    uniformly random mean with twice the population (IPOP-CMA-ES, Auger & Hansen 2005).
    """

    def __init__(self, *, seed: int | None = None, start_points: Sequence[Mapping[str, Any]] = (),
                 restarts: bool = False, popsize: int | None = None):
        super().__init__(seed=seed, popsize=popsize, warn_independent_sampling=False)
        self._start_points = [dict(p) for p in start_points]
        self._restarts = restarts
        self._base_popsize = popsize
        self._round = 0

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        self._use_round(len(search_space), _latest_round(study))
        if self._restarts:
            optimizer = self._restore_optimizer(self._get_trials(study))
            if optimizer is not None and optimizer.should_stop():
                self._use_round(len(search_space), self._round + 1)
        params = super().sample_relative(study, trial, search_space)
        if self._restarts and params:  # this ask told the optimizer a generation: did that run just converge?
            told = self._restore_optimizer([study._storage.get_trial(trial._trial_id)])
            if told is not None and told.should_stop():
                self._use_round(len(search_space), self._round + 1)
                params = super().sample_relative(study, trial, search_space)
        if params:
            study._storage.set_trial_system_attr(trial._trial_id, ROUND_ATTR, self._round)
        return params

    def _use_round(self, dim: int, k: int) -> None:
        self._round = k
        self._attr_prefix = "cma:" if k == 0 else f"cma:r{k}:"
        base = self._base_popsize or 4 + math.floor(3 * math.log(dim))
        self._popsize = self._base_popsize if k == 0 else base * 2 ** k

    def _init_optimizer(self, trans: Any, direction: Any) -> Any:
        import cmaes
        import numpy as np

        low, high = trans.bounds[:, 0], trans.bounds[:, 1]
        names = list(trans._search_space)
        points = [p for p in self._start_points if all(n in p for n in names)]
        if self._round == 0 and points:
            mean = np.mean([trans.transform({n: p[n] for n in names}) for p in points], axis=0)
        elif self._round == 0:
            mean = low + (high - low) / 2
        else:
            mean = low + (high - low) * np.random.RandomState(self._cma_rng.rng.randint(1, 2**31 - 2)).rand(len(low))
        return cmaes.CMA(mean=np.clip(mean, low, high), sigma=max(float(np.min(high - low)) / 6, 1e-10),
                         bounds=trans.bounds, seed=self._cma_rng.rng.randint(1, 2**31 - 2),
                         n_max_resampling=10 * len(low), population_size=self._popsize)


def _latest_round(study: optuna.Study) -> int:
    return max((t.system_attrs.get(ROUND_ATTR, 0) for t in study.get_trials(deepcopy=False)), default=0)


def run_round(trial: optuna.trial.FrozenTrial) -> int | None:
    """Which CMA-ES run asked this trial (None: not asked by the CMA-ES optimizer)."""
    return trial.system_attrs.get(ROUND_ATTR)
