"""Per-candidate cost of a child built in memory against one written to disk and reloaded, in one run.

    python bench/build_bench.py [--workdir DIR] [--hidden 1024] [--layers 8] [--candidates 4]

(a) a ChildBuilder (parents in the Ray object store, a resident model) building a candidate;
(b) `alloy merge` to disk plus `AutoModelForCausalLM.from_pretrained` of the result (what a tool
that writes children must do before it can evaluate them). Prints both per-candidate times and their
ratio, the builder's GB/s of parent bytes against the fused-lerp bound measured in the same run, and
the throughput with 1 and 2 builders working at once.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import lerp_bound_gbps, make_parents  # noqa: E402

from alloy.workers.builder import builder_actor  # noqa: E402
from alloy.merge.executor import run_merge  # noqa: E402
from alloy.merge.plan import plan_merge  # noqa: E402
from alloy.merge.recipe import Recipe  # noqa: E402
from alloy.workers.local_ray import ray_session  # noqa: E402
from alloy.workers.store import start_stores  # noqa: E402

CPUS = len(os.sched_getaffinity(0))  # the Ray CPUs of the run; (b) runs in this process on as many torch threads


def candidate(parents: list[Path], i: int) -> dict:
    """The i-th candidate: a linear merge whose coefficients move with i (so no two are identical)."""
    w = 0.1 + 0.8 * (i % 7) / 7
    return {"merge_method": "linear", "dtype": "bfloat16",
            "models": [{"model": str(parents[0]), "parameters": {"weight": 1 - w}},
                       {"model": str(parents[1]), "parameters": {"weight": w / 2}},
                       {"model": str(parents[2]), "parameters": {"weight": w / 2}}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alloy-bench-"))
    parents = make_parents(work, hidden=args.hidden, layers=args.layers)
    bound = lerp_bound_gbps()

    # (b) disk: merge, write, reload
    from transformers import AutoModelForCausalLM

    disk = []
    for i in range(2):
        plan = plan_merge(Recipe.from_dict(candidate(parents, i)))
        out = work / "disk-child"
        start = time.perf_counter()
        run_merge(plan, out, progress=False, overwrite=True)
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
        disk.append(time.perf_counter() - start)
        shutil.rmtree(out)
    disk_s = min(disk)
    input_gb = plan.input_bytes() / 1e9

    with ray_session("local", num_cpus=CPUS):
        start_stores("bench", {str(p): p for p in parents})
        throughput = {}
        per_candidate = None
        for n_builders in (1, 2):
            # the machine's CPUs shared among the builders (Ray gives an actor as many torch threads as CPUs)
            builders = [builder_actor(num_cpus=CPUS // n_builders).remote("bench") for _ in range(n_builders)]
            ray.get([b.build.remote(candidate(parents, 100 + j)) for j, b in enumerate(builders)])  # warm
            start = time.perf_counter()
            reports = ray.get([builders[i % n_builders].build.remote(candidate(parents, i))
                               for i in range(args.candidates)])
            wall = time.perf_counter() - start
            throughput[n_builders] = args.candidates / wall
            if n_builders == 1:
                per_candidate = min(r.seconds for r in reports)
            for b in builders:
                ray.kill(b)

    print(f"parents: 3 x {input_gb / 3:.2f} GB bf16; fused lerp bound {bound:.1f} GB/s")
    print(f"(a) in-memory build      {per_candidate:7.2f} s/candidate  {input_gb / per_candidate:6.2f} GB/s "
          f"({input_gb / per_candidate / bound:.0%} of bound)")
    print(f"(b) merge to disk+reload {disk_s:7.2f} s/candidate")
    print(f"in-memory is {disk_s / per_candidate:.1f}x faster per candidate")
    print("throughput: " + ", ".join(f"{n} builder(s) {t * 60:.1f} candidates/min" for n, t in throughput.items()))


if __name__ == "__main__":
    main()
