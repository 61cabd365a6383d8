"""Merge throughput against the machine's memory bandwidth and against mergekit, measured in one run.

    python bench/merge_bench.py [--workdir DIR] [--hidden 1024] [--layers 8] [--methods ties,della]

For every merge method (or those of `--methods`) over three bf16 parents of a few hundred MB it
prints a row: the GB/s of parent bytes merged in memory (inputs already resident), the fused-lerp
bound measured just before that row, their ratio, and the wall time of a disk-to-disk `alloy merge`
against `mergekit-yaml` on the same recipe for the methods mergekit has (mergekit is a dev
dependency; `--mergekit PATH` names another mergekit-yaml executable, `--mergekit ''` skips it).
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


# Methods mergekit does not have (no disk-to-disk comparison).
ALLOY_ONLY = {"aoe"}


def recipes(parents: list[Path]) -> dict[str, dict]:
    """One recipe per method over the base and two fine-tunes: weighted averages in bf16, task-vector
    methods in float32 (as TIES / DARE merges are usually run)."""
    base, a, b = (str(p) for p in parents)

    def task_vectors(method: str, dtype: str = "float32", **model_params) -> dict:
        return {"merge_method": method, "base_model": base, "dtype": dtype,
                "models": [{"model": base}, {"model": a, "parameters": {"weight": 0.5, **model_params}},
                           {"model": b, "parameters": {"weight": 0.5, **model_params}}]}

    weighted = [{"model": base, "parameters": {"weight": 0.4}}, {"model": a, "parameters": {"weight": 0.3}},
                {"model": b, "parameters": {"weight": 0.3}}]
    return {
        "linear": {"merge_method": "linear", "dtype": "bfloat16", "models": weighted},
        "aoe": {"merge_method": "aoe", "base_model": base, "dtype": "bfloat16", "parameters": {"threshold": 0.01},
                "models": weighted},
        "task_arithmetic": task_vectors("task_arithmetic"),
        "ties": task_vectors("ties", density=0.5),
        "dare_linear": task_vectors("dare_linear", density=0.5),
        "dare_ties": task_vectors("dare_ties", density=0.5),
        "breadcrumbs": task_vectors("breadcrumbs", density=0.5, gamma=0.01),
        "breadcrumbs_ties": task_vectors("breadcrumbs_ties", density=0.5, gamma=0.01),
        "della": task_vectors("della", density=0.5, epsilon=0.1),
        "della_linear": task_vectors("della_linear", density=0.5, epsilon=0.1),
        "slerp": {"merge_method": "slerp", "base_model": base, "dtype": "bfloat16", "parameters": {"t": 0.4},
                  "models": [{"model": base}, {"model": a}]},
        "nuslerp": {"merge_method": "nuslerp", "dtype": "bfloat16",
                    "models": [{"model": a, "parameters": {"weight": 0.4}}, {"model": b, "parameters": {"weight": 0.6}}]},
        "model_stock": {"merge_method": "model_stock", "base_model": base, "dtype": "float32",
                        "models": [{"model": base}, {"model": a}, {"model": b}]},
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": base, "dtype": "float32",
                         "models": [{"model": base}, {"model": a}]},
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
    parser.add_argument("--mergekit", default=default_mergekit(), help="mergekit-yaml executable ('' skips it)")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alloy-bench-"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parents = make_parents(work, hidden=args.hidden, layers=args.layers)
    checkpoints = {str(p): Checkpoint.open(p) for p in parents}
    sources = {name: MemorySource(ck) for name, ck in checkpoints.items()}
    size = sum(ck.tensors[n].nbytes for ck in checkpoints.values() for n in ck.names) / 1e9
    chosen = [m for m in args.methods.split(",") if m]
    table = {name: data for name, data in recipes(parents).items() if not chosen or name in chosen}
    print(f"parents: 3 x {size / 3:.2f} GB bf16; torch threads {torch.get_num_threads()}; the fused lerp bound "
          f"is measured before each row")
    print(f"| {'method':16} | {'dtype':8} | {'in memory GB/s':>14} | {'bound GB/s':>10} | {'of bound':>8} | "
          f"{'alloy disk s':>12} | {'mergekit s':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 16}|{'-' * 12}|{'-' * 10}|{'-' * 14}|{'-' * 12}|{'-' * 10}|")
    for name, data in table.items():
        plan = plan_merge(Recipe.from_dict(data), parents=checkpoints)
        bound = lerp_bound_gbps()
        gbps = plan.input_bytes() / in_memory_seconds(plan, sources) / 1e9
        out = work / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        run_merge(plan, out, progress=False, overwrite=True)
        alloy_s = time.perf_counter() - start
        mk_s = mergekit_seconds(args.mergekit, data, work, name) if args.mergekit and name not in ALLOY_ONLY else None
        mk = f"{mk_s:10.1f} | {mk_s / alloy_s:7.1f}x" if mk_s else f"{'n/a':>10} | {'':>8}"
        print(f"| {name:16} | {data['dtype']:8} | {gbps:14.3g} | {bound:10.3g} | {gbps / bound:8.1%} | "
              f"{alloy_s:12.1f} | {mk} |", flush=True)


def default_mergekit() -> str | None:
    """mergekit-yaml beside this Python (the dev install), else on PATH."""
    beside = Path(sys.executable).with_name("mergekit-yaml")
    return str(beside) if beside.exists() else shutil.which("mergekit-yaml")


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
