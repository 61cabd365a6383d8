"""The wheel: it carries the evaluators and the example search spaces, and a wheel-installed alloy
scores a tiny model with `alloy eval` and runs a sweep from a folder outside the source checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from alloy.resources import shipped_folder
from alloy.tiny import make_tiny_model, save_tiny_checkpoint
from tests.spaces import space_dict, write_space

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "alloy", "evaluators", "search_spaces")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """alloy's wheel, built from a copy of the sources (the checkout gets no build folders)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(source, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(src)], check=True)
    return next((root / "dist").glob("alloy-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps), seeing the test venv's packages through a
    .pth line (whose own .pth files, among them the editable alloy, are not processed); its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    return venv / "bin"


def outside_env() -> dict[str, str]:
    """The environment of a command run outside the checkout: no PYTHONPATH, no evaluators override."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ALLOY_EVALUATORS")}
    return dict(env, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


def test_wheel_carries_the_evaluators_and_search_spaces(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("evaluators", "search_spaces"):
        shipped = {f"alloy/{name}/{p.relative_to(REPO / name)}" for p in (REPO / name).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
        assert shipped and shipped <= names, sorted(shipped - names)
    assert "alloy/evaluation/harness.py" in names and "alloy/merge/methods/aoe.py" in names


def test_shipped_folders_of_the_checkout():
    assert shipped_folder("evaluators") == REPO / "evaluators"
    assert (shipped_folder("search_spaces") / "demo.yaml").is_file()
    with pytest.raises(ValueError, match="not a folder shipped"):
        shipped_folder("tests")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_wheel_installed_alloy_evals_and_sweeps_outside_the_checkout(installed, tmp_path, tiny_tokenizer,
                                                                     shared_data):
    env, work = outside_env(), tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(installed / "python"), "-c", "import alloy; print(alloy.__file__)"], cwd=work,
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where           # the wheel's alloy, not the checkout
    tasks = subprocess.run([str(installed / "python"), "-m", "alloy.evaluators_path"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(tasks) == Path(where).parent / "evaluators" and (Path(tasks) / "aime" / "aime24.yaml").is_file()

    model = save_tiny_checkpoint(make_tiny_model("qwen3", seed=1), tmp_path / "model", tiny_tokenizer)
    run = subprocess.run([str(installed / "alloy"), "eval", str(model), "--tasks", "aime24", "--limit", "2",
                          "--max-gen-toks", "8", "--data-dir", str(shared_data), "--output", "scores.json"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = json.loads((work / "scores.json").read_text())
    assert scores["tasks"]["aime24"]["n_samples"] == 2 and "exact_match" in scores["tasks"]["aime24"]["scores"]

    data = space_dict()
    data["search"] = {"sampler": "random", "seed": 0, "trials": 3, "concurrency": 1, "resources": {"cpu": 1}}
    space = write_space(work, data)
    run = subprocess.run([str(installed / "alloy"), "sweep", str(space), "--out", "sweep", "--num-cpus", "1"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sweep finished: " in run.stdout and (work / "sweep" / "leaderboard.parquet").is_file()
    assert yaml.safe_load((work / "sweep" / "space.yaml").read_text())["name"] == "test"
