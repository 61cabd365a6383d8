"""Quiet output: alloy's own progress on the terminal, everything else in a log file.

Inside `quiet_output(log_file)`, `sys.stdout` and `sys.stderr` write to the log file, so what other
libraries print lands there: Ray's worker logs (which `ray.init(log_to_driver=True)` prints on the
driver's streams), Ray Tune's and Ray Train's reports, lm-eval's and transformers' progress bars, and
every warning. Logging handlers that a library pointed at the
terminal before the block (Ray's own) write to the file for the duration. alloy's lines go to the
terminal through `say`, and are copied into the log so that it tells the whole story in order;
`progress_bar` draws on the terminal too.
With `verbose=True` nothing is redirected.

`alloy demo`, `sweep`, `branch` and `eval` run this way; `-v/--verbose` brings the output back.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any, Iterator, TextIO

LOG_FILE = "alloy.log"

_terminal: list[tuple[TextIO, TextIO]] = []  # (stdout, stderr) of the quiet blocks we are in, innermost last
_log: list["_LazyFile"] = []       # their log files
_muted: list[bool] = []            # inside `lines_to_log_only`: `say` writes to the log file only


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """The `-v/--verbose` option of the commands that run quietly."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help=f"show the output of Ray, lm-eval and transformers (by default it goes to {LOG_FILE} "
                             "in the output folder)")


def terminal() -> TextIO:
    """The stream alloy's own lines go to: the terminal's stdout, even inside `quiet_output`."""
    return _terminal[-1][0] if _terminal else sys.stdout


def say(*parts: object, end: str = "\n") -> None:
    """Print one of alloy's own progress lines: on the terminal, even inside `quiet_output`, and into
    the log file when there is one."""
    text = " ".join(str(p) for p in parts) + end
    if not (_muted and _log):
        stream = terminal()
        stream.write(text)
        stream.flush()
    if _log:
        _log[-1].write(text)
        _log[-1].flush()


@contextlib.contextmanager
def lines_to_log_only() -> Iterator[None]:
    """Inside a quiet block, send `say`'s lines to the log file only for the duration (a caller that
    draws its own progress, as the demo does over a sweep's per-trial lines); outside one, no change."""
    _muted.append(True)
    try:
        yield
    finally:
        _muted.pop()


def progress_bar(total: int, desc: str, unit: str = "it", disable: bool = False) -> Any:
    """A tqdm bar for long work, drawn on the terminal's stderr (even inside `quiet_output`) and only
    when that is a terminal: never in a Ray worker's log or in captured output."""
    from tqdm.auto import tqdm

    stream = _terminal[-1][1] if _terminal else sys.stderr
    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True,
                disable=True if disable else None)


@contextlib.contextmanager
def quiet_output(log_file: str | Path, verbose: bool = False) -> Iterator[Path | None]:
    """Send everything but `say`'s lines to `log_file` (appended, created on the first write) for the
    block; yield its path, or None when `verbose` leaves the output alone. When the block raises, one
    line on the terminal points at the log."""
    if verbose:
        yield None
        return
    path = Path(log_file)
    log = _LazyFile(path)
    terminal, errors = sys.stdout, sys.stderr
    moved = _point_handlers({id(terminal), id(errors), id(sys.__stdout__), id(sys.__stderr__)}, log)
    _terminal.append((terminal, errors))
    _log.append(log)
    sys.stdout = sys.stderr = log
    shown = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    try:
        yield path
    except BaseException:
        if log.opened:
            errors.write(f"(the full output is in {path})\n")
        raise
    finally:
        sys.stdout, sys.stderr = terminal, errors
        warnings.showwarning = shown
        _terminal.pop()
        _log.pop()
        for handler, stream in moved:
            handler.setStream(stream)
        _point_handlers({id(log)}, errors)      # handlers made inside the block wrote to the log
        log.close()


def _point_handlers(streams: set[int], target: IO[str]) -> list[tuple[logging.StreamHandler, IO[str]]]:
    """Point every logging StreamHandler writing to one of `streams` at `target`; return (handler,
    previous stream) pairs."""
    moved = []
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            settable = "stream" in vars(handler)     # not logging's last-resort handler, whose stream is sys.stderr
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                    and settable and id(handler.stream) in streams:
                moved.append((handler, handler.setStream(target)))
    return moved


class _LazyFile:
    """A text stream appending to a file it opens (with its folder) on the first write, so that a
    command that fails before printing anything leaves no log behind. Safe across threads (Ray prints
    worker logs from its own); a write after `close` appends and closes again."""

    def __init__(self, path: Path):
        self.path = path
        self._file: TextIO | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        """Whether something was written."""
        return self._file is not None

    def write(self, text: str) -> int:
        with self._lock:
            written = self._open().write(text)
            if self._closed:
                self._shut()
            return written

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def fileno(self) -> int:
        """The file's descriptor (opening it), for code that writes below Python."""
        with self._lock:
            return self._open().fileno()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._shut()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def _open(self) -> TextIO:
        if self._file is None:
            first = not self._closed
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", errors="replace")
            if first:
                self._file.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        return self._file

    def _shut(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
