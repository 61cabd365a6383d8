"""Merge throughput against the machine's memory bandwidth and against mergekit, measured in one run.

    python bench/merge_bench.py [--workdir DIR] [--hidden 1024] [--layers 8]

For `linear`, `ties` and `aoe` over three bf16 parents of a few hundred MB it prints the GB/s of
parent bytes merged in memory (inputs already resident), the ratio to the fused-lerp bound measured
in the same run, and the wall time of a disk-to-disk `alloy merge` against `mergekit-yaml` on the
same recipe when mergekit is installed (`--mergekit PATH` to a mergekit-yaml executable, e.g. one in
its own virtual environment).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, lerp_bound_gbps, make_parents  # noqa: E402

from alloy.io.checkpoint import Checkpoint  # noqa: E402
from alloy.merge.executor import finalize_tensor, merge_tensor, read_task_inputs, run_merge  # noqa: E402
from alloy.merge.plan import plan_merge  # noqa: E402
from alloy.merge.recipe import Recipe  # noqa: E402


class MemorySource:
    """A parent held fully in memory (what a merge reads once its inputs are resident)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.tensors = {n: ckpt.read(n) for n in ckpt.names}

    def read_for_compute(self, name: str, dtype: torch.dtype, device="cpu") -> torch.Tensor:
        return self.tensors[name].to(device=device, dtype=dtype)


def recipes(parents: list[Path]) -> dict[str, dict]:
    base, a, b = (str(p) for p in parents)
    return {
        "linear": {"merge_method": "linear", "dtype": "bfloat16",
                   "models": [{"model": base, "parameters": {"weight": 0.5}},
                              {"model": a, "parameters": {"weight": 0.3}},
                              {"model": b, "parameters": {"weight": 0.2}}]},
        "ties": {"merge_method": "ties", "base_model": base, "dtype": "float32", "parameters": {"density": 0.5},
                 "models": [{"model": base}, {"model": a, "parameters": {"weight": 0.5}},
                            {"model": b, "parameters": {"weight": 0.5}}]},
        "aoe": {"merge_method": "aoe", "base_model": base, "dtype": "bfloat16", "parameters": {"threshold": 0.01},
                "models": [{"model": base, "parameters": {"weight": 0.4}},
                           {"model": a, "parameters": {"weight": 0.3}},
                           {"model": b, "parameters": {"weight": 0.3}}]},
    }


def in_memory_seconds(plan, sources) -> float:
    def run():
        for task in plan.tasks:
            tensors, base = read_task_inputs(plan, task, "cpu", sources)
            finalize_tensor(task, merge_tensor(task, tensors, base, plan.recipe.base_index), plan.block)
    return best_of(run, repeat=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="mergekit-yaml executable")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alloy-bench-"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parents = make_parents(work, hidden=args.hidden, layers=args.layers)
    checkpoints = {str(p): Checkpoint.open(p) for p in parents}
    sources = {name: MemorySource(ck) for name, ck in checkpoints.items()}
    bound = lerp_bound_gbps()
    size = sum(ck.tensors[n].nbytes for ck in checkpoints.values() for n in ck.names) / 1e9
    print(f"parents: 3 x {size / 3:.2f} GB bf16; fused lerp bound {bound:.1f} GB/s; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'method':8} {'in-memory GB/s':>15} {'of bound':>9} {'alloy disk s':>13} {'mergekit s':>11} "
          f"{'speed-up':>9}")
    for name, data in recipes(parents).items():
        recipe = Recipe.from_dict(data)
        plan = plan_merge(recipe, parents=checkpoints)
        gbps = plan.input_bytes() / in_memory_seconds(plan, sources) / 1e9
        out = work / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        run_merge(plan, out, progress=False, overwrite=True)
        alloy_s = time.perf_counter() - start
        mk_s = mergekit_seconds(args.mergekit, data, work, name) if args.mergekit else None
        mk = f"{mk_s:11.1f} {mk_s / alloy_s:8.1f}x" if mk_s else f"{'n/a':>11} {'':>9}"
        print(f"{name:8} {gbps:15.2f} {gbps / bound:8.0%} {alloy_s:13.1f} {mk}")


def mergekit_seconds(exe: str, data: dict, work: Path, name: str) -> float | None:
    """Wall time of mergekit-yaml on the same recipe (CPU, lazy unpickle off, one shard size)."""
    cfg = work / f"mk-{name}.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "groups"}))
    out = work / f"mk-out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([exe, str(cfg), str(out), "--copy-tokenizer", "--out-shard-size", "5B"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  mergekit failed on {name}: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
