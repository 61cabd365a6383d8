"""Scores by recipe hash: a candidate already evaluated at a sample count is never evaluated again.

The cache lives in the sweep folder (`cache/<recipe hash>/<n_samples>.json`, or
`<n_samples>.r<first>-<last>.json` for repeat indices other than the search's), so it is shared by every
trial of a sweep, survives the driver, and lets a resumed or retried trial skip the rungs it already
finished. On a multi-node cluster the sweep folder is on storage every node sees, as Ray Tune requires
of its storage path anyway.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from alloy.io.atomic import atomic_write_text


class ResultCache:
    """Metrics of (recipe hash, sample count, repeat indices) keys, one small JSON file each; `repeats`
    None stands for the search's own repeats."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, recipe_hash: str, n_samples: int, repeats: range | None) -> Path:
        draws = "" if repeats is None else f".r{repeats.start}-{repeats.stop - 1}"
        return self.folder / recipe_hash / f"{int(n_samples)}{draws}.json"

    def get(self, recipe_hash: str, n_samples: int, repeats: range | None = None) -> dict[str, float] | None:
        """The stored metrics, or None when this candidate was not evaluated at `n_samples` (and `repeats`)."""
        path = self._path(recipe_hash, n_samples, repeats)
        if not path.is_file():
            return None
        return {k: (math.nan if v is None else v) for k, v in json.loads(path.read_text()).items()}

    def put(self, recipe_hash: str, n_samples: int, metrics: dict[str, float], repeats: range | None = None) -> None:
        """Store the metrics of one evaluation (atomically: readers see all of it or nothing)."""
        path = self._path(recipe_hash, n_samples, repeats)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        atomic_write_text(path, json.dumps(clean, sort_keys=True))
