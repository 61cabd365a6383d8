"""The leaderboard of a sweep: one Parquet table, one row per trial and rung.

Columns: `trial` (the Optuna trial number), `trial_id` (Ray Tune's), `recipe_hash`, `recipe` (canonical
JSON), `status`, `error`, `rung` (0-based), `n_samples`, `latest` (the trial's last row), `cached`
(scores reused from an identical recipe), `reference` (`parent:LABEL` / `uniform` for starting points),
one column per objective named as in the search space (and `OBJECTIVE.lo` / `OBJECTIVE.hi`, its 95%
interval over the questions, when the evaluator gave one), the output-token statistics, `merge_s`,
`eval_s`, `finished_at` (unix seconds), `pareto`, and one `param.NAME` column per free coefficient.

`status` is the trial's outcome, the same on each of its rows: `ok` (evaluated up to the last rung),
`pruned` (stopped early by ASHA), `failed` (build or evaluation raised; `error` says why), or
`running` while the trial is in flight. `pareto` marks the non-dominated rows among `ok` rows at the
last rung, so pruned trials are never on the front. The file is replaced atomically on every write;
the objectives and rungs are kept in the schema metadata.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from alloy.errors import AlloyError
from alloy.search.space import TOKEN_METRICS

FILENAME = "leaderboard.parquet"
STATUSES = ("ok", "pruned", "failed", "running")
PARAM_PREFIX = "param."
_META_KEY = b"alloy.leaderboard"
_BASE_COLUMNS = ("trial", "trial_id", "recipe_hash", "recipe", "status", "error", "rung", "n_samples", "latest",
                 "cached", "reference")
_TAIL_COLUMNS = (*TOKEN_METRICS, "merge_s", "eval_s", "finished_at", "pareto")
INTERVAL_SUFFIXES = (".lo", ".hi")


def interval_columns(metrics: Iterable[str]) -> list[str]:
    """The interval bounds an evaluator may give for `metrics` ("task/metric.lo", ".hi")."""
    return [m + suffix for m in metrics if m not in TOKEN_METRICS for suffix in INTERVAL_SUFFIXES]


def pareto_mask(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it (at least as good in every objective and
    better in one). Points with a NaN are never on the front."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]
    scored = [None if any(v is None or math.isnan(v) for v in p) else [s * v for s, v in zip(signs, p)]
              for p in points]
    mask = []
    for i, p in enumerate(scored):
        if p is None:
            mask.append(False)
            continue
        dominated = any(q is not None and j != i and all(a >= b for a, b in zip(q, p))
                        and any(a > b for a, b in zip(q, p)) for j, q in enumerate(scored))
        mask.append(not dominated)
    return mask


class Leaderboard:
    """The rows of one sweep, keyed by (trial, rung); `write` replaces the Parquet file atomically."""

    def __init__(self, path: str | Path, objectives: Sequence[Mapping[str, str]], rungs: Sequence[int],
                 rows: Iterable[dict] = ()):
        self.path = Path(path)
        self.objectives = [dict(o) for o in objectives]
        self.rungs = [int(r) for r in rungs]
        self._rows: dict[tuple[int, int], dict] = {}
        for row in rows:
            self._rows[(row["trial"], row["rung"])] = dict(row)

    @classmethod
    def open(cls, path: str | Path, objectives: Sequence[Mapping[str, str]], rungs: Sequence[int]) -> "Leaderboard":
        """The leaderboard at `path` with its rows, or an empty one when the file does not exist yet."""
        path = Path(path)
        rows = read_leaderboard(path).to_pylist() if path.is_file() else []
        return cls(path, objectives, rungs, rows)

    @property
    def metrics(self) -> list[str]:
        """The objective column names."""
        return [o["metric"] for o in self.objectives]

    def rows(self) -> list[dict]:
        """All rows, by trial then rung, with `latest` and `pareto` up to date."""
        self._refresh()
        return [self._rows[k] for k in sorted(self._rows)]

    def upsert(self, row: Mapping[str, Any]) -> None:
        """Add the row of (row['trial'], row['rung']), replacing an earlier one of the same key."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"leaderboard row status must be one of {STATUSES}, got {row.get('status')!r}")
        self._rows[(int(row["trial"]), int(row["rung"]))] = dict(row)

    def trial_rows(self, trial: int) -> list[dict]:
        """The rows of one trial, by rung."""
        return [self._rows[k] for k in sorted(self._rows) if k[0] == trial]

    def set_status(self, trial: int, status: str, error: str | None = None) -> None:
        """Set the outcome of every row of `trial` (and the error, when given)."""
        if status not in STATUSES:
            raise ValueError(f"leaderboard status must be one of {STATUSES}, got {status!r}")
        for row in self.trial_rows(trial):
            row["status"] = status
            if error is not None:
                row["error"] = error

    def write(self) -> Path:
        """Write the table to `path` (temporary file, then rename)."""
        import pyarrow.parquet as pq

        table = self.to_table()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, self.path)
        return self.path

    def to_table(self) -> Any:
        """The rows as a pyarrow Table (base columns, objectives, token statistics, params)."""
        import pyarrow as pa

        rows = self.rows()
        params = sorted({k for r in rows for k in r if k.startswith(PARAM_PREFIX)})
        bounds = [c for c in interval_columns(self.metrics) if any(r.get(c) is not None for r in rows)]
        columns = [*_BASE_COLUMNS, *[m for m in self.metrics if m not in _TAIL_COLUMNS], *bounds, *_TAIL_COLUMNS,
                   *params]
        data = {c: [r.get(c) for r in rows] for c in columns}
        types = {"trial": pa.int64(), "rung": pa.int64(), "n_samples": pa.int64(), "latest": pa.bool_(),
                 "cached": pa.bool_(), "pareto": pa.bool_(), "finished_at": pa.float64()}
        for c in ("trial_id", "recipe_hash", "recipe", "status", "error", "reference"):
            types[c] = pa.string()
        for c in (*self.metrics, *bounds, *TOKEN_METRICS, "merge_s", "eval_s"):
            types[c] = pa.float64()
        arrays = []
        for c in columns:
            if c in types:
                arrays.append(pa.array(data[c], type=types[c]))
            else:
                values = data[c]
                is_text = any(isinstance(v, str) for v in values)
                arrays.append(pa.array([None if v is None else (str(v) if is_text else float(v)) for v in values],
                                       type=pa.string() if is_text else pa.float64()))
        meta = {"objectives": self.objectives, "rungs": self.rungs}
        return pa.table(arrays, names=columns).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})

    def _refresh(self) -> None:
        last_rung = {}
        for trial, rung in self._rows:
            last_rung[trial] = max(rung, last_rung.get(trial, rung))
        full = self.rungs[-1] if self.rungs else None
        candidates = []
        for (trial, rung), row in self._rows.items():
            row["latest"] = rung == last_rung[trial]
            row["pareto"] = False
            if row["status"] == "ok" and row.get("n_samples") == full:
                candidates.append(row)
        points = [[_float(r.get(m)) for m in self.metrics] for r in candidates]
        for row, on_front in zip(candidates, pareto_mask(points, [o["direction"] for o in self.objectives])):
            row["pareto"] = on_front


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def leaderboard_path(sweep: str | Path) -> Path:
    """The leaderboard file of a sweep folder (or the file itself when given one)."""
    sweep = Path(sweep)
    return sweep if sweep.suffix == ".parquet" else sweep / FILENAME


