"""`alloy demo [--out DIR]`: the whole branch → merge → evaluate pipeline on this machine."""
from __future__ import annotations

import argparse

from alloy.logs import add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="alloy-demo", help="folder for everything the demo makes (default alloy-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the search")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    from alloy.demo.pipeline import run_demo

    run_demo(args.out, args.seed, verbose=args.verbose)
    return 0
