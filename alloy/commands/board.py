"""`alloy board SWEEP`: print a sweep's leaderboard, best first."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="a sweep folder (the --out of `alloy sweep`) or its leaderboard.parquet")
    parser.add_argument("--top", type=int, default=20, help="show the best N trials (0: all; default 20)")
    parser.add_argument("--pareto", action="store_true", help="only the Pareto front (full-rung ok trials)")
    parser.add_argument("--sort", default=None, metavar="METRIC",
                        help="column to rank by (default: the first objective)")
    parser.add_argument("--all-rungs", action="store_true", help="one row per trial and rung, not per trial")
    parser.add_argument("--rebuild", action="store_true",
                        help="regenerate leaderboard.parquet from the sweep's study first")


def run(args: argparse.Namespace) -> int:
    from alloy.errors import AlloyError
    from alloy.search.leaderboard import read_leaderboard, rebuild_leaderboard, render_board, select_rows

    if args.top < 0:
        raise AlloyError(f"--top {args.top}: give a number of trials, 0 or more (0: all)")
    if args.rebuild:
        print(f"rebuilt {rebuild_leaderboard(args.sweep)} from the sweep's study")
    table = read_leaderboard(args.sweep)
    rows = select_rows(table, top=args.top or None, pareto_only=args.pareto, sort=args.sort,
                       all_rungs=args.all_rungs)
    print(render_board(rows, table))
    return 0
