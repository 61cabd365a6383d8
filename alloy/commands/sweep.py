"""`alloy sweep SPACE.yaml`: search merge recipes with Ray Tune + Optuna and fill a leaderboard;
`alloy sweep --cleanup DIR`: remove a sweep's actors from a running cluster."""
from __future__ import annotations

import argparse

from alloy.logs import add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", nargs="?", help="the search-space YAML file")
    parser.add_argument("--out", default=None,
                        help="the sweep folder (default: sweeps/NAME, NAME being the space's name)")
    parser.add_argument("--address", default=None,
                        help="'local' (the default) starts Ray inside this process; 'auto' or 'ray://HOST:10001' "
                             "joins a cluster (--cleanup: default 'auto')")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep in --out after its driver stopped (same study, no trial lost)")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the Optuna study (default: SQLite in the sweep folder)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--keep-store", action="store_true",
                        help="leave the parents in the object store when the sweep ends, so that --resume does "
                             "not read them again; `alloy sweep --cleanup DIR` removes them later")
    parser.add_argument("--placement-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for the cluster to offer the workers' resources (default 600)")
    parser.add_argument("--cleanup", metavar="DIR", default=None,
                        help="remove the parent stores, workers and pool of the sweep in DIR from the cluster")
    add_verbose_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alloy.errors import AlloyError
    from alloy.search.runner import DEFAULT_PLACEMENT_TIMEOUT_S
    from alloy.logs import LOG_FILE, quiet_output
    from alloy.search.space import load_space
    from alloy.search.sweep import cleanup_sweep, run_sweep

    if args.cleanup is not None:
        if args.space is not None:
            raise AlloyError("--cleanup DIR takes no search space; run `alloy sweep --cleanup DIR` alone")
        stopped = cleanup_sweep(args.cleanup, address=args.address or "auto")
        print(f"removed {', '.join(stopped)}" if stopped else f"no actor of the sweep in {args.cleanup} is running")
        return 0
    if args.space is None:
        raise AlloyError("name a search space: `alloy sweep SPACE.yaml`, or `alloy sweep --cleanup DIR`")
    timeout = DEFAULT_PLACEMENT_TIMEOUT_S if args.placement_timeout is None else args.placement_timeout
    if timeout <= 0:
        raise AlloyError(f"--placement-timeout {args.placement_timeout:g}: give a positive number of seconds")
    out = args.out or str(Path("sweeps") / load_space(args.space).name)
    with quiet_output(Path(out) / LOG_FILE, args.verbose):
        path = run_sweep(args.space, out, address=args.address or "local", resume=args.resume, storage=args.storage,
                         num_cpus=args.num_cpus, keep_store=args.keep_store, placement_timeout_s=timeout)
    print(f"leaderboard: {path}  (see `alloy board {out}` and `alloy report {out}`)")
    return 0
