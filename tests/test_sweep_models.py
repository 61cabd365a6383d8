"""An end-to-end sweep with the real runner: tiny MoE parents in the object store, children built in
memory by pooled workers, scored by lm-eval on the real AIME slice; then board, report and export."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from alloy.cli import main
from tests.parents import read_all, write_parents


@pytest.mark.slow
def test_sweep_on_tiny_parents_with_lm_eval(tmp_path, tiny_tokenizer, shared_data, capsys):
    parents = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, n=3, dtype=torch.float32)
    space = {
        "name": "tiny",
        "parents": {"base": "base", "models": {"base": str(parents[0]), "math": str(parents[1]),
                                                "code": str(parents[2])}},
        "default": {"merge_method": "linear", "weights": {"base": 1.0}},
        "groups": {"routed_experts": {"merge_method": ["aoe", "linear"], "weights": "simplex",
                                      "parameters": {"threshold": {"low": 1e-3, "high": 0.5, "log": True}}}},
        "objectives": ["aime24/exact_match", {"metric": "tokens_mean", "direction": "minimize"}],
        "evaluation": {"tasks": ["aime24"], "rungs": [2, 4], "max_gen_toks": 8, "repeats": 2,
                       "data_dir": str(shared_data)},
        "search": {"sampler": "nsga2", "seed": 0, "trials": 5, "concurrency": 1, "resources": {"cpu": 1},
                   "start": ["parents"]},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert {r["status"] for r in rows} <= {"ok", "pruned"} and any(r["status"] == "ok" for r in rows)
    full = [r for r in rows if r["n_samples"] == 4 and r["status"] == "ok" and r["rung"] == 1]
    assert full and all(0.0 <= r["aime24/exact_match"] <= 1.0 and r["tokens_mean"] > 0 for r in full)
    assert all(r["merge_s"] >= 0 and r["eval_s"] > 0 for r in rows if not r["cached"])
    assert any(r["pareto"] for r in full) and not any(r["pareto"] for r in rows if r["status"] != "ok")
    assert any(r["merge_s"] > 0 for r in rows)  # children were built (starting points are the parents)
    for r in full:                              # the evaluator's intervals reach the leaderboard
        assert r["aime24/exact_match.lo"] <= r["aime24/exact_match"] <= r["aime24/exact_match.hi"]
    confirmed = [r for r in rows if r["rung"] == 2]  # the confirmation: 4 x 4 samples, parents included
    assert confirmed and all(r["n_samples"] == 16 and r["aime24/exact_match.hi"] is not None for r in confirmed)
    # sampled answers (2 repeats): the confirmation drew 2 new ones per question, repeats 2 and 3
    assert all((out / "cache" / r["recipe_hash"] / "16.r2-3.json").is_file() for r in confirmed)
    assert any(r["best"] for r in confirmed)
    capsys.readouterr()

    assert main(["board", str(out), "--top", "3"]) == 0
    assert "aime24/exact_match" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    html = next(out.glob("*.html")).read_text()
    assert "<svg" in html and "Pareto" in html

    best = full[0]
    assert main(["export", str(out), str(best["trial"]), str(tmp_path / "child"), "--quiet"]) == 0
    card = (tmp_path / "child" / "README.md").read_text()
    assert "aime24/exact_match" in card
    recipe = yaml.safe_load((tmp_path / "child" / "alloy_recipe.yaml").read_text())
    assert json.loads(best["recipe"])["merge_method"] == recipe["merge_method"]
    assert set(read_all(tmp_path / "child")) == set(read_all(parents[0]))
