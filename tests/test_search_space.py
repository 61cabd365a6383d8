"""Search spaces: validation with key paths, sampling on the simplex, recipes, starting points, the
shipped spaces, and the samplers on the synthetic runner (TPE against random, NSGA-II's front)."""
from __future__ import annotations

import dataclasses
import random
import statistics
import warnings
from pathlib import Path

import optuna
import pytest

from alloy.errors import AlloyError
from alloy.merge.recipe import Recipe
from alloy.search.leaderboard import pareto_mask
from alloy.search.runner import SyntheticRunner, make_runner
from alloy.search.space import SearchSpace, load_space, simplex_from_unit, unit_from_simplex
from tests.spaces import space_dict, write_space

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_load_space_and_recipe(tmp_path):
    space = load_space(write_space(tmp_path))
    assert space.labels == ("A", "B", "C")
    assert space.base == str((tmp_path / "parents" / "a").resolve())
    assert [d.name for d in space.dimensions()] == [
        "default.weights.s0", "default.weights.s1", "routed_experts.weights.s0", "routed_experts.weights.s1",
        "routed_experts.threshold"]
    study = optuna.create_study(direction="maximize", sampler=space.create_sampler())
    trial = study.ask()
    params = space.define_by_run(trial)
    assert params == trial.params
    candidate = space.candidate(params)
    recipe = Recipe.from_dict(candidate.recipe)
    assert candidate.recipe_hash == recipe.hash
    weights = [m.parameters["weight"] for m in recipe.models]
    assert sum(weights) == pytest.approx(1.0, abs=1e-6) and min(weights) >= 0
    group = recipe.groups["routed_experts"]
    assert group.merge_method == "aoe"
    assert 1e-4 <= group.parameters["threshold"] <= 1.0
    assert sum(p["weight"] for p in group.model_parameters.values()) == pytest.approx(1.0, abs=1e-6)
    assert candidate.coefficients["routed_experts.threshold"] == group.parameters["threshold"]
    assert set(candidate.coefficients) >= {"default.weight.A", "default.weight.B", "default.weight.C"}
    assert space.recipe_for(params) == candidate.recipe


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["groups"]["routed_experts"]["parameters"].update(threshold={"low": 0.5, "high": 0.1}),
     "groups.routed_experts.parameters.threshold: low > high"),
    (lambda d: d["groups"].update(experts={"merge_method": "linear"}), "groups.experts: no such tensor group"),
    (lambda d: d["default"].update(merge_method="frankenmerge"), "default.merge_method: unknown method"),
    (lambda d: d["groups"]["routed_experts"]["parameters"].update(density=0.5),
     "groups.routed_experts.parameters.density: no method among ['aoe']"),
    (lambda d: d["evaluation"].update(tasks=["mmlu"]), "evaluation.tasks: unknown task 'mmlu'"),
    (lambda d: d["evaluation"].update(rungs=[8, 8]), "evaluation.rungs: sample counts must increase"),
    (lambda d: d.update(objectives=["gpqa_diamond/exact_match"]), "objectives[0].metric"),
    (lambda d: d["search"].update(sampler="bayes"), "search.sampler: unknown sampler"),
    (lambda d: (d["search"].update(sampler="cmaes"), d["default"].update(merge_method=["linear", "task_arithmetic"])),
     "search.sampler: cmaes cannot search categorical choices (default.merge_method)"),
    (lambda d: d["search"].update(restart_strategy="ipop"), "search.restart_strategy: only the cmaes sampler"),
    (lambda d: (d["search"].update(sampler="cmaes"), d.update(objectives=["aime24/exact_match", "tokens_mean"])),
     "search.scalarization: cmaes optimizes one weighted sum of the objectives; give the weight of ['tokens_mean']"),
    (lambda d: d["search"].update(scalarization={"aime24/exact_match": 1.0}), "search.scalarization: only used by"),
    (lambda d: d["search"].update(confirm={"top": 2, "samples": 16}), "search.confirm.samples: 16 is not above"),
    (lambda d: d["search"].update(confirm={"top": 2, "rounds": 2}), "search.confirm: unknown key(s) ['rounds']"),
    (lambda d: d["search"].update(warm_start={"top": 2}), "search.warm_start: expected the folder"),
    (lambda d: d["evaluation"]["synthetic"].update(step={"parent": "Z"}), "evaluation.synthetic.step: expected"),
    (lambda d: d.update(objectives=["aime24/pass@5"]), "pass@5 needs at least 5 samples per question"),
    (lambda d: (d.update(objectives=["aime24/avg@4"]), d["evaluation"].update(repeats=8)),
     "avg@4 needs evaluation.repeats: 4 (it is 8)"),
    (lambda d: (d.update(objectives=["aime24/pass@3"]), d["evaluation"].update(repeats=8)), "pass@3 is not reported"),
    (lambda d: d["groups"]["routed_experts"]["parameters"].update(threshold={"low": 0.0, "high": 0.1, "log": True}),
     "needs low > 0"),
    (lambda d: d["groups"]["routed_experts"].update(weights={"simplex": ["A", "D"]}),
     "groups.routed_experts.weights.simplex"),
    (lambda d: d["parents"]["models"].update(D="missing"), "parents.models.D: parent folder"),
    (lambda d: d.update(colour="red"), "top level: unknown key(s) ['colour']"),
    (lambda d: d["evaluation"]["synthetic"].update(target={"Z": 1.0}), "evaluation.synthetic.target"),
])
def test_space_errors_name_the_key(tmp_path, edit, message):
    data = space_dict()
    edit(data)
    with pytest.raises(AlloyError) as err:
        load_space(write_space(tmp_path, data))
    assert message in str(err.value)
    assert "space.yaml" in str(err.value)


