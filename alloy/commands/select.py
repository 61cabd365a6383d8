"""`alloy select`: an s1-style subset of an `alloy traces` folder, with a summary table."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alloy select`."""
    parser.add_argument("traces", metavar="TRACES_DIR", help="a folder written by alloy traces")
    parser.add_argument("--out", required=True, metavar="DIR", help="DIR/DOMAIN.jsonl for alloy branch, DIR/summary.json")
    parser.add_argument("--student", default=None, metavar="DIR",
                        help="alloy traces folder of a reference student on the same problems: a question it fails "
                             "counts as hard")
    parser.add_argument("--budget", action="append", default=[], metavar="DOMAIN=N", help="questions for a domain")
    parser.add_argument("--per-domain", type=int, default=None, metavar="N",
                        help="questions per domain without a --budget (default: all that pass)")
    parser.add_argument("--traces-per-question", type=int, default=1, help="longest traces kept per question (default 1)")
    parser.add_argument("--long-quantile", type=float, default=0.5,
                        help="a trace whose thinking reaches this quantile of its domain counts as long (default 0.5)")
    parser.add_argument("--keep-easy", action="store_true", help="fill budgets with easy questions after the hard ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw across subjects (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    """Run `alloy select`."""
    from alloy.branch.select import SelectSettings, render_summary, select
    from alloy.commands.branch import parse_pairs
    from alloy.errors import AlloyError

    budgets = {}
    for domain, value in parse_pairs(args.budget, "--budget").items():
        try:
            budgets[domain] = int(value)
        except ValueError:
            raise AlloyError(f"--budget {domain}={value}: N must be an integer") from None
    settings = SelectSettings(budgets=budgets, per_domain=args.per_domain, traces_per_question=args.traces_per_question,
                              long_quantile=args.long_quantile, keep_easy=args.keep_easy, seed=args.seed)
    results = select(args.traces, args.out, settings, student_dir=args.student, overwrite=args.overwrite)
    print(render_summary({d: r.summary for d, r in results.items()}))
    print(f"selected traces in {args.out}")
    return 0
