"""One driver per sweep: the folder lock and the study lease refuse a second driver naming the first,
and a killed driver's lock or lease is taken over. Embedded Rays on one machine start in turn."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest

from alloy.errors import AlloyError
from alloy.search.lock import LOCK_FILE, FolderLock, Holder, StudyLease, driver_lock

HOLD = """
import sys, time
from alloy.search.lock import driver_lock
with driver_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_child(folder) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_folder_lock_names_the_holder_and_is_taken_over_after_a_kill(tmp_path):
    child = hold_in_child(tmp_path)
    try:
        with pytest.raises(AlloyError, match=rf"being driven by pid {child.pid} on {socket.gethostname()}, started "
                                             rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"):
            with driver_lock(tmp_path):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert str(child.pid) in (tmp_path / LOCK_FILE).read_text()      # the dead holder's record is still there
    with driver_lock(tmp_path) as me:                                # ... and the lock is free: taken over
        assert str(me.pid) in (tmp_path / LOCK_FILE).read_text()
        with pytest.raises(AlloyError, match=f"pid {os.getpid()}"):  # one driver per folder, even in one process
            FolderLock(tmp_path).acquire(Holder.me())


def storage(path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def test_study_lease_refuses_a_second_driver_and_takes_over_stale_ones(tmp_path, monkeypatch):
    db = tmp_path / "shared.db"
    first = StudyLease(storage(db), "alloy")
    first.acquire(Holder.me())
    try:
        other = Holder("gpu-node-7", 4242, time.time(), "t", time.time())
        with pytest.raises(AlloyError, match=f"study 'alloy' in .*shared.db is being driven by pid {os.getpid()}"):
            StudyLease(storage(db), "alloy").acquire(other)
    finally:
        first.release()
    with pytest.raises(KeyError):                                  # released: the lease study is gone
        storage(db).get_study_id_from_name("alloy:driver")

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = Holder(socket.gethostname(), int(dead.stdout), time.time(), "g", time.time())
    StudyLease(storage(db), "alloy")._create(ghost)               # a driver on this host that died holding it
    taker = StudyLease(storage(db), "alloy")
    taker.acquire(Holder.me())
    taker.release()

    remote = Holder("gpu-node-7", 4242, time.time() - 600, "r", time.time() - 120)
    assert remote.is_stale()                                      # no heartbeat for longer than the TTL
    StudyLease(storage(db), "alloy")._create(remote)
    lease = StudyLease(storage(db), "alloy")
    lease.acquire(Holder.me())
    lease.release()

    monkeypatch.setattr("alloy.search.lock.LEASE_RENEW_S", 0.2)   # the heartbeat keeps a live lease fresh
    live = StudyLease(storage(db), "alloy")
    live.acquire(Holder.me())
    try:
        time.sleep(1.0)
        _, seen = live._read()
        assert time.time() - seen.renewed < 0.8 and not seen.is_stale()
    finally:
        live.release()


def test_a_sweep_on_a_study_another_machine_drives_is_refused_before_anything_is_written(tmp_path):
    from alloy.search.sweep import run_sweep
    from tests.spaces import write_space

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    elsewhere = Holder("gpu-node-7", 4242, time.time(), "x", time.time())
    assert StudyLease(storage(tmp_path / "shared.db"), "alloy")._create(elsewhere)  # its lease is fresh
    out = tmp_path / "mine"
    with pytest.raises(AlloyError, match="study 'alloy' in .*shared.db is being driven by pid 4242 on gpu-node-7"):
        run_sweep(write_space(tmp_path), out, storage=url)
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]           # no half-made sweep to block a retry


START = """
import pathlib, sys, time
from alloy.workers import local_ray
local_ray.START_LOCK = pathlib.Path(sys.argv[1])
print("waiting", flush=True)
with local_ray.start_lock():
    print(time.time(), flush=True)
"""


def test_embedded_ray_starts_take_turns_and_a_dead_holders_turn_ends(tmp_path, monkeypatch):
    from alloy.workers import local_ray

    lock = tmp_path / "start.lock"
    monkeypatch.setattr(local_ray, "START_LOCK", lock)
    with local_ray.start_lock():
        child = subprocess.Popen([sys.executable, "-c", START, str(lock)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(1.0)
        assert child.poll() is None  # its Ray start waits for this one's
        released = time.time()
    assert float(child.stdout.readline()) >= released
    assert child.wait(timeout=60) == 0

    holder = subprocess.Popen([sys.executable, "-c", START.replace("print(time.time(), flush=True)",
                                                                   "print('held', flush=True); time.sleep(600)"),
                               str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "waiting" and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    after = subprocess.run([sys.executable, "-c", START, str(lock)], capture_output=True, text=True, timeout=60)
    assert after.returncode == 0 and after.stdout.splitlines()[0] == "waiting"  # the killed holder's turn ended with it
