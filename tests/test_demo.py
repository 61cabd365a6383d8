"""The demo pipeline end to end at a small scale: data → backbone → experts → sweep → verdict, and a
re-run that reuses everything."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest


@pytest.mark.timeout(900)
def test_demo_pipeline_small(tmp_path, capsys):
    from alloy.demo.pipeline import DemoScale, run_demo

    scale = DemoScale(n_train=12, n_eval=4, backbone_steps=20, branch_epochs=1, trials=4, rungs=(2, 4))
    out = tmp_path / "demo"
    verdict = run_demo(out, scale=scale)
    printed = capsys.readouterr().out
    assert "everything goes under" in printed and "beats every expert" in printed
    for domain in ("math", "science", "code"):
        assert (out / "experts" / domain / "config.json").is_file()
    rows = pq.read_table(out / "sweep" / "leaderboard.parquet").to_pylist()
    references = {r["reference"] for r in rows if r["reference"]}
    assert references == {"parent:math", "parent:science", "parent:code"}
    assert set(verdict.experts) == {"math", "science", "code"}
    assert (out / "sweep" / "report.html").is_file()

    again = run_demo(out, scale=scale)   # everything is reused: same leaderboard, same verdict
    assert again == verdict
    assert "[2/4]" in capsys.readouterr().out


def test_shipped_demo_space_parses():
    from pathlib import Path

    from alloy.merge.recipe import Recipe
    from alloy.search.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml", check_paths=False)
    assert [label for label, _ in space.start_points()] == ["parent:math", "parent:science", "parent:code"]
    for _, params in space.start_points():
        Recipe.from_dict(space.recipe_for(params))
