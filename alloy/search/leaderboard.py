"""The leaderboard of a sweep: one Parquet table, one row per trial and rung.

Columns: `trial` (the Optuna trial number), `trial_id` (Ray Tune's), `recipe_hash`, `recipe` (canonical
JSON), `status`, `error`, `rung` (0-based), `n_samples`, `latest` (the trial's last row), `cached`
(scores reused from an identical recipe), `reference` (`parent:LABEL` / `uniform` for starting points),
one column per objective named as in the search space and, for each score objective, its 95%
interval `METRIC.lo` / `METRIC.hi` (Wilson for proportions, a bootstrap over questions otherwise: see
alloy.evaluation.intervals) and its per-question values `METRIC.questions` (a list by document id, each
the mean over the repeats; what a paired comparison of two rows on the same questions resamples; null
from a runner that does not give them), the output-token statistics, `merge_s`, `eval_s`, `finished_at` (unix
seconds), `pareto`, `best` and `clear_lead` (set by the confirmation, alloy.search.confirm), and one
`param.NAME` column per free coefficient.

The confirmation stage adds a row at rung `len(rungs)` (the `confirmed` rung; `n_samples` is
`search.confirm.samples`) to the candidates it re-scores; `pareto` of such a row is that of the trial's
last search rung.

`status` is the trial's outcome, the same on each of its rows: `ok` (evaluated up to the last rung),
`pruned` (stopped early by ASHA), `failed` (build or evaluation raised; `error` says why), or
`running` while the trial is in flight. `pareto` marks the non-dominated rows among `ok` rows at the
last rung, so pruned trials are never on the front. The file is replaced atomically on every write;
the objectives and rungs are kept in the schema metadata.

The Parquet file is a view: the rows live in the sweep's study (`alloy.search.records`), and the driver
regenerates the file from there at every update. `rebuild_leaderboard` regenerates it on demand
(`alloy board --rebuild`), and `read_leaderboard` does so by itself when the file of a sweep folder is
missing or unreadable, so a deleted or corrupted file never loses a row.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from alloy.errors import AlloyError
from alloy.evaluation.intervals import paired_gap
from alloy.search.space import TOKEN_METRICS

FILENAME = "leaderboard.parquet"
STATUSES = ("ok", "pruned", "failed", "running")
PARAM_PREFIX = "param."
INTERVAL_SUFFIXES = (".lo", ".hi")  # a score's 95% interval: `aime24/exact_match.lo`, `.hi`
QUESTIONS_SUFFIX = ".questions"  # a score's per-question values: `aime24/exact_match.questions`
_META_KEY = b"alloy.leaderboard"
_BASE_COLUMNS = ("trial", "trial_id", "recipe_hash", "recipe", "status", "error", "rung", "n_samples", "latest",
                 "cached", "reference")
_TAIL_COLUMNS = (*TOKEN_METRICS, "merge_s", "eval_s", "finished_at", "pareto", "best", "clear_lead")


def interval_columns(metrics: Sequence[str]) -> list[str]:
    """The interval columns (`METRIC.lo`, `METRIC.hi`) of the score objectives among `metrics`."""
    from alloy.search.space import is_token_metric

    return [m + end for m in metrics if not is_token_metric(m) for end in INTERVAL_SUFFIXES]


def question_columns(metrics: Sequence[str]) -> list[str]:
    """The per-question columns (`METRIC.questions`) of the score objectives among `metrics`."""
    from alloy.search.space import is_token_metric

    return [m + QUESTIONS_SUFFIX for m in metrics if not is_token_metric(m)]


def result_columns(metrics: Sequence[str], result: Mapping[str, Any]) -> dict[str, Any]:
    """The leaderboard columns of one evaluation's result: the objectives `metrics`, their intervals and
    per-question values, the token statistics, `merge_s` and `eval_s` (None where the result lacks one)."""
    row: dict[str, Any] = {}
    for key in (*metrics, *interval_columns(metrics), *TOKEN_METRICS, "merge_s", "eval_s"):
        value = result.get(key)
        row[key] = None if value is None else float(value)
    for key in question_columns(metrics):
        values = result.get(key)
        row[key] = None if values is None else [float(v) for v in values]
    return row


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

    @classmethod
    def from_records(cls, path: str | Path, records: Any) -> "Leaderboard":
        """The leaderboard of a sweep's durable records (`alloy.search.records.SweepRecords`)."""
        schema = records.schema()
        return cls(path, schema["objectives"], schema["rungs"], records.rows())

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

        from alloy.io.atomic import output_errors

        table = self.to_table()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with output_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
        return self.path

    def to_table(self) -> Any:
        """The rows as a pyarrow Table (base columns, objectives, token statistics, params)."""
        import pyarrow as pa

        rows = self.rows()
        params = sorted({k for r in rows for k in r if k.startswith(PARAM_PREFIX)})
        intervals = interval_columns(self.metrics)
        questions = question_columns(self.metrics)
        columns = [*_BASE_COLUMNS, *[m for m in self.metrics if m not in _TAIL_COLUMNS], *intervals, *_TAIL_COLUMNS,
                   *params, *questions]
        data = {c: [r.get(c) for r in rows] for c in columns}
        types = {"trial": pa.int64(), "rung": pa.int64(), "n_samples": pa.int64(), "latest": pa.bool_(),
                 "cached": pa.bool_(), "pareto": pa.bool_(), "best": pa.bool_(), "clear_lead": pa.bool_(),
                 "finished_at": pa.float64()}
        for c in ("trial_id", "recipe_hash", "recipe", "status", "error", "reference"):
            types[c] = pa.string()
        for c in (*self.metrics, *intervals, *TOKEN_METRICS, "merge_s", "eval_s"):
            types[c] = pa.float64()
        for c in questions:
            types[c] = pa.list_(pa.float64())
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
        last = len(self.rungs) - 1
        for (trial, rung), row in self._rows.items():
            if rung > last and (trial, last) in self._rows:  # the confirmed rung
                row["pareto"] = self._rows[(trial, last)]["pareto"]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def task_metrics(objectives: Sequence[Mapping[str, str]]) -> list[str]:
    """The objectives that are task scores (not output-token statistics), in order."""
    from alloy.search.space import is_token_metric

    return [o["metric"] for o in objectives if not is_token_metric(o["metric"])]


