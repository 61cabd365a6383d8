"""The HTML report: self-contained Plotly (inlined, no network), a Pareto front for every task metric
against the token objective with hover and interval bars, slices of the combined score, importances
(from the Optuna study, or estimated), ASHA's savings, static tables; and drawn in headless Chromium."""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess

import optuna
import pytest

from alloy.cli import main
from alloy.search.leaderboard import Leaderboard, read_leaderboard
from alloy.search.report import correlation_importances, render_report, write_report
from tests.boards import make_board

TASKS = ["aime24/exact_match", "gpqa_diamond/exact_match", "livecodebench/pass@1"]
OBJECTIVES = [*({"metric": m, "direction": "maximize"} for m in TASKS), {"metric": "tokens_mean", "direction": "minimize"}]
RUNGS = [4, 16]


def three_task_board(path) -> Leaderboard:
    """Eight trials over three task metrics and tokens, with 95% intervals and two coefficients (one
    numeric, one a method choice): ok, pruned (stopped at rung 1), failed, a starting point."""
    rng = random.Random(0)
    board = Leaderboard(path, OBJECTIVES, RUNGS)
    for trial in range(8):
        status = "failed" if trial == 7 else "pruned" if trial in (2, 5) else "ok"
        weight = round(0.1 + 0.1 * trial, 2)
        for rung in range(1 if status != "ok" else 2):
            scores = {m: None if status == "failed" else round(min(1.0, weight * (k + 1) / 3 + rng.random() / 10), 3)
                      for k, m in enumerate(TASKS)}
            row = {"trial": trial, "trial_id": f"t{trial}", "recipe_hash": f"{trial:08d}abcdef", "status": status,
                   "recipe": json.dumps({"merge_method": "linear", "w": weight}), "error": None, "rung": rung,
                   "n_samples": RUNGS[rung], "cached": trial == 6, "reference": "uniform" if trial == 0 else None,
                   "tokens_mean": None if status == "failed" else 1000.0 - 80 * trial + 30 * rung,
                   "merge_s": 0.5, "eval_s": 2.0, "param.default.weight.A": weight,
                   "param.experts.merge_method": "ties" if trial % 2 else "linear", **scores}
            if status != "failed":
                row.update({f"{m}.lo": max(0.0, v - 0.1) for m, v in scores.items()})
                row.update({f"{m}.hi": min(1.0, v + 0.1) for m, v in scores.items()})
            if status == "failed":
                row["error"] = "RuntimeError: out of memory"
            board.upsert(row)
    return board


@pytest.fixture
def report_page(tmp_path) -> str:
    three_task_board(tmp_path / "leaderboard.parquet").write()
    return write_report(tmp_path).read_text()


def figure(page: str, div_id: str) -> tuple[list[dict], dict]:
    """The traces and the layout of one Plotly figure of the page."""
    call = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert call, div_id
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(page, call.end())
    layout, _ = decoder.raw_decode(page, re.compile(r"\s*,\s*").match(page, end).end())
    return data, layout


def figure_data(page: str, div_id: str) -> list[dict]:
    """The traces of one Plotly figure of the page."""
    return figure(page, div_id)[0]


