"""`alloy inspect MODEL`: a checkpoint's tensor groups with counts, parameters, bytes and dtypes."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a Hugging Face model folder")
    parser.add_argument("--distances", metavar="OTHER", nargs="+",
                        help="also print, per group, how far each OTHER checkpoint is from MODEL "
                             "(relative and rms Frobenius distance); `--distances A B` compares B with A")


def run(args: argparse.Namespace) -> int:
    from alloy.io.checkpoint import Checkpoint
    from alloy.commands.inspection import group_summary, render_distances, render_summary

    from alloy.errors import AlloyError

    model, others = args.model, list(args.distances or [])
    if model is None:
        if len(others) < 2:
            raise AlloyError("name a model folder: `alloy inspect MODEL`, or `alloy inspect --distances A B`")
        model, others = others[0], others[1:]
    ckpt = Checkpoint.open(model)
    print(render_summary(ckpt, group_summary(ckpt)))
    if others:
        others = [Checkpoint.open(p) for p in others]
        print()
        print(render_distances(ckpt, others))
    return 0
