"""The sweep's worker pool: children built in memory by long-lived workers and scored with lm-eval.

Before the search starts, `prepare` loads the parents into the sweep's store actors and starts one
`CandidateWorker` per concurrent trial (with the trial resources of `PoolSettings`: a GPU, or CPU
slots). A worker holds a `ChildBuilder` (one resident model) and a `RungEvaluator` on that model, so
a trial never reloads parents or allocates a model: it leases a worker from the sweep's pool, which
rebuilds its model in place when the recipe changes and scores only the documents the rung adds.
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

POOL_NAMESPACE = "alloy"

# handles of the pools (and their workers and resources) this driver started: a named actor lives only while a handle
# to it exists, and the workers should die with the driver that owns the sweep (a resumed sweep starts
# new ones)
_LIVE_POOLS: dict[str, tuple[Any, list, Any]] = {}  # sweep -> (pool, workers, placement group)

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
    the `RungEvaluator`'s tasks and keyword options; cpu and gpu: each worker's resources;
    concurrency: how many workers.
    """

    sweep: str
    models: dict[str, str]
    base: str | None
    tasks: tuple[str, ...]
    options: dict[str, Any]
    cpu: float
    gpu: float
    concurrency: int


class CandidateWorker:
    """A resident child model and its evaluator (run as a Ray actor, one per GPU or CPU slot)."""

    def __init__(self, sweep: str, evaluation: dict, device: str):
        from transformers import AutoTokenizer

        from alloy.workers.builder import ChildBuilder
        from alloy.evaluation.harness import RungEvaluator

        self.builder = ChildBuilder(sweep, device=device, dtype="bfloat16" if device.startswith("cuda") else "float32")
        tokenizer = AutoTokenizer.from_pretrained(self.builder.template.path)
        self.evaluator = RungEvaluator(self.builder.model, tokenizer, evaluation["tasks"], **evaluation["options"])

    def score(self, recipe: dict, recipe_hash: str, n_samples: int) -> dict[str, float]:
        """Build `recipe` (unless it is the resident child) and score it on the first n_samples docs."""
        merge_s = 0.0
        if self.builder.current != recipe_hash:
            merge_s = self.builder.build(recipe).seconds
        start = time.perf_counter()
        result = self.evaluator.score(recipe_hash, n_samples)
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
    try:
        ray.get_actor(_pool_name(sweep), namespace=POOL_NAMESPACE)
        return
    except ValueError:
        pass
    what = f"sweep {sweep!r}: search.resources of its {settings.concurrency} workers"
    request = {"CPU": settings.cpu, "GPU": settings.gpu}
    check_placement(request, settings.concurrency, what, placement_timeout_s)
    start_stores(sweep, settings.models, base=settings.base)
    group = reserve(request, settings.concurrency, what, placement_timeout_s, _pool_name(sweep))
    evaluation = {"tasks": list(settings.tasks), "options": settings.options}
    device = "cuda" if settings.gpu > 0 else "cpu"
    worker_cls = ray.remote(num_cpus=settings.cpu, num_gpus=settings.gpu, max_restarts=1)(CandidateWorker)
    workers = [worker_cls.options(scheduling_strategy=None if group is None else PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=i)).remote(sweep, evaluation, device) for i in range(settings.concurrency)]
    _LIVE_POOLS[sweep] = (None, workers, group)
    ray.get([w.__ray_ready__.remote() for w in workers])  # resources held: start-up takes what it takes
    pool = ray.remote(num_cpus=0)(WorkerPool).options(name=_pool_name(sweep), namespace=POOL_NAMESPACE).remote(workers)
    ray.get(pool.__ray_ready__.remote())
    _LIVE_POOLS[sweep] = (pool, workers, group)


def stop(sweep: str, keep_stores: bool = False) -> list[str]:
    """Stop a sweep's pool, its workers and (unless `keep_stores`) its parent stores, wherever they run;
    return what was stopped."""
    from alloy.workers.store import stop_stores

    from ray.util.placement_group import get_placement_group, remove_placement_group

    stopped = []
    pool, workers, group = _LIVE_POOLS.pop(sweep, (None, [], None))
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
    with contextlib.suppress(ValueError):
        group = group or get_placement_group(_pool_name(sweep))
    if group is not None:
        remove_placement_group(group)
    return stopped if keep_stores else stopped + stop_stores(sweep)


class LmEvalRunner:
    """Scores candidates on the sweep's workers (the `lm_eval` runner of a search space)."""

    def __init__(self, sweep: str):
        try:
            self.pool = ray.get_actor(_pool_name(sweep), namespace=POOL_NAMESPACE)
        except ValueError:
            raise AlloyError(f"no workers are running for sweep {sweep!r}; `alloy sweep` starts them") from None

    def run(self, recipe: dict, recipe_hash: str, n_samples: int) -> dict[str, float]:
        worker = ray.get(self.pool.acquire.remote())
        try:
            return ray.get(worker.score.remote(recipe, recipe_hash, n_samples))
        finally:
            self.pool.release.remote(worker)