def test_report_is_self_contained_with_every_section(report_page):
    page = report_page
    for section in ("Pareto front", "Combined score against each free coefficient", "Parameter importances",
                    "Evaluation saved by ASHA", "Best recipes", "Every trial", "Failed trials"):
        assert f"<h2>{section}</h2>" in page, section
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=['\"]?http", page)   # nothing loaded from elsewhere
    assert "Plotly.newPlot" in page and len(page) > 1_000_000                       # plotly.js is inlined
    assert page.count("Plotly.newPlot(") == 3 + 3                                   # 3 fronts, slices, importances, ASHA
    assert "RuntimeError: out of memory" in page and "<noscript>" in page


def test_a_front_for_each_task_metric_with_hover_and_intervals(report_page):
    for i, metric in enumerate(TASKS):
        traces, layout = figure(report_page, f"front-{i}")
        assert layout["title"]["text"] == f"{metric} against tokens_mean"
        names = {t["name"] for t in traces}
        assert {"stopped early by ASHA", "full rung", "Pareto front (all objectives)"} <= names
        points = [t for t in traces if t["mode"].startswith("markers")]
        assert sorted(n for t in points for n in range(len(t["x"]))) and sum(len(t["x"]) for t in points) == 7
        for trace in points:
            for y, up, down, text in zip(trace["y"], trace["error_y"]["array"], trace["error_y"]["arrayminus"],
                                         trace["hovertext"]):
                assert up >= 0 and down >= 0 and up + down > 0                    # the interval around the score
                assert re.search(r"trial \d+", text) and "rung " in text and "default.weight.A = " in text
                assert re.search(re.escape(metric) + r": [\d.]+ \[[\d.]+, [\d.]+\]", text)
                assert "experts.merge_method = " in text and "combined score: " in text
    assert "uniform" in json.dumps(figure_data(report_page, "front-0"))          # the starting point is labelled


def test_slices_plot_the_combined_score(report_page):
    traces = figure_data(report_page, "slices")
    numeric = [t for t in traces if t.get("xaxis", "x") == "x"]
    categorical = [t for t in traces if t.get("xaxis") == "x2"]
    assert numeric and categorical and {x for t in categorical for x in t["x"]} == {"linear", "ties"}
    board = {r["trial"]: r for r in three_task_board("unused").rows() if r["latest"]}
    for trace in numeric:
        for x, y, text in zip(trace["x"], trace["y"], trace["hovertext"]):
            trial = int(re.search(r"trial (\d+)", text).group(1))
            assert x == board[trial]["param.default.weight.A"]
            assert y == pytest.approx(sum(board[trial][m] for m in TASKS) / 3)    # the mean of the task scores


def test_static_tables_and_savings(tmp_path, report_page):
    best = report_page.split("<h2>Best recipes</h2>")[1].split("<h2>")[0]
    assert best.count("<tr>") == 1 + 5                                           # ok trials 0, 1, 3, 4, 6
    assert "0.1 [" not in best and re.search(r"\d\.\d+ \[\d\.\d+, \d\.\d+\]", best)
    trials = report_page.split("<h2>Every trial</h2>")[1].split("<h2>")[0]
    assert trials.count("<tr>") == 1 + 8 and "failed" in trials and "pruned" in trials
    # a trial evaluates its largest uncached rung (rung 16 re-uses rung 4's answers): ok trials 0, 1, 3, 4
    # evaluate 16 each, pruned 2 and 5 evaluate 4 each, trial 6 was cached; 7 trials at the full rung: 112
    assert "Samples evaluated: <b>72</b> (16 more reused" in report_page and "would take <b>112</b>" in report_page
    assert "<b>36%</b>" in report_page

    make_board(tmp_path / "small" / "leaderboard.parquet").write()              # one task metric, no intervals
    page = write_report(tmp_path / "small").read_text()
    assert page.count("Plotly.newPlot(") == 4
    assert figure(page, "front-0")[1]["title"]["text"] == "aime24/exact_match against tokens_mean"


def test_importances_fallback_and_from_the_study(tmp_path):
    rows = [{"param.x": float(i), "param.y": float((i * 7) % 5), "param.m": "linear", "score": float(i)}
            for i in range(10)]
    found = correlation_importances(rows, ["param.x", "param.y", "param.m"], "score")
    assert list(found)[0] == "x" and abs(sum(found.values()) - 1.0) < 1e-9 and "m" not in found

    make_board(tmp_path / "leaderboard.parquet").write()
    study = optuna.create_study(study_name="alloy", storage=f"sqlite:///{tmp_path / 'study.db'}",
                                directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("default.weights.s0", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1),
                              1.0), n_trials=12)
    (tmp_path / "sweep.json").write_text(json.dumps({"storage": f"sqlite:///{tmp_path / 'study.db'}",
                                                     "study_name": "alloy"}))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    table = page.split("<h2>Parameter importances</h2>")[1].split("<h2>")[0].split("as a table")[1]
    assert table.index("default.weights.s0") < table.index("noise")
    plain = render_report(read_leaderboard(tmp_path), {})
    assert "Not enough trials" in plain


# --------------------------------------------------------------------------------------------------
# In a real browser: the plots draw, no JavaScript error, hover works, with every network fetch refused.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); __consoleError(...args); };
window.addEventListener('load', () => setTimeout(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const front = document.getElementById('front-0');
  Plotly.Fx.hover(front, [{curveNumber: 1, pointNumber: 0}]);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({errors: window.__errors,
    plots: plots.map(p => ({id: p.id, svg: p.querySelectorAll('.main-svg').length,
                           marks: p.querySelectorAll('.scatterlayer .point, .barlayer .point').length})),
    hover: front.querySelector('.hoverlayer').textContent});
  document.body.appendChild(out);
}, 300));
</script>"""


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_report_draws_in_headless_chromium(tmp_path, report_page):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here (make browser installs it on Debian)")
    page = tmp_path / "probed.html"
    page.write_text(report_page.replace("<head>", "<head>" + PROBE, 1))
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--proxy-server=127.0.0.1:9",
                          "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    probe = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert probe, run.stderr[-2000:]
    found = json.loads(probe.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                       .replace("&amp;", "&"))
    assert found["errors"] == []
    plots = {p["id"]: p for p in found["plots"]}
    assert set(plots) == {"front-0", "front-1", "front-2", "slices", "importances", "savings"}
    assert all(p["svg"] >= 1 and p["marks"] > 0 for p in plots.values()), plots
    assert plots["front-0"]["marks"] >= 7
    assert "trial" in found["hover"] and "aime24/exact_match" in found["hover"] and "[" in found["hover"]