def combined_score(row: Mapping[str, Any], metrics: Sequence[str]) -> float | None:
    """The combined score of a row: the mean of its task scores `metrics`; None when one is missing."""
    values = [row.get(m) for m in metrics]
    if not values or any(v is None or math.isnan(v) for v in values):
        return None
    return sum(values) / len(values)


def paired_row_gap(a: Mapping[str, Any], b: Mapping[str, Any],
                   metrics: Sequence[str]) -> tuple[float, float, float] | None:
    """The mean over `metrics` of row a's score minus row b's, with its paired 95% interval (gap, lo, hi),
    from both rows' per-question values (`METRIC.questions`); None when a row lacks them for some metric
    or the two were scored on different numbers of questions."""
    pairs = [(a.get(m + QUESTIONS_SUFFIX), b.get(m + QUESTIONS_SUFFIX)) for m in metrics]
    if not pairs or any(x is None or y is None or len(x) != len(y) or not len(x) for x, y in pairs):
        return None
    return paired_gap(pairs)


def winner_gaps(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]
                ) -> list[tuple[dict, dict, dict[str, tuple[float, float, float]]]]:
    """For each confirmed winner among `rows` (`best`, not a parent) and each parent confirmed with it
    (a `parent:` reference at the same rung): (winner, parent, {metric: paired gap (gap, lo, hi)}) over
    the score objectives among `metrics` that both rows hold per-question values of."""
    from alloy.search.space import is_token_metric

    scores = [m for m in metrics if not is_token_metric(m)]
    found = []
    for winner in rows:
        if not winner.get("best") or (winner.get("reference") or "").startswith("parent:"):
            continue
        for parent in rows:
            if (parent.get("reference") or "").startswith("parent:") and parent["rung"] == winner["rung"]:
                gaps = {m: gap for m in scores if (gap := paired_row_gap(winner, parent, [m])) is not None}
                if gaps:
                    found.append((dict(winner), dict(parent), gaps))
    return found


def leaderboard_path(sweep: str | Path) -> Path:
    """The leaderboard file of a sweep folder (or the file itself when given one)."""
    sweep = Path(sweep)
    return sweep if sweep.suffix == ".parquet" else sweep / FILENAME


def rebuild_leaderboard(sweep: str | Path) -> Path:
    """Regenerate a sweep folder's `leaderboard.parquet` from its study; return the file."""
    from alloy.search.records import open_records

    path = leaderboard_path(sweep)
    return Leaderboard.from_records(path, open_records(path.parent)).write()


