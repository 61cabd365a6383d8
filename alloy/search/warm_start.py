"""Warm start from an earlier sweep (`search.warm_start: PATH_OR_SWEEP`, or `{from: ..., top: K}`).

The earlier sweep's best recipes become starting points of the new one: its confirmed winners first,
then its `ok` trials at the last rung (Pareto front first, then by its first objective). A recipe is
taken only when it fits the new space: the values its Optuna trial drew cover every dimension the new
space draws for it and lie inside their ranges (or choices). Duplicates of the new space's own starting
points are skipped. The sweep is found as given, relative to the search-space file, or as
`sweeps/NAME` (the default `--out` of `alloy sweep`).

Like `search.start`, the warm-start points are enqueued once, when the study holds no trial yet: at the
start of a sweep, or on the `--resume` of one whose driver stopped before its first trial. Any other
resume finds them in the study (run or queued) and does not read the earlier sweep again.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from alloy.errors import AlloyError
from alloy.search.space import SearchSpace


def resolve_sweep(ref: str, space: SearchSpace) -> Path:
    """The folder of the earlier sweep `ref`; AlloyError naming the key when there is none."""
    here = Path(space.source).resolve().parent
    for folder in (here / ref, Path.cwd() / ref, Path.cwd() / "sweeps" / ref):
        if (folder / "sweep.json").is_file():
            return folder.resolve()
    raise AlloyError(f"{space.source}: search.warm_start: no sweep '{ref}' (looked for {ref}/sweep.json next to "
                     f"the space, in the current folder and in sweeps/)")


def warm_start_points(space: SearchSpace) -> list[dict]:
    """The drawn values of the earlier sweep's top recipes that fit `space` (at most `warm_start_top`)."""
    import optuna

    from alloy.search.leaderboard import leaderboard_meta, read_leaderboard

    if space.search.warm_start is None:
        return []
    folder = resolve_sweep(space.search.warm_start, space)
    meta = json.loads((folder / "sweep.json").read_text())
    table = read_leaderboard(folder)
    study = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    own = {space.candidate(p).recipe_hash for _, p in space.start_points()}
    points: list[dict] = []
    for number in ranked_trials(table.to_pylist(), leaderboard_meta(table)):
        params = fitted_params(space, trials[number].params) if number in trials else None
        if params is None:
            continue
        recipe_hash = space.candidate(params).recipe_hash
        if recipe_hash not in own:
            own.add(recipe_hash)
            points.append(params)
        if len(points) == space.search.warm_start_top:
            break
    return points


def ranked_trials(rows: list[dict], meta: Mapping[str, Any]) -> list[int]:
    """Trial numbers of a leaderboard, best first: confirmed winners, then `ok` trials at the last rung
    (front first, then by the first objective)."""
    first = meta["objectives"][0]
    sign = -1.0 if first["direction"] == "maximize" else 1.0
    last = len(meta["rungs"]) - 1

    def key(row: dict) -> tuple:
        value = row.get(first["metric"])
        missing = value is None or math.isnan(value)
        return (not row.get("best"), row["rung"] != last, not row["pareto"], missing,
                0.0 if missing else sign * value, row["trial"])

    usable = [r for r in rows if r["status"] == "ok" and (r["rung"] == last or r.get("best"))]
    return list(dict.fromkeys(r["trial"] for r in sorted(usable, key=key)))


def fitted_params(space: SearchSpace, params: Mapping[str, Any]) -> dict | None:
    """The values `space` draws, taken from `params`, when they are all there and in range; else None."""
    try:
        drawn = space.candidate(params).params
    except AlloyError:
        return None
    for dim in space.dimensions():
        if dim.name in drawn and not _inside(dim, drawn[dim.name]):
            return None
    return drawn


def _inside(dim: Any, value: Any) -> bool:
    if dim.kind == "categorical":
        return value in dim.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (dim.kind == "int" and value != int(value)):
        return False
    return dim.low <= value <= dim.high
