"""Folders shipped with alloy: the lm-eval tasks (`evaluators/`) and the example search spaces
(`search_spaces/`). A source checkout keeps them at its top level; the wheel carries them inside the
package (`alloy/evaluators/`, `alloy/search_spaces/`, mapped in setup.py)."""
from __future__ import annotations

from pathlib import Path

from alloy.errors import AlloyError

SHIPPED = ("evaluators", "search_spaces")


def shipped_folder(name: str) -> Path:
    """The installed package's copy of a shipped folder, else the source checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not a folder shipped with alloy; those are {SHIPPED}")
    package = Path(__file__).resolve().parent
    for folder in (package / name, package.parent / name):
        if folder.is_dir():
            return folder
    raise AlloyError(f"alloy's {name}/ folder is missing from {package} (installed package) and from "
                     f"{package.parent} (source checkout); reinstall alloy")
