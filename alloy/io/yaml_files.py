"""Reading the YAML files users write (recipes, search spaces), with errors that name the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alloy.errors import AlloyError


def read_yaml(path: str | Path, kind: str) -> Any:
    """The parsed contents of the `kind` file at `path` (e.g. kind="recipe file")."""
    path = Path(path)
    if not path.is_file():
        raise AlloyError(f"{kind} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AlloyError(f"{path}: not valid YAML: {exc}") from None
