"""The one exception type alloy raises for bad input: its message says what is wrong and what to do."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class AlloyError(Exception):
    """A user-facing error: bad recipe, bad checkpoint, bad search space, bad evaluation input.

    The message names the file, tensor or key at fault and says how to fix it. The CLI prints it
    without a traceback and exits with status 2.
    """


def check_options(settings: Any, checks: Iterable[tuple[str, bool, str]]) -> None:
    """Raise AlloyError for the first (name, ok, what) check that fails, as the command-line option
    `--name` (underscores as dashes) that "must be <what>", with the value `settings` holds."""
    for name, ok, what in checks:
        if not ok:
            raise AlloyError(f"--{name.replace('_', '-')} must be {what}, got {getattr(settings, name)!r}")