def test_repeat_metrics_are_objectives(tmp_path):
    data = space_dict(objectives=["aime24/avg@8", "aime24/pass@5", {"metric": "tokens_mean", "direction": "min"}])
    data["evaluation"]["repeats"] = 8
    space = load_space(write_space(tmp_path, data))
    assert space.metrics == ["aime24/avg@8", "aime24/pass@5", "tokens_mean"]


def test_bad_method_combination_fails_at_load(tmp_path):
    data = space_dict(default={"merge_method": ["linear", "passthrough"], "weights": "simplex"})
    with pytest.raises(AlloyError, match="passthrough"):
        load_space(write_space(tmp_path, data))


def test_missing_parents_pass_without_path_checks(tmp_path):
    space = load_space(write_space(tmp_path, make_parents=False), check_paths=False)
    assert space.models[0][1].endswith("a")
    with pytest.raises(AlloyError, match="parents.models.A: parent folder .* does not exist"):
        load_space(tmp_path / "space.yaml")


def test_simplex_transform():
    rng = random.Random(0)
    for m in (2, 3, 5):
        for _ in range(50):
            units = [rng.random() for _ in range(m - 1)]
            weights = simplex_from_unit(units)
            assert len(weights) == m and min(weights) >= 0 and sum(weights) == pytest.approx(1.0, abs=1e-6)
            assert simplex_from_unit(unit_from_simplex(weights)) == pytest.approx(weights, abs=1e-5)
        for k in range(m):
            vertex = [1.0 if i == k else 0.0 for i in range(m)]
            assert simplex_from_unit(unit_from_simplex(vertex)) == pytest.approx(vertex, abs=1e-6)
    # uniform inputs give uniform points on the simplex: each coordinate has mean 1/m
    samples = [simplex_from_unit([rng.random() for _ in range(3)]) for _ in range(4000)]
    for k in range(4):
        assert statistics.mean(s[k] for s in samples) == pytest.approx(0.25, abs=0.02)


def test_start_points(tmp_path):
    data = space_dict()
    data["search"]["start"] = ["parents", "uniform"]
    space = load_space(write_space(tmp_path, data))
    points = dict(space.start_points())
    assert list(points) == ["parent:A", "parent:B", "parent:C", "uniform"]
    coeffs = space.candidate(points["parent:B"]).coefficients
    assert coeffs["default.weight.B"] == 1.0 and coeffs["routed_experts.weight.B"] == 1.0
    assert coeffs["default.weight.A"] == 0.0 and coeffs["routed_experts.weight.C"] == 0.0
    uniform = space.candidate(points["uniform"]).coefficients
    assert uniform["default.weight.A"] == pytest.approx(1 / 3, abs=1e-5)
    assert 1e-4 <= uniform["routed_experts.threshold"] <= 1.0


def test_a_parent_start_point_on_weight_ranges_is_the_parent(tmp_path):
    data = space_dict(default={"merge_method": "task_arithmetic", "parameters": {"lambda": 1.0},
                               "weights": {"B": {"low": 0.0, "high": 1.5}, "C": {"low": 0.0, "high": 0.8}}})
    data["search"]["start"] = ["parents"]
    points = dict(load_space(write_space(tmp_path, data)).start_points())
    assert points["parent:B"]["default.weights.B"] == 1.0 and points["parent:B"]["default.weights.C"] == 0.0
    assert points["parent:C"]["default.weights.C"] == 0.8  # 1 is above the range: its high end


def test_method_choice_gradients_and_grid(tmp_path):
    data = space_dict(default={
        "merge_method": ["linear", "ties"],
        "weights": {"simplex": ["B", "C"], "gradient": 2},
        "parameters": {"ties": {"density": {"low": 0.2, "high": 0.8, "gradient": 3}}, "lambda": 1.0}})
    data["search"].update(sampler="grid", grid_points=2)
    space = load_space(write_space(tmp_path, data))
    names = [d.name for d in space.dimensions()]
    assert names[:3] == ["default.merge_method", "default.weights.a0.s0", "default.weights.a1.s0"]
    assert "default.ties.density.a2" in names and not any("lambda" in n for n in names)
    grid = space.grid()
    assert grid["default.merge_method"] == ["linear", "ties"] and grid["default.ties.density.a0"] == [0.2, 0.8]
    study = optuna.create_study(direction="maximize", sampler=space.create_sampler())
    seen = set()
    assert space.grid_size() == 2 * 2 ** 2 * 2 ** 3 * 2 ** 3  # method, weight anchors, densities, group
    for _ in range(20):
        trial = study.ask()
        candidate = space.candidate(space.define_by_run(trial))
        recipe = Recipe.from_dict(candidate.recipe)
        seen.add(candidate.recipe_hash)
        models = {m.model.rsplit("/", 1)[-1]: m.parameters for m in recipe.models}
        assert models["a"]["weight"] == [0.0, 0.0]
        assert isinstance(models["b"]["weight"], list) and len(models["b"]["weight"]) == 2
        if recipe.merge_method == "ties":
            assert len(models["c"]["density"]) == 3 and recipe.parameters["lambda"] == 1.0
        try:
            study.tell(trial, 0.0)
        except RuntimeError:  # the grid is exhausted: GridSampler asks the study to stop
            break
    assert len(seen) > 4


