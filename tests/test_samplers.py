"""The samplers of search/samplers.py: CMA-ES and GP find the optimum of the synthetic objective; CMA-ES
starts at the starting points, restarts (IPOP) from the study's state; the scalarization of several
objectives; the synthetic runner's binomial scores and their intervals."""
from __future__ import annotations

import dataclasses
import math
import random
import warnings

import optuna
import pytest

from alloy.evaluation.intervals import wilson
from alloy.search.runner import make_runner
from alloy.search.samplers import SAMPLERS, SCALAR_METRIC, RestartingCmaEsSampler, run_round, scalarize
from alloy.search.space import SearchSpace, load_space
from tests.spaces import final_result, space_dict, write_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _best_after(space: SearchSpace, sampler: str, trials: int, seed: int = 0) -> float:
    """The best noise-free score a sampler finds in `trials` trials (starting points enqueued first)."""
    space = dataclasses.replace(space, search=dataclasses.replace(space.search, sampler=sampler, seed=seed,
                                                                  trials=trials))
    study = optuna.create_study(direction="maximize", sampler=space.create_sampler())
    for _, params in space.start_points():
        study.enqueue_trial(params)
    _ask_and_tell(space, study, trials, 64)
    return study.best_value


def _ask_and_tell(space: SearchSpace, study: optuna.Study, trials: int, n_samples: int) -> None:
    """Run `trials` trials of the study on the space's synthetic runner at `n_samples` questions."""
    runner = make_runner(space, ".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(trials):
            trial = study.ask()
            candidate = space.candidate(space.define_by_run(trial))
            study.tell(trial, runner.run(candidate.recipe, candidate.recipe_hash, n_samples)["aime24/exact_match"])


@pytest.mark.parametrize("sampler, trials, share", [("cmaes", 120, 0.95), ("gp", 40, 0.9)])
def test_sampler_finds_the_optimum(tmp_path, sampler, trials, share):
    data = space_dict()
    data["search"]["start"] = ["parents", "uniform"]
    space = load_space(write_space(tmp_path, data))
    optimum = make_runner(space, tmp_path).best_score()
    random_best = _best_after(space, "random", trials)
    best = _best_after(space, sampler, trials)
    assert best >= share * optimum, (best, optimum)
    assert best > random_best, (best, random_best)


def test_cmaes_starts_at_the_centroid_of_the_starting_points(tmp_path):
    space = load_space(write_space(tmp_path, space_dict()))
    point = {d.name: (d.low * (d.high / d.low) ** 0.1 if d.log else d.low + 0.1 * (d.high - d.low))
             for d in space.dimensions()}                                  # every coordinate at 10% of its range
    study = optuna.create_study(direction="maximize", sampler=RestartingCmaEsSampler(seed=0, start_points=[point]))
    study.enqueue_trial(point)
    study.optimize(lambda t: -sum(v for v in space.define_by_run(t).values()), n_trials=1)
    asked = []
    for _ in range(6):
        trial = study.ask()
        params = space.define_by_run(trial)
        asked.append(params["default.weights.s0"])
        study.tell(trial, 0.0)
    assert all(run_round(t) == 0 for t in study.trials[1:])
    assert sum(asked) / len(asked) < 0.3                                   # near 0.1, not the centre 0.5


def test_cmaes_ipop_restarts_with_a_larger_population_and_resumes_from_the_study(tmp_path, monkeypatch):
    import cmaes

    # each run meets its stopping criteria after two generations (real runs stop on tolerances)
    monkeypatch.setattr(cmaes.CMA, "should_stop", lambda self: self.generation >= 2)
    space = load_space(write_space(tmp_path, space_dict()))
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def run(n: int) -> optuna.Study:                                     # a fresh sampler each time, as on resume
        study = optuna.create_study(direction="maximize", sampler=RestartingCmaEsSampler(seed=1, restarts=True),
                                    storage=storage, study_name="s", load_if_exists=True)
        for _ in range(n):
            trial = study.ask()
            study.tell(trial, -sum(space.define_by_run(trial).values()))
        return study

    def generations(study: optuna.Study) -> dict:
        sizes: dict = {}
        for t in study.trials:
            k = run_round(t)
            if k is not None:
                key = (k, t.system_attrs["cma:generation" if k == 0 else f"cma:r{k}:generation"])
                sizes[key] = sizes.get(key, 0) + 1
        return sizes

    base = 4 + math.floor(3 * math.log(len(space.dimensions())))
    run(1 + 2 * base + 5)                     # the first trial is the random startup one
    resumed = generations(run(2 * base + 4 * base))
    assert resumed[(0, 0)] == resumed[(0, 1)] == base
    assert resumed[(1, 0)] == resumed[(1, 1)] == 2 * base                 # IPOP: twice the population
    assert (2, 0) in resumed and (0, 2) not in resumed


def test_sampler_without_restarts_keeps_one_run(tmp_path):
    space = load_space(write_space(tmp_path, space_dict()))
    study = optuna.create_study(direction="maximize", sampler=RestartingCmaEsSampler(seed=1))
    study.optimize(lambda t: -sum(space.define_by_run(t).values()), n_trials=40)
    assert {run_round(t) for t in study.trials[1:]} == {0}


def test_cmaes_scalarizes_several_objectives(tmp_path):
    from alloy.search.sweep import SweepSearch

    data = space_dict(objectives=["aime24/exact_match", "tokens_mean"])
    data["search"].update(sampler="cmaes", scalarization={"tokens_mean": 1e-4})
    space = load_space(write_space(tmp_path, data))
    search = SweepSearch(space, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"), "alloy")
    assert search.metric == SCALAR_METRIC and len(search.study.directions) == 1
    search.suggest("a")
    metrics = {"aime24/exact_match": 0.6, "tokens_mean": 3000.0}
    value = scalarize(space, metrics)
    assert value == pytest.approx(0.6 - 0.3)
    search.on_trial_complete("a", {**final_result(2, 0.6), **metrics, SCALAR_METRIC: value})
    assert search.study.trials[0].value == pytest.approx(value)


# --------------------------------------------------------------------------------------------------
def test_binomial_scores_and_their_intervals_on_known_data(tmp_path):
    """Binomial noise: the score is k/n, right answers keep across rungs, and the Wilson intervals hold
    the noise-free score about 95% of the time."""
    data = space_dict()
    data["evaluation"]["synthetic"]["noise"] = "binomial"
    space = load_space(write_space(tmp_path, data))
    runner = make_runner(space, tmp_path)
    rng = random.Random(0)
    covered, total = 0, 0
    for _ in range(300):
        params = {d.name: d.low + rng.random() * (d.high - d.low) for d in space.dimensions()}
        candidate = space.candidate(params)
        truth = runner.true_score(candidate.recipe)
        small = runner.run(candidate.recipe, candidate.recipe_hash, 10)
        big = runner.run(candidate.recipe, candidate.recipe_hash, 40)
        k = round(big["aime24/exact_match"] * 40)
        assert big["aime24/exact_match"] == k / 40
        assert (big["aime24/exact_match.lo"], big["aime24/exact_match.hi"]) == pytest.approx(wilson(k, 40))
        assert round(small["aime24/exact_match"] * 10) <= k <= round(small["aime24/exact_match"] * 10) + 30
        covered += big["aime24/exact_match.lo"] <= truth <= big["aime24/exact_match.hi"]
        total += 1
    assert 0.90 <= covered / total <= 0.99, covered / total


def test_gaussian_noise_scores_carry_their_normal_interval(tmp_path):
    data = space_dict()
    data["evaluation"]["synthetic"]["noise"] = 0.2
    space = load_space(write_space(tmp_path, data))
    candidate = space.candidate(space.start_points()[0][1] if space.start_points() else
                                {d.name: d.midpoint() for d in space.dimensions()})
    out = make_runner(space, tmp_path).run(candidate.recipe, candidate.recipe_hash, 16)
    score = out["aime24/exact_match"]
    assert out["aime24/exact_match.lo"] == pytest.approx(max(0.0, score - 1.96 * 0.05))
    assert out["aime24/exact_match.hi"] == pytest.approx(min(1.0, score + 1.96 * 0.05))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_survives_the_pickling_tune_saves_it_with(tmp_path, sampler):
    """Tune pickles the searcher, and so its sampler, whenever it saves a sweep's state: each sampler,
    after some trials, goes through Ray's cloudpickle and goes on sampling the same study."""
    from ray import cloudpickle

    data = space_dict()
    data["search"].update(sampler=sampler, trials=8, population_size=4)
    space = load_space(write_space(tmp_path, data))
    study = optuna.create_study(direction="maximize", sampler=space.create_sampler())
    _ask_and_tell(space, study, 5, 16)
    study.sampler = cloudpickle.loads(cloudpickle.dumps(study.sampler))
    _ask_and_tell(space, study, 3, 16)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 8
