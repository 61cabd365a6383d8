"""`alloy demo [--out DIR]`: the whole branch → merge → evaluate pipeline on this machine."""
from __future__ import annotations

import argparse

from alloy.logs import add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="alloy-demo", help="folder for everything the demo makes (default alloy-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the search")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alloy.demo.pipeline import run_demo
    from alloy.logs import LOG_FILE, quiet_output

    with quiet_output(Path(args.out) / LOG_FILE, args.verbose):
        run_demo(args.out, args.seed)
    return 0
