"""`alloy sweep SPACE.yaml`: search merge recipes with Ray Tune + Optuna and fill a leaderboard."""
from __future__ import annotations

import argparse

from alloy.logs import add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="the search-space YAML file")
    parser.add_argument("--out", default=None,
                        help="the sweep folder (default: sweeps/NAME, NAME being the space's name)")
    parser.add_argument("--address", default="local",
                        help="'local' starts Ray inside this process; 'auto' or 'ray://HOST:10001' joins a cluster")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in --out after its driver stopped (same study, no trial lost)")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the Optuna study (default: SQLite in the sweep folder)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alloy.logs import LOG_FILE, quiet_output
    from alloy.search.space import load_space
    from alloy.search.sweep import run_sweep

    out = args.out or str(Path("sweeps") / load_space(args.space).name)
    with quiet_output(Path(out) / LOG_FILE, args.verbose):
        path = run_sweep(args.space, out, address=args.address, resume=args.resume, storage=args.storage,
                         num_cpus=args.num_cpus)
    print(f"leaderboard: {path}  (see `alloy board {out}` and `alloy report {out}`)")
    return 0
