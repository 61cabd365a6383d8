"""Ray for a driver (a sweep, a branch run, the demo): an embedded Ray that goes away with its driver,
or a connection to a cluster.

`ray_session("local")` starts Ray inside the driver process and shuts it down on the way out,
including on SIGTERM (turned into `SystemExit(143)` while the session is open, so `finally` blocks
run; where that exception is swallowed, in a finalizer or a callback that only prints what it raised,
the driver exits with 143 anyway `SIGTERM_DEADLINE_S` later, and the reaper stops what is left). A driver killed outright (SIGKILL, OOM) cannot clean up after itself, and Ray's node agents
(`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) outlive their raylet. So the embedded session also
starts a reaper, `python -m alloy.workers.local_ray PID`, in its own session: it keeps the list of the
driver's descendant processes and, once the driver is gone, terminates those still alive.

Embedded Rays that start at the same moment on one machine take turns (`start_lock`): a raylet that
does not register within Ray's fixed 30 s fails its driver, and on a small, busy machine several
starting at once can take that long.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

REAPER_POLL_S = 1.0
TERM_GRACE_S = 5.0
# How long a driver given SIGTERM has to shut down before it exits without finishing (see the module doc).
SIGTERM_DEADLINE_S = 60.0
START_LOCK = Path(tempfile.gettempdir()) / "alloy-ray-start.lock"


@contextlib.contextmanager
def start_lock() -> Iterator[None]:
    """Hold the machine-wide lock under which an embedded Ray starts (released if the holder dies)."""
    try:
        handle = open(START_LOCK, "a")
    except OSError:  # another user's lock file: start without taking turns
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def ray_session(address: str = "local", num_cpus: int | None = None) -> Iterator[bool]:
    """Start (address "local") or join a Ray cluster unless Ray is already up; yield whether this
    call started it. On exit (normal, error, Ctrl-C or SIGTERM) a Ray this call started is shut down."""
    import ray

    if ray.is_initialized():
        yield False
        return
    reaper = None
    before = set(descendants(os.getpid()))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        if address == "local":
            reaper = start_reaper(os.getpid())
            with start_lock():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        # after ray.init, whose core worker installs a SIGTERM handler that aborts the process
        with contextlib.suppress(ValueError):  # not the main thread: Ray's own handling applies
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        yield True
    finally:
        try:
            ray.shutdown()
            if address == "local":  # agents that outlived the raylet
                stop_processes([p for pid, p in descendants(os.getpid()).items() if pid not in before])
        finally:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)
            if reaper is not None:
                reaper.terminate()
                reaper.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    deadline = threading.Timer(SIGTERM_DEADLINE_S, os._exit, args=(128 + signum,))
    deadline.daemon = True
    deadline.start()
    raise SystemExit(128 + signum)


def start_reaper(pid: int) -> subprocess.Popen:
    """Start the process that cleans up after driver `pid` if it dies without shutting Ray down."""
    return subprocess.Popen([sys.executable, "-m", "alloy.workers.local_ray", str(pid)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reap_after(pid: int) -> list[int]:
    """Watch `pid` and its descendants; when it dies, terminate the descendants still alive (SIGTERM,
    then SIGKILL after TERM_GRACE_S). Returns the pids it had to stop. Ends early on SIGTERM (the driver
    shut Ray down itself)."""
    import psutil

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    known: dict[int, psutil.Process] = {}
    me = os.getpid()  # a child of the driver too
    while _running(driver):
        known.update({child: p for child, p in descendants(pid).items() if child not in known and child != me})
        time.sleep(REAPER_POLL_S)
    alive = [p for p in known.values() if p.is_running()]  # is_running also compares the start time
    stop_processes(alive)
    return [p.pid for p in alive]


def stop_processes(processes: list) -> None:
    """SIGTERM the given psutil processes, then SIGKILL those still alive after TERM_GRACE_S."""
    import psutil

    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, still = psutil.wait_procs(processes, timeout=TERM_GRACE_S)
    for p in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def descendants(pid: int) -> dict:
    """Every process below `pid`, by pid (none once it is gone)."""
    import psutil

    try:
        return {c.pid: c for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    reap_after(int(sys.argv[1]))