@pytest.mark.parametrize("name", ["aoe_deepseek.yaml", "branch_merge.yaml"])
def test_shipped_spaces_parse(name):
    space = load_space(REPO / "search_spaces" / name, check_paths=False)
    assert space.search.start == ("parents", "uniform")
    labels = [label for label, _ in space.start_points()]
    assert labels == [*(f"parent:{label}" for label in space.labels), "uniform"]
    for _, params in space.start_points():
        Recipe.from_dict(space.recipe_for(params))
    study = optuna.create_study(directions=space.directions, sampler=space.create_sampler())
    for _ in range(5):
        Recipe.from_dict(space.recipe_for(space.define_by_run(study.ask())))


def test_shipped_aoe_space_covers_every_tensor_group():
    space = load_space(REPO / "search_spaces" / "aoe_deepseek.yaml", check_paths=False)
    assert {s.name for s in space.scopes} >= {"default", "routed_experts"}
    assert space.base.endswith("DeepSeek-V3-0324")
    assert {o.metric: o.direction for o in space.objectives}["tokens_mean"] == "minimize"


# --------------------------------------------------------------------------------------------------
def _trials_to_reach(space: SearchSpace, sampler: str, seed: int, goal: float, cap: int) -> int:
    space = dataclasses.replace(space, search=dataclasses.replace(space.search, sampler=sampler, seed=seed, trials=cap))
    runner = make_runner(space, ".")
    study = optuna.create_study(direction="maximize", sampler=space.create_sampler())
    for i in range(cap):
        trial = study.ask()
        candidate = space.candidate(space.define_by_run(trial))
        value = runner.run(candidate.recipe, candidate.recipe_hash, 128)["aime24/exact_match"]
        study.tell(trial, value)
        if value >= goal:
            return i + 1
    return cap + 1


def test_tpe_reaches_the_optimum_in_fewer_trials_than_random(tmp_path):
    space = load_space(write_space(tmp_path))
    runner = make_runner(space, tmp_path)
    assert isinstance(runner, SyntheticRunner)
    optimum = runner.best_score()
    # the optimum is where the runner says: at the targets, with the best threshold
    best = space.candidate({"default.weights.s0": unit_from_simplex([0.2, 0.5, 0.3])[0],
                            "default.weights.s1": unit_from_simplex([0.2, 0.5, 0.3])[1],
                            "routed_experts.weights.s0": unit_from_simplex([0.1, 0.1, 0.8])[0],
                            "routed_experts.weights.s1": unit_from_simplex([0.1, 0.1, 0.8])[1],
                            "routed_experts.threshold": 0.01})
    assert runner.run(best.recipe, best.recipe_hash, 128)["aime24/exact_match"] == pytest.approx(optimum, abs=1e-4)
    goal, cap = 0.95 * optimum, 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tpe = [_trials_to_reach(space, "tpe", seed, goal, cap) for seed in range(5)]
        rand = [_trials_to_reach(space, "random", seed, goal, cap) for seed in range(5)]
    assert all(n <= cap for n in tpe), tpe
    assert statistics.median(tpe) < statistics.median(rand), (tpe, rand)
    assert sum(tpe) < sum(rand), (tpe, rand)


def test_nsga2_returns_the_true_pareto_front(tmp_path):
    data = space_dict(objectives=["aime24/exact_match", "tokens_mean"])
    data["search"].update(sampler="nsga2", trials=60, population_size=12)
    space = load_space(write_space(tmp_path, data))
    assert space.directions == ["maximize", "minimize"]
    runner = make_runner(space, tmp_path)
    study = optuna.create_study(directions=space.directions, sampler=space.create_sampler())
    for _ in range(60):
        trial = study.ask()
        candidate = space.candidate(space.define_by_run(trial))
        metrics = runner.run(candidate.recipe, candidate.recipe_hash, 32)
        study.tell(trial, [metrics["aime24/exact_match"], metrics["tokens_mean"]])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    brute = {t.number for t in complete
             if not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                        for o in complete)}
    assert {t.number for t in study.best_trials} == brute
    mask = pareto_mask([t.values for t in complete], space.directions)
    assert {t.number for t, on in zip(complete, mask) if on} == brute
    assert 1 < len(brute) < len(complete)