def read_leaderboard(sweep: str | Path) -> Any:
    """The leaderboard of a sweep folder (or file) as a pyarrow Table. A sweep folder's file that is
    missing or unreadable is rebuilt from the study first; AlloyError when there is no leaderboard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alloy.search.records import META_FILE

    path = leaderboard_path(sweep)
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        if not (path.parent / META_FILE).is_file():
            if not path.exists():
                raise AlloyError(f"{path}: no leaderboard here; give the output folder of `alloy sweep`") from None
            raise AlloyError(f"{path}: not a readable Parquet file ({exc})") from None
    return pq.read_table(rebuild_leaderboard(path))


def leaderboard_meta(table: Any) -> dict:
    """{'objectives': [{metric, direction}], 'rungs': [...]} kept in a leaderboard's schema metadata."""
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise AlloyError("this Parquet file is not an alloy leaderboard (no objectives in its metadata)")
    return json.loads(raw)


def select_rows(table: Any, top: int | None = None, pareto_only: bool = False, sort: str | None = None,
                all_rungs: bool = False) -> list[dict]:
    """Leaderboard rows for display: each trial's latest row (or every row), optionally only the Pareto
    front; the confirmation's best first, then by `sort` (default: the first objective; objectives sort
    by their direction, token statistics ascending, anything else descending). Rows missing the sort
    value come last."""
    meta = leaderboard_meta(table)
    directions = {o["metric"]: o["direction"] for o in meta["objectives"]}
    sort = sort or meta["objectives"][0]["metric"]
    if sort not in table.column_names:
        raise AlloyError(f"--sort {sort}: no such leaderboard column; columns are {table.column_names}")
    if sort.endswith(QUESTIONS_SUFFIX):
        raise AlloyError(f"--sort {sort}: a column of per-question values; sort by the score "
                         f"{sort.removesuffix(QUESTIONS_SUFFIX)} instead")
    rows = [r for r in table.to_pylist() if all_rungs or r["latest"]]
    if pareto_only:
        rows = [r for r in rows if r["pareto"]]
    from alloy.search.space import is_token_metric

    ascending = directions.get(sort, "minimize" if is_token_metric(sort) else "maximize") == "minimize"

    def key(row: dict) -> tuple:
        value = row.get(sort)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        first = not row.get("best")
        if missing:
            return (first, 1, 0, row["trial"])
        if isinstance(value, str):
            return (first, 0, value, row["trial"])
        return (first, 0, value if ascending else -value, row["trial"])

    rows.sort(key=key)
    return rows[:top] if top else rows


def render_board(rows: Sequence[dict], table: Any, gaps: bool = True) -> str:
    """A plain-text table of leaderboard rows: trial, status, rung, objectives with their 95% intervals,
    tokens, the Pareto and best marks, free params. `best` is `*` for a confirmed winner whose lead over
    every parent is beyond the intervals and `~` for one whose lead over some parent is not; then, with
    `gaps`, each winner's paired gap to each parent (`winner_gaps`, over the whole table)."""
    meta = leaderboard_meta(table)
    metrics = [o["metric"] for o in meta["objectives"]]
    extra = [] if "tokens_mean" in metrics else ["tokens_mean"]
    params = [c for c in table.column_names if c.startswith(PARAM_PREFIX)]
    headers = ["trial", "status", "n", *metrics, *extra, "pareto", "best", "reference",
               *[p[len(PARAM_PREFIX):] for p in params]]
    lines = []
    for r in rows:
        cells = [str(r["trial"]), r["status"], str(r["n_samples"])]
        cells += [_cell(r.get(m)) + _interval_cell(r, m) for m in (*metrics, *extra)]
        best = "" if not r.get("best") else "~" if r.get("clear_lead") is False else "*"
        cells += ["*" if r["pareto"] else "", best, r.get("reference") or ""]
        cells += [_cell(r.get(p)) for p in params]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in lines]
    failed = [r for r in rows if r["status"] == "failed"]
    out += [f"trial {r['trial']} failed: {r['error']}" for r in failed]
    if any(r.get("best") and r.get("clear_lead") is False for r in rows):
        out.append("~ best after confirmation, but its lead over some parent is within the 95% intervals")
    shown = winner_gaps([r for r in table.to_pylist() if r["latest"]], metrics) if gaps else []
    for winner, parent, found in shown:
        cells = "  ".join(f"{m} {g:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, (g, lo, hi) in found.items())
        out.append(f"trial {winner['trial']} − {parent['reference']} on the same questions (95% interval): {cells}")
    return "\n".join(out)


def _interval_cell(row: Mapping[str, Any], metric: str) -> str:
    lo, hi = row.get(f"{metric}.lo"), row.get(f"{metric}.hi")
    return "" if lo is None or hi is None else f" [{lo:.3g}, {hi:.3g}]"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