def read_leaderboard(sweep: str | Path) -> Any:
    """The leaderboard of a sweep folder (or file) as a pyarrow Table; AlloyError when there is none."""
    import pyarrow.parquet as pq

    path = leaderboard_path(sweep)
    if not path.is_file():
        raise AlloyError(f"{path}: no leaderboard here; give the output folder of `alloy sweep`")
    return pq.read_table(path)


def leaderboard_meta(table: Any) -> dict:
    """{'objectives': [{metric, direction}], 'rungs': [...]} kept in a leaderboard's schema metadata."""
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise AlloyError("this Parquet file is not an alloy leaderboard (no objectives in its metadata)")
    return json.loads(raw)


def select_rows(table: Any, top: int | None = None, pareto_only: bool = False, sort: str | None = None,
                all_rungs: bool = False) -> list[dict]:
    """Leaderboard rows for display: each trial's latest row (or every row), optionally only the Pareto
    front, best first by `sort` (default: the first objective; objectives sort by their direction,
    token statistics ascending, anything else descending). Rows missing the sort value come last."""
    meta = leaderboard_meta(table)
    directions = {o["metric"]: o["direction"] for o in meta["objectives"]}
    sort = sort or meta["objectives"][0]["metric"]
    if sort not in table.column_names:
        raise AlloyError(f"--sort {sort}: no such leaderboard column; columns are {table.column_names}")
    rows = [r for r in table.to_pylist() if all_rungs or r["latest"]]
    if pareto_only:
        rows = [r for r in rows if r["pareto"]]
    from alloy.search.space import is_token_metric

    ascending = directions.get(sort, "minimize" if is_token_metric(sort) else "maximize") == "minimize"

    def key(row: dict) -> tuple:
        value = row.get(sort)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if missing:
            return (1, 0, row["trial"])
        if isinstance(value, str):
            return (0, value, row["trial"])
        return (0, value if ascending else -value, row["trial"])

    rows.sort(key=key)
    return rows[:top] if top else rows


def render_board(rows: Sequence[dict], table: Any) -> str:
    """A plain-text table of leaderboard rows: trial, status, rung, objectives (with their 95% intervals
    where the leaderboard has them), tokens, free params."""
    meta = leaderboard_meta(table)
    metrics = [o["metric"] for o in meta["objectives"]]
    extra = [] if "tokens_mean" in metrics else ["tokens_mean"]
    params = [c for c in table.column_names if c.startswith(PARAM_PREFIX)]
    headers = ["trial", "status", "n", *metrics, *extra, "pareto", "reference",
               *[p[len(PARAM_PREFIX):] for p in params]]
    lines = []
    for r in rows:
        cells = [str(r["trial"]), r["status"], str(r["n_samples"])]
        cells += [score_cell(r, m) for m in (*metrics, *extra)]
        cells += ["*" if r["pareto"] else "", r.get("reference") or ""]
        cells += [_cell(r.get(p)) for p in params]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines]
    failed = [r for r in rows if r["status"] == "failed"]
    out += [f"trial {r['trial']} failed: {r['error']}" for r in failed]
    return "\n".join(out)


def score_cell(row: Mapping[str, Any], metric: str) -> str:
    """`row`'s value of `metric`, followed by its interval "[lo, hi]" when the row has one."""
    lo, hi = row.get(metric + ".lo"), row.get(metric + ".hi")
    if lo is None or hi is None or row.get(metric) is None:
        return _cell(row.get(metric))
    return f"{_cell(row.get(metric))} [{lo:.2f}, {hi:.2f}]"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
