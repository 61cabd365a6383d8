"""Running alloy's commands as Ray jobs: the entrypoints' argument handling and `alloy submit`."""
from __future__ import annotations

import time
from pathlib import Path

from alloy.errors import AlloyError

# commands whose driver connects to a Ray cluster, and so take --address
_CLUSTER_COMMANDS = ("sweep", "branch")


def job_argv(command: str, args: list[str]) -> list[str]:
    """The `alloy` argv of a job entrypoint: inside a job the driver joins its cluster (`--address auto`)."""
    argv = [command, *args]
    if command in _CLUSTER_COMMANDS and "--address" not in args:
        argv += ["--address", "auto"]
    return argv


def submit(space: str, address: str, working_dir: str = ".", follow: bool = True, extra_args: list[str] | None = None,
           pip: list[str] | None = None, timeout_s: float | None = None) -> tuple[str, str]:
    """Submit `alloy sweep SPACE` to a cluster's job server and (by default) stream its logs until it ends.

    Returns (job id, final status). The working directory travels with the job (`runtime_env`), so
    parents and search spaces named relative to it resolve on the cluster as they do locally.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not Path(working_dir, space).is_file():
        raise AlloyError(f"search space {space} not found under the working directory {working_dir}")
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # connection errors come in many types
        raise AlloyError(f"cannot reach the Ray job server at {address}: {exc}. Is the cluster up, and is "
                         f"`ray dashboard cluster.yaml` forwarding the port?") from None
    runtime_env: dict = {"working_dir": working_dir}
    if pip:
        runtime_env["pip"] = pip
    entrypoint = " ".join(["python", "ray_jobs/sweep.py", space, *(extra_args or [])])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(f"submitted {job_id}: {entrypoint}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if follow:
        import asyncio

        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                print(lines, end="", flush=True)

        asyncio.run(tail())
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while (status := client.get_job_status(job_id)) not in terminal:
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return job_id, str(status.value if hasattr(status, "value") else status)
