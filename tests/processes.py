"""The processes a driver leaves: its descendants (`alloy.workers.local_ray.descendants`), whether they hold
an embedded Ray, which outlive a wait."""
from __future__ import annotations

import psutil

from alloy.workers import local_ray


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` (none once it is gone)."""
    return list(local_ray.descendants(pid).values())


def runs_ray(processes: list[psutil.Process]) -> bool:
    """Whether `processes` hold an embedded Ray's raylet and its node agents."""
    names = set()
    for p in processes:
        try:
            names.add(p.name())
        except psutil.NoSuchProcess:
            pass
    return any("Agent" in n for n in names) and any("raylet" in n for n in names)


def gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for `processes` to end; return those still alive."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive
