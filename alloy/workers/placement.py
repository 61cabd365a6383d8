"""Whether a sweep's workers can be placed, decided before anything waits on them.

A request (`{"CPU": 8, "GPU": 1}` per worker, `count` workers) is compared with the alive nodes of the
cluster and with the node types the autoscaler may add (from the GCS's cluster config, else the
cluster launcher's `~/ray_bootstrap_config.yaml` on the head node). What no node and no node type can
ever hold is refused at once; what only new nodes can hold is waited for, up to a timeout, with a
message saying what did not come up. `reserve` then holds the workers' resources in a placement group
(again with a timeout), so that the wait for resources is bounded and the workers' own start-up
(loading a model) is not.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import ray

from alloy.errors import AlloyError

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()
POLL_S = 2.0


def node_resources() -> list[dict[str, float]]:
    """The total resources of each alive node."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def autoscaler_node_types(bootstrap: Path = BOOTSTRAP_CONFIG) -> list[tuple[dict[str, float], float]]:
    """(resources, max nodes) of each node type the autoscaler may start; [] without an autoscaler."""
    types = _gcs_node_types()
    if types or not bootstrap.is_file():
        return types
    import yaml

    config = yaml.safe_load(bootstrap.read_text()) or {}
    head = config.get("head_node_type")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        count = 1 if name == head else spec.get("max_workers", config.get("max_workers", 0))
        if count:
            out.append(({k: float(v) for k, v in (spec.get("resources") or {}).items()}, float(count)))
    return out


def _gcs_node_types() -> list[tuple[dict[str, float], float]]:
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the call: no node types known
        return []
    if config is None:
        return []
    return [({k: float(v) for k, v in g.resources.items()}, math.inf if g.max_count == -1 else float(g.max_count))
            for g in config.node_group_configs if g.max_count != 0]


def fits(request: Mapping[str, float], resources: Mapping[str, float]) -> int:
    """How many copies of `request` one node with `resources` holds."""
    wanted = {k: v for k, v in request.items() if v > 0}
    if not wanted:
        return 1 << 30
    return min(int(resources.get(k, 0.0) // v) for k, v in wanted.items())


def check_placement(request: Mapping[str, float], count: int, what: str, timeout_s: float,
                    node_types: Sequence[tuple[dict[str, float], float]] | None = None) -> None:
    """Refuse (AlloyError) `count` × `request` when the cluster can never hold them; wait up to
    `timeout_s` for the autoscaler when only nodes it has yet to start can."""
    node_types = autoscaler_node_types() if node_types is None else node_types
    nodes = node_resources()
    now = sum(fits(request, n) for n in nodes)
    later = sum(fits(request, r) * m for r, m in node_types)
    wanted = _describe(request)
    if now + later < count:
        largest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in request), default={})
        have = _describe({k: largest.get(k, 0.0) for k in request})
        scaler = (f"; the autoscaler's node types hold {later:g}" if node_types else "; there is no autoscaler")
        raise AlloyError(f"{what}: {count} × {{{wanted}}} can never be placed: the largest node has {{{have}}} "
                         f"and the {len(nodes)} node(s) hold {now}{scaler}. Lower search.resources or "
                         f"search.concurrency, or add nodes that have them")
    deadline = time.monotonic() + timeout_s
    while now < count:
        if time.monotonic() > deadline:
            raise AlloyError(f"{what}: {count} × {{{wanted}}} did not come up within {timeout_s:g} s (the nodes "
                             f"up now hold {now}); the autoscaler may be out of capacity. Wait longer with "
                             f"--placement-timeout, or lower search.resources")
        time.sleep(POLL_S)
        now = sum(fits(request, n) for n in node_resources())


def reserve(request: Mapping[str, float], count: int, what: str, timeout_s: float, name: str,
            strategy: str = "PACK"):
    """A placement group of `count` bundles of `request`, once Ray holds them; AlloyError naming `what`
    when it does not within `timeout_s` (the group is removed). None when the request is empty."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {k: float(v) for k, v in request.items() if v > 0}
    if not bundle:
        return None
    group = placement_group([dict(bundle) for _ in range(count)], name=name, strategy=strategy)
    if not group.wait(timeout_seconds=timeout_s):
        remove_placement_group(group)
        raise AlloyError(f"{what}: {count} × {{{_describe(request)}}} could not be reserved within {timeout_s:g} s "
                         f"(free now: {_describe(ray.available_resources())}); wait longer with "
                         f"--placement-timeout, or lower search.resources or search.concurrency")
    return group


def _describe(request: Mapping[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in request] or list(request)
    return ", ".join(f"{k.lower()}: {request[k]:g}" for k in keys if request[k] > 0) or "nothing"
