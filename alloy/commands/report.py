"""`alloy report SWEEP`: one self-contained HTML file about a sweep (Pareto front, coefficients,
best recipes, parameter importances, evaluation saved by ASHA)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="a sweep folder (the --out of `alloy sweep`)")
    parser.add_argument("--out", default=None, help="the HTML file to write (default: SWEEP/report.html)")


def run(args: argparse.Namespace) -> int:
    from alloy.search.report import write_report

    path = write_report(args.sweep, args.out)
    print(f"report: {path}")
    return 0
