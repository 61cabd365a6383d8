"""optuna-dashboard serves a finished sweep's study: started on a loopback port, its API lists the
study with its trials and the objective names the sweep set."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, wait_s: float = 0.0) -> dict:
    """GET a JSON document from a loopback URL (no proxy), retrying for `wait_s` while the server starts."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with opener.open(url, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_optuna_dashboard_serves_the_sweep_study(cli_sweep, tmp_path):
    pytest.importorskip("optuna_dashboard")
    sweep, _ = cli_sweep
    storage = json.loads((sweep / "sweep.json").read_text())["storage"]
    port = free_port()
    with open(tmp_path / "dashboard.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-c", "from optuna_dashboard._cli import main; main()", storage,
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=log,
                                  start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/api"
        studies = get_json(f"{base}/studies", wait_s=60)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["alloy"]
        assert studies[0]["directions"] == ["maximize", "minimize"]
        detail = get_json(f"{base}/studies/{studies[0]['study_id']}")
        assert detail["objective_names"] == ["aime24/exact_match", "tokens_mean"]
        board = pq.read_table(sweep / "leaderboard.parquet").to_pylist()
        assert len(detail["trials"]) == len({r["trial"] for r in board}) == 5
        states = {t["number"]: t["state"] for t in detail["trials"]}
        for row in (r for r in board if r["latest"]):
            assert states[row["trial"]] == {"ok": "Complete", "pruned": "Pruned", "failed": "Fail"}[row["status"]]
        complete = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert complete and all(len(t["values"]) == 2 for t in complete)
        assert detail["best_trials"]                                    # the Pareto front of the study
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
