"""The `alloy` command line: one subcommand per module, imported only when it runs."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module exposing add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "merge": ("alloy.commands.merge", "merge parent checkpoints by a recipe into a new checkpoint"),
    "inspect": ("alloy.commands.inspect", "print a checkpoint's tensor groups (or parent distances)"),
    "sweep": ("alloy.commands.sweep", "search merge recipes (Ray Tune + Optuna, ASHA) into a leaderboard"),
    "board": ("alloy.commands.board", "print a sweep's leaderboard, best first"),
    "report": ("alloy.commands.report", "write a sweep's HTML report (Pareto front, coefficients)"),
    "eval": ("alloy.commands.eval", "score a checkpoint on alloy's lm-eval tasks, with output-token counts"),
    "export": ("alloy.commands.export", "write a sweep's candidate as a Hugging Face checkpoint"),
    "submit": ("alloy.commands.submit", "submit a sweep to a Ray cluster as a job and follow its logs"),
    "demo": ("alloy.commands.demo", "run the whole pipeline locally on tiny models (make demo)"),
    "traces": ("alloy.commands.traces", "sample a teacher over problems, keep the traces their scorers verify"),
    "select": ("alloy.commands.select", "pick an s1-style subset of traces (quality, difficulty, diversity)"),
    "branch": ("alloy.commands.branch", "fine-tune a backbone into one expert per domain (Ray Train)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alloy", description="Search merges of large language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `alloy` console script."""
    from alloy.errors import AlloyError

    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except AlloyError as exc:
        print(f"alloy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"alloy {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
