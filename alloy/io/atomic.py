"""Outputs that appear whole or not at all: write under a temporary name, then rename."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from alloy.errors import AlloyError


# errno → what to tell the user when writing an output fails for that reason
_WRITE_ERRORS = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device",
                 errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EFBIG: "the file is larger than the system allows"}


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early when `out` exists and may not be replaced, or is a file (never replaced by a folder)."""
    if out.is_file() or (out.is_symlink() and not out.is_dir()):
        raise AlloyError(f"output {out} is a file, not a folder; give a folder path (alloy never replaces a file "
                         f"with a checkpoint folder)")
    if out.exists() and not overwrite:
        raise AlloyError(f"output folder {out} already exists; remove it or pass --overwrite")


@contextlib.contextmanager
def output_errors(out: str | Path) -> Iterator[None]:
    """Turn an OSError from writing `out` (read-only file system, disk full, no permission) into an
    AlloyError naming the path; other errors pass through."""
    try:
        yield
    except OSError as exc:
        reason = _WRITE_ERRORS.get(exc.errno)
        if reason is None:
            raise
        where = exc.filename or out
        raise AlloyError(f"cannot write {where}: {reason} ({exc.strerror}); nothing was written to {out}") from None


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder next to `out`; on success it becomes `out`, on any error it is removed.

    An interrupted job leaves no `out` and no half-written folder (only the hidden staging folder or
    `.OUT.old-PID` copy of a killed process, which the next run removes). A write that fails for a
    read-only file system, a full disk or a missing permission is an AlloyError naming the path.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    with output_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.partial"
        for leftover in (staging, *out.parent.glob(f".{out.name}.old-*")):  # from killed runs
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir()
    try:
        with output_errors(out):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with output_errors(out):
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)  # what a failure leaves, the next run removes
        else:
            os.replace(staging, out)


def check_writable(path: str | Path) -> None:
    """Fail early (AlloyError naming `path`) when a file cannot be created next to `path`, before the
    work whose result goes there."""
    path = Path(path)
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    with output_errors(path):
        probe.touch()
        probe.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with output_errors(path):
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
