"""Shared fixtures: real benchmark data, and tiny parent checkpoints of real architectures on disk."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Modules with a slow (end-to-end) test first, each kept whole and in order: two test processes
    (`make test`: `--dist loadscope --no-loadscope-reorder`) take them first and end on short tests."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark slices in ../shared/data."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"benchmark slices not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alloy.tiny import train_tokenizer

    return train_tokenizer()


@pytest.fixture(autouse=True, scope="module")
def no_vllm_engines_from_an_earlier_module():
    """Each module starts with the one-process vLLM engines of earlier modules collected: vLLM keeps a
    process's parallel groups while one of its engines lives, and a MoE engine beside a live dense
    one is refused (`alloy.evaluation.vllm_lm.check_process_groups`). An earlier module's engines
    held in module fixtures or reference cycles are only freed by a collection."""
    gc.collect()
    yield


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray on this machine's two CPUs (no autoscaler), for the tests of one module; it starts
    in turn with the other embedded Rays of this machine, as alloy's drivers do."""
    import ray

    from alloy.workers.local_ray import start_lock

    with start_lock():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny models decode faster on one thread than on two busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cli_sweep(tmp_path_factory):
    """A small synthetic sweep run as a user runs it (`alloy sweep` in a subprocess, quiet output):
    (the sweep folder, the finished process with its terminal output)."""
    import subprocess
    import sys

    from tests.spaces import space_dict, write_space

    root = tmp_path_factory.mktemp("cli_sweep")
    data = space_dict(objectives=["aime24/exact_match", "tokens_mean"])
    data["search"] = {"sampler": "random", "seed": 0, "trials": 5, "concurrency": 2, "resources": {"cpu": 1},
                      "reduction_factor": 2, "start": ["uniform"]}
    space = write_space(root, data)
    run = subprocess.run([sys.executable, "-m", "alloy.cli", "sweep", str(space), "--out", "sweep", "--num-cpus", "2"],
                         cwd=root, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "sweep", run
