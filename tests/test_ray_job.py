"""A real local Ray head (`ray start --head` on free ports, its own temp dir), a sweep submitted to it
with `ray job submit` and with `alloy submit`, the leaderboard checked, and the head stopped by its
own process ids (never `ray stop`, which would end every Ray process on the machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from alloy.workers.local_ray import start_lock
from tests.parents import write_parents

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env() -> dict:
    # the head's jobs run `python` from its PATH: make it this environment's, where alloy is installed
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if (Path.home() / ".ray" / "auth_token").is_file():
        env["RAY_AUTH_MODE"] = "token"  # Ray 2.60 turns on token auth for local heads when this file exists
    return env


@pytest.fixture
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="alloy-ray-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    port, dashboard = free_port(), free_port()
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp}",
           "--disable-usage-stats", f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--min-worker-port={free_port()}", "--max-worker-port=0"]
    with start_lock():  # in turn with the embedded Rays other tests start
        subprocess.run(cmd, check=True, capture_output=True, env=client_env(), timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        mine = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        for p in mine:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(mine, timeout=5)  # gcs_server may outwait a SIGTERM sent to all at once
        for p in alive:
            p.kill()
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_job_server(address: str, env: dict) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                          capture_output=True).returncode == 0:
            return
        time.sleep(2)
    pytest.fail("the head's job server did not come up")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_submitted_as_a_ray_job(tmp_path, tiny_tokenizer, shared_data, ray_head):
    parents = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, n=2, dtype=torch.float32)
    space = {
        "name": "job",
        "parents": {"base": "a", "models": {"a": str(parents[0]), "b": str(parents[1])}},
        "default": {"merge_method": "linear", "weights": "simplex"},
        "objectives": ["aime24/exact_match"],
        "evaluation": {"tasks": ["aime24"], "rungs": [2], "max_gen_toks": 4, "data_dir": str(shared_data)},
        "search": {"sampler": "random", "seed": 0, "trials": 2, "concurrency": 1, "resources": {"cpu": 1}},
    }
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    env = client_env()
    wait_for_job_server(ray_head, env)

    out = tmp_path / "sweep"
    job = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(REPO),
                          "--", "python", "ray_jobs/sweep.py", str(space_file), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in (job.stdout + job.stderr).lower()
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert len({r["trial"] for r in rows}) == 2 and all(r["status"] == "ok" for r in rows)

    # the same through alloy submit, which follows the logs
    out2 = tmp_path / "sweep2"
    sub = subprocess.run([str(BIN / "alloy"), "submit", str(space_file), "--address", ray_head,
                          "--working-dir", str(REPO), "--out", str(out2)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
    assert "SUCCEEDED" in sub.stdout and "sweep finished" in sub.stdout
    assert (out2 / "leaderboard.parquet").is_file()
