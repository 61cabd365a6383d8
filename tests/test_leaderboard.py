"""The leaderboard: Pareto flags against brute force, statuses, atomic Parquet writes, the board view."""
from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from alloy.cli import main
from alloy.errors import AlloyError
from alloy.search.leaderboard import (Leaderboard, leaderboard_meta, pareto_mask, read_leaderboard, render_board,
                                      select_rows)
from tests.boards import OBJECTIVES, RUNGS, make_board, row

def brute_front(points, directions):
    signs = [1 if d == "maximize" else -1 for d in directions]
    front = []
    for i, p in enumerate(points):
        dominated = any(all(s * q[k] >= s * p[k] for k, s in enumerate(signs)) and
                        any(s * q[k] > s * p[k] for k, s in enumerate(signs)) for j, q in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def test_pareto_mask_matches_brute_force():
    rng = random.Random(1)
    for directions in (["maximize", "minimize"], ["maximize", "maximize", "minimize"], ["minimize"]):
        for _ in range(20):
            points = [[round(rng.random(), 1) for _ in directions] for _ in range(25)]
            assert pareto_mask(points, directions) == brute_front(points, directions)
    assert pareto_mask([[1.0, float("nan")], [0.5, 2.0]], ["maximize", "minimize"]) == [False, True]


def test_leaderboard_rows_statuses_and_pareto(tmp_path):
    board = make_board(tmp_path / "leaderboard.parquet")
    board.write()
    assert not [p for p in tmp_path.iterdir() if p.name != "leaderboard.parquet"]  # no temporary file left
    table = pq.read_table(tmp_path / "leaderboard.parquet")
    for column in ("trial_id", "recipe_hash", "recipe", "status", "error", "n_samples", "aime24/exact_match",
                   "tokens_mean", "tokens_median", "tokens_p90", "merge_s", "eval_s", "rung", "pareto",
                   "reference", "param.default.weight.A", "param.default.merge_method"):
        assert column in table.column_names, column
    rows = {(r["trial"], r["rung"]): r for r in table.to_pylist()}
    assert len(rows) == 8
    assert {k for k, r in rows.items() if r["pareto"]} == {(0, 1), (1, 1)}
    assert not rows[(2, 0)]["pareto"]                      # pruned trials are never on the front
    assert rows[(0, 0)]["latest"] is False and rows[(0, 1)]["latest"] is True
    assert rows[(4, 0)]["error"] == "RuntimeError: out of memory"
    assert rows[(0, 1)]["reference"] == "uniform"
    assert leaderboard_meta(table) == {"objectives": OBJECTIVES, "rungs": RUNGS}

    # reopening keeps the rows; upserting the same (trial, rung) replaces, never duplicates
    again = Leaderboard.open(tmp_path / "leaderboard.parquet", OBJECTIVES, RUNGS)
    again.upsert(row(3, 1, "running", 0.7, 400.0))
    again.set_status(3, "ok")
    again.write()
    rows = {(r["trial"], r["rung"]): r for r in read_leaderboard(tmp_path).to_pylist()}
    assert len(rows) == 8 and rows[(3, 1)]["aime24/exact_match"] == 0.7
    assert {k for k, r in rows.items() if r["pareto"]} == {(3, 1)}  # 0.7 at 400 tokens dominates both
    with pytest.raises(ValueError):
        again.set_status(3, "great")


def test_board_view(tmp_path, capsys):
    make_board(tmp_path / "leaderboard.parquet").write()
    table = read_leaderboard(tmp_path)
    best = select_rows(table)
    assert [r["trial"] for r in best] == [2, 0, 1, 3, 4]   # latest rows by score; failed (no score) last
    assert [r["trial"] for r in select_rows(table, pareto_only=True)] == [0, 1]
    assert [r["trial"] for r in select_rows(table, sort="tokens_mean", top=2)] == [2, 1]
    assert len(select_rows(table, all_rungs=True)) == 8
    text = render_board(best, table)
    assert text.splitlines()[0].split()[:4] == ["trial", "status", "n", "aime24/exact_match"]
    assert "trial 4 failed: RuntimeError: out of memory" in text
    with pytest.raises(AlloyError, match="no such leaderboard column"):
        select_rows(table, sort="bleu")

    assert main(["board", str(tmp_path), "--pareto"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 3 and "uniform" in out
    assert main(["board", str(tmp_path / "nowhere")]) == 2
    assert "no leaderboard here" in capsys.readouterr().err


def test_score_intervals_are_kept_and_shown(tmp_path):
    from alloy.search.report import render_report

    board = Leaderboard(tmp_path / "lb.parquet", OBJECTIVES, RUNGS)
    board.upsert(row(0, 1, "ok", 0.5, 100.0, **{"n_samples": 16, "aime24/exact_match.lo": 0.28,
                                                  "aime24/exact_match.hi": 0.72}))
    board.upsert(row(1, 1, "ok", 0.25, 90.0, n_samples=16))
    table = read_leaderboard(board.write())
    assert "aime24/exact_match.lo" in table.column_names and "tokens_mean.lo" not in table.column_names
    text = render_board(select_rows(table), table)
    assert "0.5 [0.28, 0.72]" in text and "0.25 " in text and "0.25 [" not in text
    assert "0.5 [0.28, 0.72]" in render_report(table)
    plain = Leaderboard(tmp_path / "plain.parquet", OBJECTIVES, RUNGS, [row(1, 1, "ok", 0.25, 90.0, n_samples=16)])
    assert read_leaderboard(plain.write()).column("aime24/exact_match.lo").to_pylist() == [None]  # none given
