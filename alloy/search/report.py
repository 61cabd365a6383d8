"""The HTML report of a sweep: one self-contained file, interactive through Plotly (its JavaScript is
inlined, so the file opens offline), and readable without JavaScript through its tables.

Sections: a Pareto front for each task metric against each token objective (hover: trial, rung,
scores with their intervals from the `.lo`/`.hi` columns, free coefficients; error bars from the same
intervals); the combined score (the mean of the task objectives, as in the demo's verdict) against
each free coefficient; parameter importances (Optuna's `get_param_importances` on the study for the
combined score, or |Spearman ρ| with it on the leaderboard when the study cannot give them); how much
evaluation ASHA saved; the best recipes, with the confirmed winner's paired gaps to each parent; every
trial.
"""
from __future__ import annotations

import html
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

from alloy.io.atomic import atomic_write_text
from alloy.search.leaderboard import (INTERVAL_SUFFIXES, PARAM_PREFIX, combined_score, leaderboard_meta, pareto_mask,
                                      read_leaderboard, task_metrics, winner_gaps)
from alloy.search.space import is_token_metric

COMBINED = "combined score"
_COLORS = {"full": "#1f77b4", "pareto": "#d62728", "pruned": "#a0a0a0", "reference": "#2ca02c"}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px}"
          "td.num{text-align:right}pre{font-size:12px;background:#f6f6f6;padding:6px}")


