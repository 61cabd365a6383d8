"""`alloy submit SPACE.yaml --address http://HEAD:8265`: run a sweep as a Ray job and follow its logs."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", help="search space YAML, relative to --working-dir")
    parser.add_argument("--address", required=True, help="the cluster's job server, e.g. http://127.0.0.1:8265")
    parser.add_argument("--working-dir", default=".", help="folder shipped with the job (default: cwd)")
    parser.add_argument("--no-follow", action="store_true", help="return after submitting; do not stream logs")
    parser.add_argument("--pip", nargs="*", default=None, help="extra pip packages for the job's environment")
    parser.add_argument("--out", help="the sweep folder on the cluster (`alloy sweep --out`)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out (`alloy sweep --resume`)")
    parser.add_argument("--storage", help="SQLAlchemy URL of the Optuna study (`alloy sweep --storage`)")


def run(args: argparse.Namespace) -> int:
    from alloy.commands.jobs import submit

    extra = [*(["--out", args.out] if args.out else []), *(["--resume"] if args.resume else []),
             *(["--storage", args.storage] if args.storage else [])]
    job_id, status = submit(args.space, args.address, args.working_dir, follow=not args.no_follow,
                            extra_args=extra, pip=args.pip)
    print(f"job {job_id}: {status}")
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1
