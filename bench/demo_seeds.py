"""The full demo on three seeds, one after another: each verdict with its 95% intervals and its time.

    python bench/demo_seeds.py [--workdir DIR] [--seeds 0 1 2]

Each seed gets its own folder (`DIR/seed-N`, reused when present, like `alloy demo`): its own data,
backbone, experts and sweep. Prints, per seed, the best merge's combined score and each expert's with
their intervals, the paired gap to each expert with its interval, whether the merge beats every expert
beyond them, and the wall time of that seed with the machine's load average, then how many seeds the
thesis held on.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alloy.demo.pipeline import run_demo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="folder for the seeds' demo folders (default: a temporary one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="alloy-demo-seeds-"))
    results = []
    for seed in args.seeds:
        started = time.monotonic()
        verdict = run_demo(workdir / f"seed-{seed}", seed=seed)
        results.append((seed, verdict, time.monotonic() - started, os.getloadavg()[1]))
    print("\nseed  best merge (combined [95% interval])  experts alone                          beats all  time")
    for seed, verdict, seconds, load in results:
        best = verdict.best.render() if verdict.best else "-"
        experts = ", ".join(f"{label} {c.render()}" for label, c in sorted(verdict.experts.items()))
        print(f"{seed:<5} trial {verdict.best_trial}: {best:<24} {experts}  "
              f"{'yes' if verdict.beats_every_expert else 'NO'}  {seconds:.0f}s (load {load:.1f})")
        if verdict.gaps:
            gaps = ", ".join(f"{label} {c.render()}" for label, c in sorted(verdict.gaps.items()))
            print(f"{'':5} merge − expert on the same questions: {gaps}")
    held = sum(v.beats_every_expert for _, v, _, _ in results)
    print(f"the best merge beats every expert beyond the intervals on {held} of {len(results)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