def write_report(sweep: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the sweep in folder `sweep` to `out` (default SWEEP/report.html)."""
    sweep = Path(sweep)
    table = read_leaderboard(sweep)
    path = Path(out) if out else sweep / "report.html"
    atomic_write_text(path, render_report(table, _study_importances(sweep, table)))
    return path


def render_report(table: Any, importances: dict[str, float] | None = None) -> str:
    """The report of a leaderboard table as an HTML page. `importances` (parameter → weight) come from
    the Optuna study; when None they are estimated from the leaderboard."""
    from plotly.offline import get_plotlyjs

    view = _View(table)
    if importances is None:
        scored = [dict(r, **{COMBINED: view.combined[r["trial"]]}) for r in view.full]
        importances = correlation_importances(scored, view.params, COMBINED)
    counts = {s: sum(r["status"] == s for r in view.latest) for s in ("ok", "pruned", "failed", "running")}
    running = f", {counts['running']} running" if counts["running"] else ""
    objectives = ", ".join(f"{_esc(o['metric'])} ({o['direction']})" for o in view.objectives)
    parts = [
        "<h1>Sweep report</h1>",
        f"<p>{len(view.latest)} trials: {counts['ok']} ok, {counts['pruned']} pruned by ASHA, {counts['failed']} "
        f"failed{running}. Objectives: {objectives}. Rungs: {view.rungs} samples. The combined score is the "
        f"mean of {', '.join(map(_esc, view.tasks)) or 'no task objective'}.</p>",
        "<noscript><p><b>The plots need JavaScript.</b> The tables below hold the same numbers.</p></noscript>",
        "<h2>Pareto front</h2>",
        "<p>Each point is a trial at its last rung: blue = evaluated at the full rung, red = on the Pareto front "
        "of all objectives, grey = stopped early by ASHA; the dashed line is the front of the two plotted "
        "objectives; bars are the scores' 95% intervals. Hover a point for its trial, scores and recipe "
        "coefficients.</p>",
        _front_plots(view),
        "<h2>Combined score against each free coefficient</h2>",
        _slice_plots(view),
        "<h2>Parameter importances</h2>",
        _importance_plot(importances),
        "<h2>Evaluation saved by ASHA</h2>",
        _savings(view),
        "<h2>Best recipes</h2>",
        _best_table(view),
        "<h2>Every trial</h2>",
        _trials_table(view),
    ]
    failed = [r for r in view.latest if r["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(
            f"<li>trial {r['trial']}: {_esc(r['error'] or '')}</li>" for r in failed) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>alloy sweep report</title>"
            f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body>{''.join(parts)}</body></html>")


def correlation_importances(rows: Sequence[dict], params: Sequence[str], metric: str) -> dict[str, float]:
    """|Spearman rank correlation| of each numeric parameter with `metric`, normalized to sum 1."""
    from scipy.stats import spearmanr

    out = {}
    for p in params:
        pairs = [(r.get(p), r.get(metric)) for r in rows if _finite(r.get(p)) and _finite(r.get(metric))]
        if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
            continue
        out[p[len(PARAM_PREFIX):]] = abs(float(spearmanr([x for x, _ in pairs], [y for _, y in pairs]).statistic))
    total = sum(out.values())
    return {k: v / total for k, v in sorted(out.items(), key=lambda kv: -kv[1])} if total > 0 else out


# --------------------------------------------------------------------------------------------------
class _View:
    """What the sections read from a leaderboard: rows, objectives, the combined score per trial."""

    def __init__(self, table: Any):
        meta = leaderboard_meta(table)
        self.objectives: list[dict] = meta["objectives"]
        self.rungs: list[int] = meta["rungs"]
        self.rows: list[dict] = table.to_pylist()
        self.columns: list[str] = table.column_names
        self.latest = [r for r in self.rows if r["latest"]]
        self.full = [r for r in self.latest if r["status"] == "ok" and r["n_samples"] >= self.rungs[-1]]
        self.tasks = task_metrics(self.objectives)
        self.tokens = [o["metric"] for o in self.objectives if is_token_metric(o["metric"])] or ["tokens_mean"]
        self.params = [c for c in self.columns if c.startswith(PARAM_PREFIX)]
        self.combined = {r["trial"]: combined_score(r, self.tasks) for r in self.latest}
        self.direction = {o["metric"]: o["direction"] for o in self.objectives}

    def interval(self, row: dict, metric: str) -> tuple[float, float] | None:
        lo, hi = (row.get(metric + end) for end in INTERVAL_SUFFIXES)
        return (lo, hi) if _finite(lo) and _finite(hi) else None

    def score_text(self, row: dict, metric: str) -> str:
        """`0.512 [0.41, 0.61]`: a score with its interval when the leaderboard has one."""
        interval = self.interval(row, metric)
        return _num(row.get(metric)) + (f" [{_num(interval[0])}, {_num(interval[1])}]" if interval else "")

    def hover(self, row: dict) -> str:
        """The hover text of a trial: trial, rung, status, scores with intervals, free coefficients."""
        lines = [f"<b>trial {row['trial']}</b> [{_esc(row['recipe_hash'][:8])}] {row['status']}"
                 + (f" · {_esc(row['reference'])}" if row.get("reference") else ""),
                 f"rung {row['rung'] + 1}/{len(self.rungs)}, n={row['n_samples']}"]
        lines += [f"{_esc(m)}: {self.score_text(row, m)}" for m in self.shown_metrics()]
        if len(self.tasks) > 1:
            lines.append(f"{COMBINED}: {_num(self.combined.get(row['trial']))}")
        lines += [f"{_esc(p[len(PARAM_PREFIX):])} = {_esc(_value(row.get(p)))}" for p in self.params
                  if row.get(p) is not None]
        return "<br>".join(lines)

    def shown_metrics(self) -> list[str]:
        metrics = [o["metric"] for o in self.objectives]
        return metrics + [t for t in ("tokens_mean",) if t not in metrics and t in self.columns]

    def kind(self, row: dict) -> str:
        if row["pareto"]:
            return "pareto"
        return "full" if row["status"] == "ok" and row["n_samples"] >= self.rungs[-1] else "pruned"


def _figure_html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG, div_id=div_id)


def _front_plots(view: _View) -> str:
    import plotly.graph_objects as go

    plots = []
    for metric in view.tasks or [o["metric"] for o in view.objectives]:
        for tokens in view.tokens:
            points = [r for r in view.latest if _finite(r.get(metric)) and _finite(r.get(tokens))]
            if not points:
                continue
            fig = go.Figure()
            for kind, name in (("pruned", "stopped early by ASHA"), ("full", "full rung"),
                               ("pareto", "Pareto front (all objectives)")):
                group = [r for r in points if view.kind(r) == kind]
                if group:
                    fig.add_trace(_scatter(view, group, metric, tokens, kind, name))
            full = [r for r in points if view.kind(r) != "pruned"]
            directions = [view.direction.get(metric, "maximize"), view.direction.get(tokens, "minimize")]
            front = sorted((r for r, on in zip(full, pareto_mask([[r[metric], r[tokens]] for r in full], directions))
                            if on), key=lambda r: r[tokens])
            if len(front) > 1:
                fig.add_trace(go.Scatter(x=[r[tokens] for r in front], y=[r[metric] for r in front], mode="lines",
                                         line={"color": _COLORS["pareto"], "dash": "dash", "shape": "hv"},
                                         name="front of this pair", hoverinfo="skip"))
            fig.update_layout(title=f"{metric} against {tokens}", xaxis_title=tokens, yaxis_title=metric,
                              height=440, legend={"orientation": "h", "y": -0.2})
            plots.append(_figure_html(fig, f"front-{len(plots)}"))
    if not plots:
        return "<p>No trial has both a score and a token count yet.</p>"
    return "".join(plots)


def _scatter(view: _View, rows: Sequence[dict], metric: str, tokens: str, kind: str, name: str) -> Any:
    import plotly.graph_objects as go

    intervals = [view.interval(r, metric) for r in rows]
    error_y = None
    if any(intervals):
        error_y = {"type": "data", "symmetric": False, "color": _COLORS[kind], "thickness": 1,
                   "array": [i[1] - r[metric] if i else None for r, i in zip(rows, intervals)],
                   "arrayminus": [r[metric] - i[0] if i else None for r, i in zip(rows, intervals)]}
    labels = [(r.get("reference") or "") for r in rows]
    return go.Scatter(x=[r[tokens] for r in rows], y=[r[metric] for r in rows], name=name,
                      mode="markers+text" if any(labels) else "markers", text=labels, textposition="top right",
                      textfont={"color": _COLORS["reference"], "size": 11}, error_y=error_y,
                      marker={"color": _COLORS[kind], "size": 9 if kind == "pareto" else 7},
                      hovertext=[view.hover(r) for r in rows], hoverinfo="text")


def _slice_plots(view: _View) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    params = [p for p in view.params if any(r.get(p) is not None and _finite(view.combined.get(r["trial"]))
                                            for r in view.latest)]
    if not params:
        return ("<p>The space has no free coefficients.</p>" if not view.params
                else "<p>No trial has a combined score yet.</p>")
    cols = min(3, len(params))
    rows_n = math.ceil(len(params) / cols)
    fig = make_subplots(rows=rows_n, cols=cols, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.5 / rows_n, subplot_titles=[p[len(PARAM_PREFIX):] for p in params])
    for i, p in enumerate(params):
        row, col = divmod(i, cols)
        for kind, name in (("pruned", "stopped early by ASHA"), ("full", "full rung")):
            group = [r for r in view.latest if r.get(p) is not None and _finite(view.combined.get(r["trial"]))
                     and (view.kind(r) == "pruned") == (kind == "pruned")]
            if not group:
                continue
            fig.add_trace(go.Scatter(
                x=[r[p] for r in group], y=[view.combined[r["trial"]] for r in group], mode="markers", name=name,
                showlegend=False, marker={"color": _COLORS[kind], "size": 6},
                hovertext=[view.hover(r) for r in group], hoverinfo="text"), row=row + 1, col=col + 1)
    fig.update_yaxes(title_text=COMBINED, col=1)
    fig.update_layout(height=300 * rows_n + 60)
    return ("<p>Each point is a trial at its last rung, its combined score against one coefficient: blue = "
            "evaluated at the full rung, grey = stopped early by ASHA (scored on fewer samples).</p>"
            + _figure_html(fig, "slices"))


def _importance_plot(importances: dict[str, float]) -> str:
    import plotly.graph_objects as go

    if not importances:
        return "<p>Not enough trials evaluated at the full rung to estimate importances.</p>"
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker={"color": _COLORS["full"]}, text=[f"{v:.2f}" for _, v in items],
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(height=120 + 28 * len(items), xaxis_title=f"importance for the {COMBINED}")
    table = "".join(f"<tr><td>{_esc(k)}</td><td class='num'>{v:.3f}</td></tr>" for k, v in reversed(items))
    return (_figure_html(fig, "importances")
            + f"<details><summary>as a table</summary><table><tr><th>parameter</th><th>importance</th></tr>"
              f"{table}</table></details>")


def _savings(view: _View) -> str:
    import plotly.graph_objects as go

    trials = [r for r in view.latest if r["status"] != "failed"]
    by_trial: dict[int, list[dict]] = {}
    for r in view.rows:
        by_trial.setdefault(r["trial"], []).append(r)
    # a trial's rungs are nested question subsets (rung 2n re-uses rung n's answers): it evaluates as many
    # samples as its largest rung it did not take from the cache
    evaluated = sum(max((r["n_samples"] for r in by_trial[t["trial"]] if not r["cached"]), default=0) for t in trials)
    reused = sum(max((r["n_samples"] for r in by_trial[t["trial"]] if r["cached"]), default=0) for t in trials)
    all_full = len(trials) * view.rungs[-1]
    saved = 1.0 - evaluated / all_full if all_full else 0.0
    eval_s = sum(r["eval_s"] or 0.0 for r in view.rows if not r["cached"])
    text = (f"<p>Samples evaluated: <b>{evaluated}</b> ({reused} more reused from identical recipes). Evaluating "
            f"all {len(trials)} trials at the full rung ({view.rungs[-1]} samples) would take <b>{all_full}</b>: "
            f"ASHA saved <b>{saved:.0%}</b> of the evaluation. Evaluation time spent: {eval_s:.1f} s.</p>")
    reached = [sum(1 for r in view.rows if r["rung"] == k and r["status"] != "failed") for k in range(len(view.rungs))]
    labels = [f"rung {k + 1}: n={n}" for k, n in enumerate(view.rungs)]
    fig = go.Figure(go.Bar(x=labels, y=reached, marker={"color": _COLORS["full"]}, text=reached,
                           hovertemplate="%{x}: %{y} trials<extra></extra>"))
    fig.update_layout(height=300, yaxis_title="trials evaluated", title="trials reaching each rung")
    table = "".join(f"<tr><td>{label}</td><td class='num'>{n}</td></tr>" for label, n in zip(labels, reached))
    return (text + _figure_html(fig, "savings")
            + f"<table><tr><th>rung</th><th>trials evaluated</th></tr>{table}</table>")


def _best_table(view: _View, top: int = 10) -> str:
    if not view.full:
        return "<p>No trial has been evaluated at the full rung yet.</p>"
    ranked = [r for r in view.full if _finite(view.combined.get(r["trial"]))]
    best = sorted(ranked, key=lambda r: -view.combined[r["trial"]])[:top] if view.tasks else view.full[:top]
    metrics = view.shown_metrics()
    head = "".join(f"<th>{_esc(m)}</th>" for m in metrics)
    body = []
    for r in best:
        cells = "".join(f"<td class='num'>{view.score_text(r, m)}</td>" for m in metrics)
        coefficients = {p[len(PARAM_PREFIX):]: r.get(p) for p in view.params if r.get(p) is not None}
        recipe = json.dumps(json.loads(r["recipe"]), indent=1)
        body.append(f"<tr><td>{r['trial']}</td><td>{'yes' if r['pareto'] else ''}</td>"
                    f"<td class='num'>{_num(view.combined.get(r['trial']))}</td>{cells}"
                    f"<td>{_esc(r.get('reference') or '')}</td><td><details><summary>{r['recipe_hash']}</summary>"
                    f"<pre>{_esc(json.dumps(coefficients, indent=1))}</pre><pre>{_esc(recipe)}</pre></details></td></tr>")
    return (f"<p>The best {len(best)} trials at the full rung by {COMBINED}; scores with their 95% intervals "
            f"where the leaderboard has them.</p><table><tr><th>trial</th><th>Pareto</th><th>{COMBINED}</th>{head}"
            f"<th>reference</th><th>coefficients and recipe</th></tr>" + "".join(body) + "</table>"
            + _winner_gaps_table(view))


def _winner_gaps_table(view: _View) -> str:
    """The confirmed winners' paired gaps to each parent (`leaderboard.winner_gaps`), when there are any."""
    found = winner_gaps(view.latest, [o["metric"] for o in view.objectives])
    if not found:
        return ""
    metrics = list(dict.fromkeys(m for _, _, gaps in found for m in gaps))
    head = "".join(f"<th>{_esc(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{winner['trial']}</td><td>{_esc(parent['reference'])}</td>"
        + "".join(f"<td class='num'>{_gap_text(gaps.get(m))}</td>" for m in metrics) + "</tr>"
        for winner, parent, gaps in found)
    return ("<p>The winner after confirmation against each parent: the gap in each score on the same "
            "questions, with its paired 95% interval (a lead is beyond the noise when the interval lies above "
            f"0).</p><table><tr><th>winner</th><th>parent</th>{head}</tr>{body}</table>")


def _gap_text(gap: tuple[float, float, float] | None) -> str:
    return "-" if gap is None else f"{gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]"


def _trials_table(view: _View) -> str:
    metrics = view.shown_metrics()
    head = "".join(f"<th>{_esc(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{r['trial']}</td><td>{r['status']}</td><td class='num'>{r['n_samples']}</td>"
        f"<td>{'yes' if r['pareto'] else ''}</td><td class='num'>{_num(view.combined.get(r['trial']))}</td>"
        + "".join(f"<td class='num'>{view.score_text(r, m)}</td>" for m in metrics)
        + f"<td>{_esc(r.get('reference') or '')}</td></tr>"
        for r in sorted(view.latest, key=lambda r: r["trial"]))
    return (f"<details open><summary>{len(view.latest)} trials, each at its last rung</summary><table><tr><th>trial"
            f"</th><th>status</th><th>n</th><th>Pareto</th><th>{COMBINED}</th>{head}<th>reference</th></tr>{body}"
            f"</table></details>")


def _study_importances(sweep: Path, table: Any) -> dict[str, float] | None:
    """Optuna's importances on the sweep's study for the combined score, or None."""
    meta_file = sweep / "sweep.json"
    if not meta_file.is_file():
        return None
    import optuna

    meta = json.loads(meta_file.read_text())
    objectives = leaderboard_meta(table)["objectives"]
    tasks = set(task_metrics(objectives))
    indices = [i for i, o in enumerate(objectives) if o["metric"] in tasks] or [0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, target=lambda t: sum(t.values[i] for i in indices) / len(indices))
    except (ValueError, RuntimeError, KeyError, ImportError):
        return None  # too few complete trials, or no common parameters
    return dict(found) or None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "-"


def _value(value: Any) -> str:
    return _num(value) if isinstance(value, float) else str(value)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
