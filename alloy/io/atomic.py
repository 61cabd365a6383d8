"""Outputs that appear whole or not at all: write under a temporary name, then rename."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from alloy.errors import AlloyError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early when `out` exists and may not be replaced."""
    if out.exists() and not overwrite:
        raise AlloyError(f"output folder {out} already exists; remove it or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder next to `out`; on success it becomes `out`, on any error it is removed.

    An interrupted job leaves no `out` and no half-written folder (only the hidden staging folder of
    a killed process, which the next run removes).
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
