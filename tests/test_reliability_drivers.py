"""Sweep drivers as separate processes (the synthetic runner, seconds per run): two drivers started at
once on one folder, a --resume against a live driver, Ctrl-C, a resume after the leaderboard file was
corrupted, and no Ray process left behind by a driver stopped with SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from tests.processes import descendants, gone, runs_ray
from tests.spaces import space_dict, write_space

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
State = optuna.trial.TrialState
pytestmark = pytest.mark.slow


def sweep_space(tmp_path: Path, trials: int, seconds_per_sample: float) -> Path:
    """Trials of 28 samples each (no pruning), two at a time; the best one confirmed on 20 samples."""
    data = space_dict()
    data["evaluation"]["synthetic"]["seconds_per_sample"] = seconds_per_sample
    data["search"] = {"sampler": "tpe", "seed": 1, "trials": trials, "concurrency": 2, "resources": {"cpu": 1},
                      "prune": False, "confirm": {"top": 1, "samples": 20}}
    return write_space(tmp_path, data)


def driver(space: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "alloy.cli", "sweep", str(space), "--out", str(out), "--num-cpus", "2", *extra]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=ENV, start_new_session=True)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def finished_rows(out: Path) -> int:
    try:
        rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    except (OSError, ValueError):
        return 0
    return sum(r["status"] in ("ok", "pruned", "failed") for r in rows if r["latest"])


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --------------------------------------------------------------------------------------------------
@pytest.mark.timeout(420)
def test_one_driver_per_sweep_ctrl_c_and_resume(tmp_path):
    trials = 8
    space = sweep_space(tmp_path, trials, seconds_per_sample=0.1)     # about 11 s of trials
    out = tmp_path / "sweep"
    a = driver(space, out, tmp_path / "a.log")
    b = driver(space, out, tmp_path / "b.log")                    # started at the same moment
    drivers = [a, b]
    try:
        wait_for(lambda: any(p.poll() is not None for p in drivers), 120, "one of two drivers to be refused")
        loser = next(p for p in drivers if p.poll() is not None)
        winner = next(p for p in drivers if p is not loser)
        log = (tmp_path / ("a.log" if loser is a else "b.log")).read_text()
        assert loser.returncode == 2, log
        assert (f"being driven by pid {winner.pid}" in log or "is not empty; pass --resume" in log), log

        c = driver(space, out, tmp_path / "c.log", "--resume")    # resume against the live driver
        assert c.wait(timeout=120) == 2
        assert f"this sweep is being driven by pid {winner.pid}" in (tmp_path / "c.log").read_text()

        wait_for(lambda: finished_rows(out) >= 1, 180, "the first finished trial")
        assert winner.poll() is None
        os.killpg(winner.pid, signal.SIGINT)                      # Ctrl-C in the driver's terminal
        assert winner.wait(timeout=120) == 130
        log = (tmp_path / ("b.log" if loser is a else "a.log")).read_text()
        assert "sweep stopped after" in log and f"--out {out} --resume" in log and "sweep finished" not in log
    finally:
        for p in drivers:
            kill_group(p)

    (out / "leaderboard.parquet").write_text("corrupted")
    resumed = subprocess.run([sys.executable, "-m", "alloy.cli", "sweep", str(space), "--out", str(out),
                              "--num-cpus", "2", "--resume"], capture_output=True, text=True, cwd=REPO, env=ENV,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    study = optuna.load_study(study_name="alloy", storage=f"sqlite:///{out / 'study.db'}")
    numbers = sorted(t.number for t in study.get_trials())
    assert numbers == list(range(trials))                          # the budget, none twice, none lost
    assert all(t.state in (State.COMPLETE, State.PRUNED) for t in study.get_trials())
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert len(rows) == len({(r["trial"], r["rung"]) for r in rows})
    assert sorted(r["trial"] for r in rows if r["latest"]) == numbers
    for t in study.get_trials():                                    # rows and study agree
        latest = next(r for r in rows if r["trial"] == t.number and r["latest"])
        assert latest["status"] == {State.COMPLETE: "ok", State.PRUNED: "pruned"}[t.state]
        if t.state == State.COMPLETE:
            assert t.value == latest["aime24/exact_match"]


@pytest.mark.timeout(300)
def test_a_stopped_driver_leaves_no_ray_process(tmp_path):
    """SIGTERM to the driver alone; a driver killed with SIGKILL is tests/test_sweep.py's kill-and-resume."""
    space = sweep_space(tmp_path, trials=50, seconds_per_sample=0.1)
    proc = driver(space, tmp_path / "sweep", tmp_path / "driver.log")
    try:
        # a running sweep: Ray is up (during ray.init, Ray's own handler exits with status 15)
        wait_for(lambda: runs_ray(descendants(proc.pid)) and (tmp_path / "sweep" / "leaderboard.parquet").is_file(),
                 180, "the embedded Ray's agents and a first result")
        ray_processes = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)                            # the driver alone, not its group
        # 143 from alloy's handler, or 1 when it lands inside Ray Tune's loop, which turns it into a failed
        # run; either way the embedded Ray is shut down
        assert proc.wait(timeout=120) in (128 + signal.SIGTERM, 1), (tmp_path / "driver.log").read_text()[-2000:]
        left = gone(ray_processes, timeout=60)
        assert not left, [(p.pid, p.name()) for p in left]
    finally:
        kill_group(proc)


SWALLOWED_SIGTERM = """
import os, signal, time
from alloy.workers import local_ray
local_ray.SIGTERM_DEADLINE_S = 1.0
signal.signal(signal.SIGTERM, local_ray._exit_on_sigterm)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except SystemExit:
    pass  # swallowed where it landed, as a finalizer or a callback would
time.sleep(60)
"""


def test_a_driver_whose_sigterm_exit_is_swallowed_still_exits():
    """SIGTERM's SystemExit can land where it is swallowed; the driver then exits with 143 at its deadline."""
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", SWALLOWED_SIGTERM], capture_output=True, text=True, timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-2000:]
    assert time.monotonic() - started < 30
