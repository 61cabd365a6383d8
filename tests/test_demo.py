"""The demo pipeline end to end at a small scale: data → backbone → experts → sweep → verdict, a re-run
that reuses everything, and the verdict's rule on made-up leaderboard rows."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from alloy.demo.verdict import Combined, DemoVerdict, combined_interval


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_pipeline_small(tmp_path, capfd):
    from alloy.demo.pipeline import LOG_FILE, DemoScale, run_demo

    scale = DemoScale(n_train=24, n_eval=4, n_format=8, backbone_steps=10, expert_epochs=1, trials=4, rungs=(2, 4))
    out = tmp_path / "demo"
    verdict = run_demo(out, scale=scale)
    printed = capfd.readouterr().out
    assert "everything goes under" in printed and "verdict:" in printed and "alloy export" in printed
    assert "[4/4]" in printed and "done in" in printed
    for noise in ("Loading weights", "PlacementGroup", "TrainingReport", "find_unused_parameters", ", ETA "):
        assert noise not in printed
    assert ", ETA " in (out / LOG_FILE).read_text()  # the sweep's per-trial lines go to the log
    for domain in ("math", "science", "code"):
        assert (out / "experts" / domain / "config.json").is_file()
    rows = pq.read_table(out / "sweep" / "leaderboard.parquet").to_pylist()
    references = {r["reference"] for r in rows if r["reference"]}
    assert references == {"parent:math", "parent:science", "parent:code"}
    ok = [r for r in rows if r["status"] == "ok" and r["n_samples"] == 4]
    assert ok and all(r["aime24/exact_match.lo"] <= r["aime24/exact_match"] <= r["aime24/exact_match.hi"]
                      for r in ok)
    # each row keeps its per-question values (worker → Tune → study → Parquet), which the verdict pairs
    assert all(len(r["aime24/exact_match.questions"]) == 4 and
               sum(r["aime24/exact_match.questions"]) / 4 == pytest.approx(r["aime24/exact_match"]) for r in ok)
    confirmed = {r["trial"] for r in rows if r["rung"] == 2 and r["status"] == "ok"}  # rung 2: the confirmation
    assert verdict.best_trial in confirmed and {0, 1, 2} <= confirmed  # the experts are trials 0-2
    assert set(verdict.experts) == {"math", "science", "code"}
    assert all(e.lo <= e.score <= e.hi for e in verdict.experts.values())
    assert set(verdict.gaps) == {"math", "science", "code"}
    assert all(g.lo <= g.score <= g.hi for g in verdict.gaps.values())
    assert (out / "sweep" / "report.html").is_file()
    assert "[" in (out / "sweep" / "report.html").read_text()

    again = run_demo(out, scale=scale)   # everything is reused: same leaderboard, same verdict
    assert again == verdict
    assert "reused" in capfd.readouterr().out


def test_the_demo_checks_the_sandbox_before_any_training(tmp_path, monkeypatch, capsys):
    from alloy.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap-here"))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "needs bubblewrap (bwrap), which is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_a_demo_folder_made_otherwise_is_refused(tmp_path):
    import json

    from alloy.demo.pipeline import SETTINGS_FILE, DemoScale, check_folder
    from alloy.errors import AlloyError

    scale = DemoScale(n_train=24, trials=4, rungs=(2, 4))
    (tmp_path / "a").mkdir()
    check_folder(tmp_path / "a", 0, scale)  # a new folder: the settings are recorded
    assert json.loads((tmp_path / "a" / SETTINGS_FILE).read_text())["n_train"] == 24
    check_folder(tmp_path / "a", 0, scale)  # the same settings: reused
    with pytest.raises(AlloyError, match=r"other settings \(seed: 0 -> 1\)"):
        check_folder(tmp_path / "a", 1, scale)
    (tmp_path / "old" / "backbone").mkdir(parents=True)  # made before the settings file existed
    with pytest.raises(AlloyError, match="earlier version of the demo"):
        check_folder(tmp_path / "old", 0, scale)


def test_combined_interval_combines_the_task_intervals():
    row = {"a": 0.5, "a.lo": 0.3, "a.hi": 0.7, "b": 1.0, "b.lo": 1.0, "b.hi": 1.0}
    combined = combined_interval(row, ["a", "b"])
    assert combined.score == pytest.approx(0.75)
    assert combined.lo == pytest.approx(0.65, abs=1e-9) and combined.hi == pytest.approx(0.85, abs=1e-9)
    assert combined_interval({"a": 0.2, "b": 0.4}, ["a", "b"]) == Combined(pytest.approx(0.3), pytest.approx(0.3),
                                                                        pytest.approx(0.3))


def test_verdict_says_beats_only_beyond_the_intervals():
    experts = {"math": Combined(0.40, 0.33, 0.47), "code": Combined(0.35, 0.28, 0.42)}
    clear = DemoVerdict(7, Combined(0.60, 0.52, 0.68), experts)
    assert clear.beats_every_expert and "beats every expert" in clear.render()
    close = DemoVerdict(7, Combined(0.50, 0.43, 0.57), experts)
    assert not close.beats("math") and close.beats("code") and not close.beats_every_expert
    assert "does NOT beat" in close.render() and "overlap" in close.render()
    assert not DemoVerdict(None, None, experts).beats_every_expert
    alone = DemoVerdict(7, Combined(0.60, 0.52, 0.68), {})
    assert not alone.beats_every_expert and "no expert alone was scored" in alone.render()
    # with paired gaps (rows that kept their per-question values) the gaps decide
    paired = DemoVerdict(7, Combined(0.50, 0.43, 0.57), experts,
                         {"math": Combined(0.10, 0.02, 0.18), "code": Combined(0.15, -0.01, 0.30)})
    assert paired.beats("math") and not paired.beats("code") and not paired.beats_every_expert
    assert "leads by 0.100 [0.020, 0.180] on the same questions: beyond" in paired.render()
    assert "within the interval" in paired.render()


def test_shipped_demo_space_parses():
    from pathlib import Path

    from alloy.merge.recipe import Recipe
    from alloy.search.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml", check_paths=False)
    assert [label for label, _ in space.start_points()] == ["parent:math", "parent:science", "parent:code"]
    assert space.search.concurrency == 1
    for _, params in space.start_points():
        Recipe.from_dict(space.recipe_for(params))
