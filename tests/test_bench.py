"""The benchmark scripts run and print their ratios (at a tiny size: figures come from real runs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--workdir", str(tmp_path),
                           "--hidden", "64", "--layers", "2", *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_merge_bench(tmp_path):
    out = run_bench("merge_bench.py", tmp_path, "--methods", "linear,ties,aoe", "--mergekit", "")
    assert "fused lerp bound" in out
    for method in ("linear", "ties", "aoe"):
        assert any(line.startswith(f"| {method} ") and "%" in line for line in out.splitlines()), out


@pytest.mark.timeout(600)
def test_build_bench(tmp_path):
    out = run_bench("build_bench.py", tmp_path)
    assert "in-memory build" in out and "faster per candidate" in out and "2 builder(s)" in out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_bench(tmp_path):
    pytest.importorskip("vllm")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "sweep_bench.py"), "--workdir", str(tmp_path),
                           "--candidates", "1", "--prompts", "2", "--tokens", "8"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("(a) vLLM swap", "(b) vLLM fresh engine", "(a)/(b)", "(a)/(c)", "(c)/(d)", "merge + swap share"):
        assert line in proc.stdout, proc.stdout


def test_search_bench():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "search_bench.py"), "--seeds", "1", "--trials", "6",
                           "--objectives", "smooth", "--samplers", "random,cmaes"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "regret ratio alloy default / plain cmaes" in proc.stdout and "ASHA ratio cmaes" in proc.stdout
    assert all(name in proc.stdout for name in ("alloy default", "random + ASHA", "nsga2 (2 objectives)"))
