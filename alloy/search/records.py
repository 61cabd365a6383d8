"""The durable record of a sweep: every leaderboard row kept in the Optuna study's storage.

Each row (one trial at one rung: scores, token statistics, status, error, timings, coefficients) is a
study user attribute `row:<trial>:<rung>` holding the row as JSON, written by the driver as results
arrive and before the Parquet view is regenerated; the leaderboard's objectives and rungs are the
attribute `leaderboard`. Study attributes can be written whatever the state of the Optuna trial (a
failed trial's error arrives after Optuna was told), and they live in the same database as the trials,
so the study alone is enough to rebuild `leaderboard.parquet`.

`sweep.json` in a sweep folder names the study (storage URL and study name); `open_records(folder)`
opens it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from alloy.errors import AlloyError

META_FILE = "sweep.json"
_ROW_PREFIX = "row:"
_META_KEY = "leaderboard"


class SweepRecords:
    """Leaderboard rows and their schema in one study (`storage`: an Optuna storage object)."""

    def __init__(self, storage: Any, study_name: str):
        self.storage = storage
        self.study_name = study_name
        try:
            self.study_id = storage.get_study_id_from_name(study_name)
        except KeyError:
            raise AlloyError(f"study {study_name!r} does not exist in its storage; the sweep never started "
                             f"its search (start it again)") from None

    def set_schema(self, objectives: Sequence[Mapping[str, str]], rungs: Sequence[int]) -> None:
        """Record the objectives ({metric, direction}) and rungs the rows are about."""
        self.storage.set_study_user_attr(self.study_id, _META_KEY, {"objectives": [dict(o) for o in objectives],
                                                                     "rungs": [int(r) for r in rungs]})

    def schema(self) -> dict:
        """{'objectives': [...], 'rungs': [...]}, as `set_schema` recorded it."""
        meta = self.storage.get_study_user_attrs(self.study_id).get(_META_KEY)
        if meta is None:
            raise AlloyError(f"study {self.study_name!r} holds no leaderboard schema (not an alloy sweep study)")
        return meta

    def put(self, row: Mapping[str, Any]) -> None:
        """Store one row under its (trial, rung), replacing the earlier one."""
        key = f"{_ROW_PREFIX}{int(row['trial'])}:{int(row['rung'])}"
        self.storage.set_study_user_attr(self.study_id, key, {k: _jsonable(v) for k, v in row.items()})

    def rows(self) -> list[dict]:
        """Every stored row, by trial then rung."""
        attrs = self.storage.get_study_user_attrs(self.study_id)
        rows = [dict(v) for k, v in attrs.items() if k.startswith(_ROW_PREFIX)]
        return sorted(rows, key=lambda r: (r["trial"], r["rung"]))


def _jsonable(value: Any) -> Any:
    """NaN has no JSON spelling: store it as null (a missing score)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def read_meta(folder: str | Path) -> dict:
    """The sweep folder's `sweep.json` (storage URL, study name); AlloyError when it is not a sweep."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise AlloyError(f"{folder}: not a sweep folder (no {META_FILE}); give the --out folder of `alloy sweep`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AlloyError(f"{path}: not valid JSON ({exc})") from None


def open_storage(url: str) -> Any:
    """The Optuna RDB storage at an SQLAlchemy URL; AlloyError when it cannot be opened."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # noqa: BLE001 - any driver/URL error becomes a user-facing message
        raise AlloyError(f"cannot open the Optuna study storage {url!r}: {exc}") from None


def open_records(folder: str | Path) -> SweepRecords:
    """The records of the sweep in `folder`, from the study its `sweep.json` names."""
    meta = read_meta(folder)
    return SweepRecords(open_storage(meta["storage"]), meta["study_name"])
