"""What scores one candidate of a sweep: the `CandidateRunner` protocol and the registry the sweep
picks a runner from (`evaluation.runner` in the search space): `synthetic` (alloy.search.synthetic)
or `lm_eval` (the workers of alloy.workers.pool, given plain settings made from the space here).

A runner turns (recipe, recipe hash, sample count, repeat indices) into metrics: every objective's
metric, the output-token statistics, `merge_s` and `eval_s`. It raises for a candidate that cannot be built or
evaluated; the sweep records that trial as failed and goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from alloy.errors import AlloyError
from alloy.search.space import SearchSpace, is_token_metric
from alloy.search.synthetic import SyntheticOptions, SyntheticRunner


class CandidateRunner(Protocol):
    """Builds and scores one candidate."""

    def run(self, recipe: dict, recipe_hash: str, n_samples: int, repeats: range | None = None) -> dict[str, float]:
        """Metrics of the candidate evaluated on `n_samples` questions, each answered once per repeat
        index in `repeats` (default: the search's, `range(evaluation.repeats)`); raises when it cannot."""
        ...


def _synthetic(space: SearchSpace, sweep_dir: Path) -> CandidateRunner:
    options = SyntheticOptions.from_dict(space.evaluation.synthetic, space.labels,
                                         f"{space.source}: evaluation.synthetic")
    return SyntheticRunner([m for m in space.metrics if not is_token_metric(m)], options, space.evaluation.repeats)


def pool_settings(space: SearchSpace, sweep_dir: str | Path) -> Any:
    """The plain settings the sweep's worker pool needs (alloy.workers.pool.PoolSettings)."""
    from alloy.workers.pool import PoolSettings, sweep_id

    ev = space.evaluation
    options: dict[str, Any] = {"max_gen_toks": ev.max_gen_toks or 2048, "repeats": ev.repeats, "seed": space.search.seed,
                               "data_dir": ev.data_dir, "max_thinking_tokens": ev.thinking_budget,
                               "batch_size": ev.batch_size}
    options.update(ev.generation)  # e.g. allow_code_execution: true, the opt-in LiveCodeBench needs
    return PoolSettings(sweep=sweep_id(space.name, sweep_dir), models={path: path for _, path in space.models},
                        base=space.base, tasks=tuple(ev.tasks), options=options, cpu=space.search.cpu,
                        gpu=space.search.gpu, stages=space.search.stages, concurrency=space.search.concurrency,
                        backend=ev.backend)


# evaluation.runner name → factory(space, sweep folder) -> CandidateRunner
def _lm_eval(space: SearchSpace, sweep_dir: Path) -> CandidateRunner:
    from alloy.workers.pool import LmEvalRunner

    return LmEvalRunner(pool_settings(space, sweep_dir).sweep)


def _lm_eval_setup(space: SearchSpace, sweep_dir: Path, placement_timeout_s: float) -> None:
    from alloy.workers.pool import prepare

    prepare(pool_settings(space, sweep_dir), placement_timeout_s)


def _lm_eval_host_check(space: SearchSpace) -> None:
    from alloy.evaluation.harness import TaskSuite
    from alloy.sandbox import check_sandbox

    ev = space.evaluation
    allowed = bool(ev.generation.get("allow_code_execution"))
    suite = TaskSuite.resolve(ev.tasks, data_dir=ev.data_dir, allow_code_execution=allowed)
    if any(spec.get("unsafe_code") for spec in suite.specs.values()):
        check_sandbox(allowed)


def _lm_eval_teardown(space: SearchSpace, sweep_dir: Path, keep_store: bool) -> list[str]:
    from alloy.workers.pool import stop

    return stop(pool_settings(space, sweep_dir).sweep, keep_stores=keep_store)


RUNNERS: dict[str, Callable[[SearchSpace, Path], CandidateRunner]] = {
    "synthetic": _synthetic,
    "lm_eval": _lm_eval,
}


# evaluation.runner name → host_check(space), run in the driver before an embedded Ray starts: what the
# workers will need of this machine (the tasks, their data files, the sandbox a code task runs in)
RUNNER_HOST_CHECK: dict[str, Callable[[SearchSpace], None]] = {"lm_eval": _lm_eval_host_check}
# evaluation.runner name → setup(space, sweep folder, placement timeout) run once by the driver after Ray
# starts and before the first trial (e.g. to load parents and start long-lived workers), and the
# teardown(space, sweep folder, keep_store) → names of what it stopped, run when the sweep ends
RUNNER_SETUP: dict[str, Callable[[SearchSpace, Path, float], None]] = {"lm_eval": _lm_eval_setup}
RUNNER_TEARDOWN: dict[str, Callable[[SearchSpace, Path, bool], list[str]]] = {"lm_eval": _lm_eval_teardown}
DEFAULT_PLACEMENT_TIMEOUT_S = 600.0

# runners whose setup starts long-lived workers that hold the trial resources (GPUs, CPU slots) of the
# search space; their Tune trials only lease a worker, so they take no CPU or GPU (Ray needs some
# resource in a request: a MiB of memory)
POOLED_RUNNERS = ("lm_eval",)


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """What one Tune trial asks Ray for: the space's resources, or (pooled runners) none of its own."""
    if space.evaluation.runner in POOLED_RUNNERS:
        return {"cpu": 0, "gpu": 0, "memory": 2**20}
    return {"cpu": space.search.cpu, "gpu": space.search.gpu}


def check_host(space: SearchSpace) -> None:
    """AlloyError, before any work, when this machine cannot run the space's trials (for an embedded
    Ray, whose workers run here): an unknown task, a missing data file, code tasks without the opt-in or
    the sandbox."""
    check = RUNNER_HOST_CHECK.get(space.evaluation.runner)
    if check is not None:
        check(space)


def prepare_runner(space: SearchSpace, sweep_dir: str | Path,
                   placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S) -> None:
    """Check that the cluster can hold the trials' resources, then run the setup of the space's runner,
    when it has one (in the driver, with Ray started). AlloyError on resources never to be had, or not
    had within `placement_timeout_s`."""
    setup = RUNNER_SETUP.get(space.evaluation.runner)
    if setup is not None:
        setup(space, Path(sweep_dir), placement_timeout_s)
        return
    from alloy.workers.placement import check_placement

    check_placement({"CPU": space.search.cpu, "GPU": space.search.gpu}, 1, f"{space.source}: search.resources",
                    placement_timeout_s)


def teardown_runner(space: SearchSpace, sweep_dir: str | Path, keep_store: bool = False) -> list[str]:
    """Stop what the runner's setup started (workers, pool and, unless `keep_store`, the parent
    stores); return the names of what was stopped."""
    teardown = RUNNER_TEARDOWN.get(space.evaluation.runner)
    return teardown(space, Path(sweep_dir), keep_store) if teardown is not None else []


def check_runner(space: SearchSpace) -> None:
    """AlloyError when the space names a runner alloy does not have."""
    if space.evaluation.runner not in RUNNERS:
        raise AlloyError(f"{space.source}: evaluation.runner: unknown runner '{space.evaluation.runner}'; "
                         f"known: {sorted(RUNNERS)}")


def make_runner(space: SearchSpace, sweep_dir: str | Path) -> CandidateRunner:
    """The runner the search space names (`evaluation.runner`), for the sweep in `sweep_dir`."""
    check_runner(space)
    return RUNNERS[space.evaluation.runner](space, Path(sweep_dir))
