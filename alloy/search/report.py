"""The HTML report of a sweep: one self-contained file (inline SVG, no scripts, no network).

Sections: the Pareto front (score against output tokens), the score against each free coefficient,
the best recipes, parameter importances (Optuna's `get_param_importances` on the study, or the
absolute rank correlation with the score when the study cannot give them), and how much evaluation
ASHA saved (samples evaluated against every trial evaluated at the full rung).
"""
from __future__ import annotations

import html
import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

from alloy.io.atomic import atomic_write_text
from alloy.search.leaderboard import PARAM_PREFIX, leaderboard_meta, read_leaderboard
from alloy.search.space import is_token_metric

_W, _H, _PAD = 560, 340, 52
_SMALL_W, _SMALL_H = 300, 210
_COLORS = {"ok": "#1f77b4", "pareto": "#d62728", "pruned": "#b0b0b0", "reference": "#2ca02c"}


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
    meta = leaderboard_meta(table)
    objectives = meta["objectives"]
    rungs = meta["rungs"]
    rows = table.to_pylist()
    latest = [r for r in rows if r["latest"]]
    full = [r for r in latest if r["status"] == "ok" and r["n_samples"] >= rungs[-1]]
    score = next((o for o in objectives if not is_token_metric(o["metric"])), objectives[0])
    tokens = next((o["metric"] for o in objectives if is_token_metric(o["metric"])), "tokens_mean")
    params = [c for c in table.column_names if c.startswith(PARAM_PREFIX)]
    if importances is None:
        importances = correlation_importances(full, params, score["metric"])

    counts = {s: sum(r["status"] == s for r in latest) for s in ("ok", "pruned", "failed", "running")}
    parts = [
        f"<h1>Sweep report</h1><p>{len(latest)} trials: {counts['ok']} ok, {counts['pruned']} pruned by ASHA, "
        f"{counts['failed']} failed{', ' + str(counts['running']) + ' running' if counts['running'] else ''}. "
        f"Objectives: {', '.join(_esc(o['metric']) + ' (' + o['direction'] + ')' for o in objectives)}. "
        f"Rungs: {rungs} samples.</p>",
        "<h2>Pareto front</h2>",
        _front_svg(latest, score["metric"], tokens, rungs[-1]),
        "<p>Each point is a trial at its last rung: blue = evaluated at the full rung, red = on the Pareto front "
        "of the objectives, grey = stopped early by ASHA, green label = a starting point.</p>",
        "<h2>Score against each free coefficient</h2>",
        _coefficient_plots(latest, params, score["metric"], rungs[-1]),
        "<h2>Best recipes</h2>",
        _best_table(full, objectives, score, tokens),
        "<h2>Parameter importances</h2>",
        _importance_bars(importances),
        "<h2>Evaluation saved by ASHA</h2>",
        _savings(rows, latest, rungs),
    ]
    failed = [r for r in latest if r["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(
            f"<li>trial {r['trial']}: {_esc(r['error'] or '')}</li>" for r in failed) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "svg{background:#fff;margin:4px}pre{font-size:12px;background:#f6f6f6;padding:6px}"
             ".grid{display:flex;flex-wrap:wrap}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>alloy sweep report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def correlation_importances(rows: Sequence[dict], params: Sequence[str], metric: str) -> dict[str, float]:
    """|Spearman rank correlation| of each numeric parameter with `metric`, normalized to sum 1."""
    out = {}
    for p in params:
        pairs = [(r[p], r[metric]) for r in rows if isinstance(r.get(p), (int, float)) and _finite(r.get(metric))
                 and _finite(r.get(p))]
        if len(pairs) < 3:
            continue
        rho = _pearson(_ranks([a for a, _ in pairs]), _ranks([b for _, b in pairs]))
        out[p[len(PARAM_PREFIX):]] = abs(rho)
    total = sum(out.values())
    return {k: v / total for k, v in sorted(out.items(), key=lambda kv: -kv[1])} if total > 0 else out


# --------------------------------------------------------------------------------------------------
def _study_importances(sweep: Path, table: Any) -> dict[str, float] | None:
    """Optuna's importances on the sweep's study for the first score objective, or None."""
    meta_file = sweep / "sweep.json"
    if not meta_file.is_file():
        return None
    import optuna

    meta = json.loads(meta_file.read_text())
    objectives = leaderboard_meta(table)["objectives"]
    index = next((i for i, o in enumerate(objectives) if not is_token_metric(o["metric"])), 0)
    sign = -1.0 if objectives[index]["direction"] == "maximize" else 1.0  # the evaluator ranks low values
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=meta["study_name"], storage=meta["storage"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[index])
    except (ValueError, RuntimeError, KeyError, ImportError):
        return None  # too few complete trials, or no common parameters
    return dict(found) or None


def _front_svg(rows: Sequence[dict], score: str, tokens: str, full_n: int) -> str:
    points = [r for r in rows if _finite(r.get(score)) and _finite(r.get(tokens))]
    if not points:
        return "<p>No trial has both a score and a token count yet.</p>"
    xs, ys = [r[tokens] for r in points], [r[score] for r in points]
    frame = _Frame(xs, ys, _W, _H)
    out = [frame.axes(tokens, score)]
    front = sorted((r for r in points if r["pareto"]), key=lambda r: r[tokens])
    if len(front) > 1:
        out.append("<polyline fill='none' stroke='#d62728' stroke-dasharray='4 3' points='"
                   + " ".join(f"{frame.x(r[tokens]):.1f},{frame.y(r[score]):.1f}" for r in front) + "'/>")
    for r in sorted(points, key=lambda r: (r["pareto"], r["status"] == "ok")):
        color = _COLORS["pareto"] if r["pareto"] else _COLORS["ok"] if r["n_samples"] >= full_n and \
            r["status"] == "ok" else _COLORS["pruned"]
        out.append(f"<circle cx='{frame.x(r[tokens]):.1f}' cy='{frame.y(r[score]):.1f}' r='4' fill='{color}'>"
                   f"<title>trial {r['trial']} ({r['status']}, n={r['n_samples']}): {score}={r[score]:.4g}, "
                   f"{tokens}={r[tokens]:.4g}</title></circle>")
        if r.get("reference"):
            out.append(f"<text x='{frame.x(r[tokens]) + 6:.1f}' y='{frame.y(r[score]) - 6:.1f}' font-size='11' "
                       f"fill='{_COLORS['reference']}'>{_esc(r['reference'])}</text>")
    return frame.svg("".join(out))


def _coefficient_plots(rows: Sequence[dict], params: Sequence[str], score: str, full_n: int) -> str:
    if not params:
        return "<p>The space has no free coefficients.</p>"
    plots = []
    for p in params:
        points = [r for r in rows if r.get(p) is not None and _finite(r.get(score))]
        if not points:
            continue
        categorical = any(isinstance(r[p], str) for r in points)
        categories = sorted({str(r[p]) for r in points}) if categorical else []
        xs = [categories.index(str(r[p])) if categorical else r[p] for r in points]
        frame = _Frame(xs, [r[score] for r in points], _SMALL_W, _SMALL_H, categories=categories)
        dots = "".join(
            f"<circle cx='{frame.x(x):.1f}' cy='{frame.y(r[score]):.1f}' r='3' fill='"
            f"{_COLORS['ok'] if r['status'] == 'ok' and r['n_samples'] == full_n else _COLORS['pruned']}'>"
            f"<title>trial {r['trial']}: {_esc(str(r[p]))}</title></circle>" for x, r in zip(xs, points))
        plots.append(frame.svg(frame.axes(p[len(PARAM_PREFIX):], score) + dots))
    return "<div class='grid'>" + "".join(plots) + "</div>"


def _best_table(rows: Sequence[dict], objectives: Sequence[dict], score: dict, tokens: str, top: int = 10) -> str:
    if not rows:
        return "<p>No trial has been evaluated at the full rung yet.</p>"
    sign = -1.0 if score["direction"] == "maximize" else 1.0
    best = sorted((r for r in rows if _finite(r.get(score["metric"]))), key=lambda r: sign * r[score["metric"]])[:top]
    metrics = [o["metric"] for o in objectives] + ([] if tokens in [o["metric"] for o in objectives] else [tokens])
    head = "".join(f"<th>{_esc(m)}</th>" for m in metrics)
    body = []
    for r in best:
        cells = "".join(f"<td>{_num(r.get(m))}</td>" for m in metrics)
        recipe = json.dumps(json.loads(r["recipe"]), indent=1)
        body.append(f"<tr><td>{r['trial']}</td><td>{'yes' if r['pareto'] else ''}</td>{cells}"
                    f"<td>{_esc(r.get('reference') or '')}</td><td><details><summary>{r['recipe_hash']}</summary>"
                    f"<pre>{_esc(recipe)}</pre></details></td></tr>")
    return (f"<table><tr><th>trial</th><th>Pareto</th>{head}<th>reference</th><th>recipe</th></tr>"
            + "".join(body) + "</table>")


def _importance_bars(importances: dict[str, float]) -> str:
    if not importances:
        return "<p>Not enough trials evaluated at the full rung to estimate importances.</p>"
    items = sorted(importances.items(), key=lambda kv: -kv[1])
    width, bar_h = 640, 18
    label_w = 260
    svg = []
    for i, (name, value) in enumerate(items):
        y = i * (bar_h + 4)
        length = value * (width - label_w - 60)
        svg.append(f"<text x='{label_w - 6}' y='{y + 13}' font-size='12' text-anchor='end'>{_esc(name)}</text>"
                   f"<rect x='{label_w}' y='{y}' width='{max(1.0, length):.1f}' height='{bar_h}' "
                   f"fill='{_COLORS['ok']}'/><text x='{label_w + length + 4:.1f}' y='{y + 13}' "
                   f"font-size='12'>{value:.2f}</text>")
    height = len(items) * (bar_h + 4)
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{''.join(svg)}</svg>"


def _savings(rows: Sequence[dict], latest: Sequence[dict], rungs: Sequence[int]) -> str:
    evaluated = sum(r["n_samples"] for r in rows if not r["cached"] and r["status"] != "failed")
    reused = sum(r["n_samples"] for r in rows if r["cached"])
    trials = [r for r in latest if r["status"] != "failed"]
    all_full = len(trials) * rungs[-1]
    saved = 1.0 - evaluated / all_full if all_full else 0.0
    eval_s = sum(r["eval_s"] or 0.0 for r in rows if not r["cached"])
    return (f"<p>Samples evaluated: <b>{evaluated}</b> ({reused} more reused from identical recipes). Evaluating "
            f"all {len(trials)} trials at the full rung ({rungs[-1]} samples) would take <b>{all_full}</b>: "
            f"ASHA saved <b>{saved:.0%}</b> of the evaluation. Evaluation time spent: {eval_s:.1f} s.</p>")


class _Frame:
    """Maps data to SVG coordinates and draws axes with a few ticks."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int,
                 categories: Sequence[str] = ()):
        self.width, self.height, self.categories = width, height, list(categories)
        self.x0, self.x1 = _span(xs)
        self.y0, self.y1 = _span(ys)

    def x(self, value: float) -> float:
        return _PAD + (value - self.x0) / (self.x1 - self.x0) * (self.width - _PAD - 12)

    def y(self, value: float) -> float:
        return self.height - _PAD + 12 - (value - self.y0) / (self.y1 - self.y0) * (self.height - _PAD - 12)

    def axes(self, x_label: str, y_label: str) -> str:
        bottom, left = self.height - _PAD + 12, _PAD
        out = [f"<line x1='{left}' y1='{bottom}' x2='{self.width - 8}' y2='{bottom}' stroke='#444'/>",
               f"<line x1='{left}' y1='10' x2='{left}' y2='{bottom}' stroke='#444'/>"]
        xticks = [(i, c) for i, c in enumerate(self.categories)] if self.categories else \
            [(v, f"{v:.3g}") for v in _ticks(self.x0, self.x1)]
        for value, label in xticks:
            out.append(f"<text x='{self.x(value):.1f}' y='{bottom + 14}' font-size='10' text-anchor='middle'>"
                       f"{_esc(label)}</text>")
        for value in _ticks(self.y0, self.y1):
            out.append(f"<text x='{left - 4}' y='{self.y(value) + 3:.1f}' font-size='10' text-anchor='end'>"
                       f"{value:.3g}</text>")
        out.append(f"<text x='{(left + self.width) / 2:.0f}' y='{self.height - 8}' font-size='12' "
                   f"text-anchor='middle'>{_esc(x_label)}</text>")
        out.append(f"<text x='12' y='{bottom / 2:.0f}' font-size='12' text-anchor='middle' "
                   f"transform='rotate(-90 12 {bottom / 2:.0f})'>{_esc(y_label)}</text>")
        return "".join(out)

    def svg(self, body: str) -> str:
        return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width}' height='{self.height}' "
                f"viewBox='0 0 {self.width} {self.height}'>{body}</svg>")


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return low - 0.5, high + 0.5
    margin = 0.05 * (high - low)
    return low - margin, high + margin


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else 0.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "-"


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
