"""One driver per sweep: an OS file lock on the sweep folder, and a lease in the study storage.

The file lock (`flock` on `<sweep>/.driver.lock`) keeps a second `alloy sweep` or `--resume` out of a
folder whose driver is alive; the operating system drops it when the driver dies, however it dies, so
a killed driver's lock is simply taken over. The file records the holder (host, pid, start time) for
the refusal message.

A study storage that is not the folder's own SQLite file may be shared by drivers on several machines
(each with its own folder). For it the driver also holds a lease: a study named `<study>:driver` in
that storage, created atomically (a second create fails), holding the holder's host, pid, start time
and a heartbeat renewed every `LEASE_RENEW_S`. A lease whose heartbeat is older than `LEASE_TTL_S`,
or whose holder is a dead process on this host, is stale and is taken over.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from alloy.errors import AlloyError

LOCK_FILE = ".driver.lock"
LEASE_SUFFIX = ":driver"
LEASE_RENEW_S = 10.0
LEASE_TTL_S = 60.0
_LEASE_KEY = "holder"


@dataclass(frozen=True)
class Holder:
    """Who drives a sweep."""

    host: str
    pid: int
    started: float
    token: str = ""
    renewed: float = 0.0

    @classmethod
    def me(cls) -> "Holder":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, uuid.uuid4().hex, now)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {started}"

    def is_stale(self, now: float | None = None) -> bool:
        """Whether this holder is gone: a dead process on this host, or a heartbeat older than the TTL."""
        if self.host == socket.gethostname() and not _alive(self.pid):
            return True
        return (now or time.time()) - self.renewed > LEASE_TTL_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_from(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
class FolderLock:
    """An exclusive `flock` on a sweep folder's lock file, held until `release` (or the process ends)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, holder: Holder) -> None:
        """Take the lock or raise AlloyError naming the driver that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _holder_from(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            who = other.describe() if other else "another process"
            raise AlloyError(f"{self.path.parent}: this sweep is being driven by {who}; wait for it to finish or "
                             f"stop it (Ctrl-C) before starting or resuming it again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays; its content is the last holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------------------------------
class StudyLease:
    """A lease on a study, kept in its storage as the study `<study_name>:driver` and renewed by a thread."""

    def __init__(self, storage: Any, study_name: str):
        self.storage = storage
        self.name = study_name + LEASE_SUFFIX
        self._holder: Holder | None = None
        self._study_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, holder: Holder) -> None:
        """Take the lease (taking over a stale one) or raise AlloyError naming its live holder."""
        for _ in range(3):
            current = self._read()
            if current is not None:
                study_id, other = current
                if other is None:           # created a moment ago, holder not yet written
                    time.sleep(1.0)
                    current = self._read()
                    if current is None or current[1] is not None:
                        continue
                elif not other.is_stale():
                    raise AlloyError(f"study {self.name[:-len(LEASE_SUFFIX)]!r} in {self._url()} is being driven "
                                     f"by {other.describe()}; one driver per study")
                with contextlib.suppress(KeyError):
                    self.storage.delete_study(study_id)
            if self._create(holder):
                break
        else:
            raise AlloyError(f"study {self.name[:-len(LEASE_SUFFIX)]!r} in {self._url()}: another driver is "
                             f"taking it at this moment; one driver per study")
        self._thread = threading.Thread(target=self._renew, name="alloy-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease, when it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and self._holder and current[1] and current[1].token == self._holder.token:
            with contextlib.suppress(KeyError):
                self.storage.delete_study(current[0])

    def _create(self, holder: Holder) -> bool:
        import optuna

        try:
            self._study_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.name)
        except optuna.exceptions.DuplicatedStudyError:
            return False
        self._holder = holder
        self.storage.set_study_user_attr(self._study_id, _LEASE_KEY, asdict(holder))
        return True

    def _read(self) -> tuple[int, Holder | None] | None:
        try:
            study_id = self.storage.get_study_id_from_name(self.name)
        except KeyError:
            return None
        try:
            raw = self.storage.get_study_user_attrs(study_id).get(_LEASE_KEY)
        except KeyError:
            return None
        return study_id, (Holder(**raw) if raw else None)

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            holder = Holder(**{**asdict(self._holder), "renewed": time.time()})
            with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                self.storage.set_study_user_attr(self._study_id, _LEASE_KEY, asdict(holder))
                self._holder = holder

    def _url(self) -> str:
        return str(getattr(getattr(self.storage, "engine", None), "url", "the study storage"))


@contextlib.contextmanager
def driver_lock(folder: str | Path) -> Iterator[Holder]:
    """Hold the folder lock of a sweep for the duration of the block (AlloyError when held)."""
    holder = Holder.me()
    lock = FolderLock(folder)
    lock.acquire(holder)
    try:
        yield holder
    finally:
        lock.release()
