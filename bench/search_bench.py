"""Which sampler needs the fewest evaluations on merge-shaped objectives, and what the reported best is
truly worth, measured in one run on the synthetic runner.

    python bench/search_bench.py [--seeds 10] [--trials 60] [--questions 30] [--repeats 1]
                                 [--objectives smooth,step,groups]

Three objectives over three parents (alloy.search.synthetic), each with binomial noise on n questions
(answered `--repeats` times each: sampled answers, whose confirmation draws new ones):
`smooth` (an optimum inside the simplex), `step` (AoE's sharp flip in δ and λ), `groups` (six tensor
groups, two of which matter). For random, TPE, CMA-ES and GP, with and without ASHA, and NSGA-II on a
two-objective variant (score, tokens), over the seeds, it prints:

- reached ε: in how many seeds some evaluated trial came within ε (true score) of the optimum;
  trials to ε: the trials until then (median [IQR]; trials + 1 when never);
- regret: optimum − the true, noise-free score of the reported best (median [min–max]); perfect pick:
  the same for the truly best trial the search evaluated at the last rung (what a noise-free pick gets);
- samples: answers drawn (a larger rung re-uses the answers of a smaller one, as the evaluator's
  cache does; the confirmation's new draws are new answers), and the ASHA ratio: samples to ε without
  ASHA / with it;
- `alloy default` (the sampler, ASHA and confirmation a search space gets by default) against plain
  CMA-ES (mergekit-evolve's search) given the same total samples, as a regret ratio.

The searches are the ones alloy builds (SearchSpace.create_sampler, the starting points, pruned trials
told PRUNED, the confirmation's pick and decision from alloy.search.confirm) driven through Optuna
directly, without Ray: ASHA is Optuna's SuccessiveHalvingPruner at the sweep's milestones rf**rung.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from alloy.search.confirm import confirmation_repeats, decide_best, pick_candidates  # noqa: E402
from alloy.search.leaderboard import pareto_mask  # noqa: E402
from alloy.search.runner import make_runner  # noqa: E402
from alloy.search.samplers import scalarizes, scalarize  # noqa: E402
from alloy.search.space import SearchSpace  # noqa: E402

METRIC = "aime24/exact_match"
EPSILON = 0.02
GROUP_SCOPES = ("attention", "mlp", "routed_experts", "shared_experts", "embed", "lm_head")


def objective_space(kind: str, questions: int, search: dict, two_objectives: bool = False,
                    repeats: int = 1) -> SearchSpace:
    """The search space of one benchmark objective (synthetic runner, binomial noise, three parents)."""
    synthetic: dict[str, Any] = {"noise": "binomial", "target": {"A": 0.2, "B": 0.5, "C": 0.3},
                                 "group_targets": {"routed_experts": {"A": 0.1, "B": 0.2, "C": 0.7}},
                                 "group_importance": {"routed_experts": 1.0, "attention": 0.5}}
    groups: dict[str, Any] = {"routed_experts": {"merge_method": "aoe", "weights": "simplex",
                                                 "parameters": {"threshold": {"low": 1e-4, "high": 1.0, "log": True}}}}
    if kind == "step":
        synthetic["step"] = {"parent": "C", "weight": 0.6, "threshold": 0.03, "height": 0.6, "sharpness": 40}
    elif kind == "groups":
        synthetic["group_importance"] = {"routed_experts": 1.0, "attention": 0.5}
        synthetic["group_targets"]["attention"] = {"A": 0.6, "B": 0.1, "C": 0.3}
        for scope in GROUP_SCOPES:
            groups.setdefault(scope, {"merge_method": "linear", "weights": "simplex"})
    elif kind != "smooth":
        raise ValueError(kind)
    rungs = sorted({max(1, questions // 3), questions})
    data = {"name": f"bench-{kind}",
            "parents": {"base": "A", "models": {"A": "/bench/a", "B": "/bench/b", "C": "/bench/c"}},
            "default": {"merge_method": "linear", "weights": "simplex"}, "groups": groups,
            "objectives": [METRIC, "tokens_mean"] if two_objectives else [METRIC],
            "evaluation": {"runner": "synthetic", "tasks": ["aime24"], "rungs": rungs, "repeats": repeats,
                           "synthetic": synthetic},
            "search": {"start": ["parents", "uniform"], **search}}
    return SearchSpace.from_dict(data, source=f"bench:{kind}", check_paths=False)


@dataclasses.dataclass
class Outcome:
    trials_to_eps: int          # trials until one within EPSILON of the optimum was evaluated (trials + 1: never)
    samples_to_eps: int         # questions answered until then
    regret: float               # optimum − true score of the reported best
    samples: int                # answers drawn in all (confirmation included)
    found: float                # optimum − the true score of the best full-rung trial (what a perfect pick gets)


def run_search(space: SearchSpace, trials: int, asha: bool, confirm: bool) -> Outcome:
    """One search over `space` as a sweep would run it (one trial at a time), scored on its truth."""
    runner = make_runner(space, ".")
    rungs = space.evaluation.rungs
    rf = space.search.reduction_factor
    multi = len(space.objectives) > 1 and not scalarizes(space)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=int(rf)) if asha else None
    starts = [p for _, p in space.start_points()]
    study = optuna.create_study(directions=space.directions if multi else None,
                                direction=None if multi else "maximize", sampler=space.create_sampler(starts),
                                pruner=pruner)
    references = {}
    for label, params in space.start_points():
        study.enqueue_trial(params)
        references[space.candidate(params).recipe_hash] = label
    optimum = runner.best_score()
    answered: dict[tuple, int] = {}     # (recipe hash, repeat indices) → questions answered so far
    rows, samples, to_eps = [], 0, None

    def evaluate(recipe: dict, recipe_hash: str, n: int, repeats: range | None = None) -> dict:
        nonlocal samples
        draws = range(space.evaluation.repeats) if repeats is None else repeats
        key = (recipe_hash, draws.start, draws.stop)
        samples += max(0, n - answered.get(key, 0)) * len(draws)
        answered[key] = max(n, answered.get(key, 0))
        return runner.run(recipe, recipe_hash, n, repeats)

    for number in range(trials):
        trial = study.ask()
        candidate = space.candidate(space.define_by_run(trial))
        baseline = candidate.recipe_hash in references
        state, values, metrics = optuna.trial.TrialState.COMPLETE, None, {}
        for rung, n in enumerate(rungs):
            metrics = evaluate(candidate.recipe, candidate.recipe_hash, n)
            if to_eps is None and runner.true_score(candidate.recipe) >= optimum - EPSILON:
                to_eps = (number + 1, samples)
            if asha and rung < len(rungs) - 1:
                trial.report(_target(space, metrics), step=int(rf ** rung))
                if not baseline and trial.should_prune():
                    state = optuna.trial.TrialState.PRUNED
                    break
        if state == optuna.trial.TrialState.COMPLETE:
            values = [metrics[m] for m in space.metrics] if multi else _target(space, metrics)
            rows.append({"trial": number, "status": "ok", "rung": len(rungs) - 1, "recipe_hash": candidate.recipe_hash,
                         "recipe": candidate.recipe, "reference": references.get(candidate.recipe_hash),
                         **{k: metrics[k] for k in metrics}})
        study.tell(trial, values, state=state)
    on_front = pareto_mask([[r[m] for m in space.metrics] for r in rows], space.directions)
    for row, front in zip(rows, on_front):
        row["pareto"] = front
    if confirm and space.search.confirm_top:
        confirmed = []
        for row in pick_candidates(space, rows):
            n = space.search.confirm_samples
            confirmed.append({**row, **evaluate(row["recipe"], row["recipe_hash"], n, confirmation_repeats(space))})
        decide_best(space, confirmed)
        best = max((r for r in confirmed if r["best"]), key=lambda r: r[METRIC])
    else:
        best = max((r for r in rows if r["pareto"]), key=lambda r: r[METRIC])
    trials_to_eps, samples_to_eps = to_eps or (trials + 1, samples + 1)
    found = optimum - max(runner.true_score(r["recipe"]) for r in rows)
    return Outcome(trials_to_eps, samples_to_eps, optimum - runner.true_score(best["recipe"]), samples, found)


def _target(space: SearchSpace, metrics: dict) -> float:
    return scalarize(space, metrics) if scalarizes(space) else metrics[METRIC]


def trials_for_budget(space: SearchSpace, samples: int) -> int:
    """How many full-rung trials (no ASHA, no confirmation) `samples` answers pay for."""
    return max(1, samples // (space.evaluation.rungs[-1] * space.evaluation.repeats))


# --------------------------------------------------------------------------------------------------
def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--questions", type=int, default=30, help="questions at the last rung")
    parser.add_argument("--repeats", type=int, default=1, help="sampled answers per question (evaluation.repeats)")
    parser.add_argument("--objectives", default="smooth,step,groups")
    parser.add_argument("--samplers", default="random,tpe,cmaes,gp")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import torch  # the GP sampler's; one thread is faster for its small matrices on a shared machine

    torch.set_num_threads(1)
    defaults = objective_space("smooth", args.questions, {}, repeats=args.repeats).search
    print(f"search bench: {args.seeds} seeds, {args.trials} trials, {args.questions} questions at the last rung "
          f"x {args.repeats} answers, "
          f"ε = {EPSILON}; alloy default = {defaults.sampler} + ASHA (rf {defaults.reduction_factor:g}) + confirm "
          f"top {defaults.confirm_top} on {defaults.confirm_samples} samples")
    print(f"{'objective':<8} {'search':<22} {'reached ε':>9} {'trials to ε':>14} {'samples to ε':>18} "
          f"{'regret of best':>21} {'perfect pick':>12} {'samples':>8}")
    for kind in args.objectives.split(","):
        started = time.perf_counter()
        results: dict[str, list[Outcome]] = {}

        def record(name: str, outcome: Outcome) -> None:
            results.setdefault(name, []).append(outcome)

        for seed in range(args.seeds):
            print(f"  {kind}: seed {seed}", file=sys.stderr, flush=True)
            default_space = objective_space(kind, args.questions, {"seed": seed, "trials": args.trials},
                                            repeats=args.repeats)
            default = run_search(default_space, args.trials, asha=True, confirm=True)
            record("alloy default", default)
            cma = objective_space(kind, args.questions, {"sampler": "cmaes", "seed": seed,
                                                          "trials": trials_for_budget(default_space, default.samples)},
                                  repeats=args.repeats)
            record("cmaes, same samples", run_search(cma, cma.search.trials, asha=False, confirm=False))
            for sampler in args.samplers.split(","):
                space = objective_space(kind, args.questions, {"sampler": sampler, "seed": seed, "trials": args.trials},
                                        repeats=args.repeats)
                record(f"{sampler}", run_search(space, args.trials, asha=False, confirm=False))
                record(f"{sampler} + ASHA", run_search(space, args.trials, asha=True, confirm=False))
            nsga = objective_space(kind, args.questions, {"sampler": "nsga2", "seed": seed, "trials": args.trials},
                                   two_objectives=True, repeats=args.repeats)
            record("nsga2 (2 objectives)", run_search(nsga, args.trials, asha=False, confirm=False))
        for name, outcomes in results.items():
            t = quartiles([o.trials_to_eps for o in outcomes])
            s = quartiles([o.samples_to_eps for o in outcomes])
            regrets = [o.regret for o in outcomes]
            reached = sum(o.trials_to_eps <= args.trials for o in outcomes)
            print(f"{kind:<8} {name:<22} {reached:>4}/{len(outcomes):<4} {t[1]:>5.0f} [{t[0]:.0f}–{t[2]:.0f}] "
                  f"{s[1]:>7.0f} [{s[0]:.0f}–{s[2]:.0f}] {statistics.median(regrets):>7.3f} "
                  f"[{min(regrets):.3f}–{max(regrets):.3f}] {statistics.median(o.found for o in outcomes):>12.3f} "
                  f"{statistics.median(o.samples for o in outcomes):>8.0f}", flush=True)
        for sampler in args.samplers.split(","):
            both = [(a.samples_to_eps, b.samples_to_eps) for a, b in zip(results[sampler], results[f"{sampler} + ASHA"])
                    if a.trials_to_eps <= args.trials and b.trials_to_eps <= args.trials]
            ratio = (f"{statistics.median(a for a, _ in both) / statistics.median(b for _, b in both):.2f} "
                     f"over the {len(both)} seeds where both reached ε" if both else "n/a (never both reached ε)")
            total = (statistics.median(o.samples for o in results[sampler])
                     / statistics.median(o.samples for o in results[f"{sampler} + ASHA"]))
            print(f"{kind:<8} ASHA ratio {sampler}: samples to ε without / with ASHA = {ratio}; total samples {total:.2f}")
        ours = statistics.median(o.regret for o in results["alloy default"])
        theirs = statistics.median(o.regret for o in results["cmaes, same samples"])
        print(f"{kind:<8} regret ratio alloy default / plain cmaes at the same samples = "
              f"{ours / theirs if theirs else float('inf'):.2f}  ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
