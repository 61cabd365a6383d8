"""Shared fixtures: real benchmark data, and tiny parent checkpoints of real architectures on disk."""
from __future__ import annotations

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
def no_vllm_groups_from_an_earlier_module():
    """Each module starts without the parallel groups an earlier module's one-process vLLM engines left.

    vLLM keeps them while an engine of the process lives, and makes an expert-parallel group only for a
    MoE model: a MoE engine made while an earlier module's dense engine is still alive would be refused
    (`alloy.evaluation.vllm_lm.check_process_groups`). `gc.collect()` is not enough: the vLLM teacher's
    engine of tests/test_traces.py outlives its test."""
    import sys

    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is not None and state.model_parallel_is_initialized():
        state.destroy_model_parallel()
        state.destroy_distributed_environment()
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
