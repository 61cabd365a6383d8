"""Leaderboards for tests: a small board of one task objective and the token objective over two rungs,
with rows of every status."""
from __future__ import annotations

import json
from pathlib import Path

from alloy.search.leaderboard import Leaderboard

OBJECTIVES = [{"metric": "aime24/exact_match", "direction": "maximize"},
              {"metric": "tokens_mean", "direction": "minimize"}]
RUNGS = [4, 16]


def row(trial, rung, status, score, tokens, **extra) -> dict:
    """One leaderboard row of trial `trial` at `rung` (its score and mean tokens; `extra` overrides)."""
    return {"trial": trial, "trial_id": f"t{trial}", "recipe_hash": f"h{trial}", "recipe": json.dumps({"t": trial}),
            "status": status, "error": None, "rung": rung, "n_samples": RUNGS[rung], "cached": False,
            "reference": None, "aime24/exact_match": score, "tokens_mean": tokens, "merge_s": 1.0, "eval_s": 2.0,
            "param.default.weight.A": 0.1 * trial, "param.default.merge_method": "linear", **extra}


def make_board(path: Path) -> Leaderboard:
    """A board of five trials: a uniform reference, a front member, a pruned, a dominated and a failed one."""
    board = Leaderboard(path, OBJECTIVES, RUNGS)
    board.upsert(row(0, 0, "ok", 0.5, 900.0, reference="uniform"))
    board.upsert(row(0, 1, "ok", 0.6, 1000.0, reference="uniform"))
    board.upsert(row(1, 0, "ok", 0.4, 500.0))
    board.upsert(row(1, 1, "ok", 0.45, 600.0))
    board.upsert(row(2, 0, "pruned", 0.9, 100.0))          # best numbers, but stopped at the first rung
    board.upsert(row(3, 0, "ok", 0.3, 1200.0))
    board.upsert(row(3, 1, "ok", 0.3, 1200.0))             # dominated
    board.upsert(row(4, 0, "failed", None, None, error="RuntimeError: out of memory"))
    return board
