"""The sweep: SweepSearch's bookkeeping with Optuna, an end-to-end sweep through Ray Tune + OptunaSearch +
ASHA on the synthetic runner, identical recipes scored once, and resume after the driver is killed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from alloy.cli import main
from alloy.errors import AlloyError
from alloy.search.leaderboard import pareto_mask
from alloy.search.space import load_space
from alloy.workers.local_ray import stop_processes
from tests.processes import descendants, gone, runs_ray
from tests.spaces import final_result, space_dict, write_space

REPO = Path(__file__).resolve().parents[1]
State = optuna.trial.TrialState
optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="alloy", storage=f"sqlite:///{sweep / 'study.db'}")


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp"])
def test_sweep_search_tells_optuna_pruned_complete_and_failed(tmp_path, sampler):
    from alloy.search.sweep import TRIAL_KEY, SweepSearch

    space = load_space(write_space(tmp_path, space_dict(search={"sampler": sampler, "start": ["uniform"]})))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    search = SweepSearch(space, storage, "alloy")
    configs = {name: search.suggest(name) for name in ("a", "b", "c")}
    assert [c[TRIAL_KEY] for c in configs.values()] == [0, 1, 2]
    assert space.candidate({k: v for k, v in configs["a"].items() if k != TRIAL_KEY}).coefficients[
        "default.weight.A"] == pytest.approx(1 / 3, abs=1e-5)            # the enqueued starting point
    search.on_trial_result("a", final_result(0, 0.5))
    search.on_trial_complete("a", final_result(2, 0.6))                  # reached the last rung
    search.on_trial_complete("b", final_result(0, 0.9))                  # stopped by ASHA after rung 0
    search.on_trial_complete("c", None, error=True)
    trials = search.study.get_trials()
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL]
    assert trials[0].value == 0.6 and trials[0].user_attrs["rung"] == 2


def test_sweep_search_adopts_trials_the_driver_lost(tmp_path):
    """An Optuna trial asked after Tune's last save has no Tune trial after a restore: the next Tune
    trial takes it over (same number, same values), so the study neither loses nor duplicates it."""
    from alloy.search.sweep import TRIAL_KEY, SweepSearch

    space = load_space(write_space(tmp_path, space_dict(search={"sampler": "tpe", "seed": 3})))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    search = SweepSearch(space, storage, "alloy")
    search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))                          # Tune's last experiment save
    lost = search.suggest("b")                                           # then the driver dies

    restored = SweepSearch(space, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"), "alloy",
                           enqueue_start=False)
    restored.restore(str(tmp_path / "searcher.pkl"))
    adopted = restored.suggest("c")
    assert adopted == lost and adopted[TRIAL_KEY] == 1
    assert restored.suggest("d")[TRIAL_KEY] == 2
    restored.on_trial_complete("c", final_result(2, 0.4))
    restored.on_trial_complete("a", final_result(1, 0.1))
    states = {t.number: t.state for t in restored.study.get_trials()}
    assert states == {0: State.PRUNED, 1: State.COMPLETE, 2: State.RUNNING}


def test_sweep_search_adopts_a_trial_it_saved_but_tune_did_not(tmp_path):
    """The searcher's state saved with a trial that Tune's saved experiment lacks (the driver died between
    the two saves): after a restore that trial is an orphan the next Tune trial takes over, and a trial
    Tune did save stays its own."""
    import json

    from alloy.search.sweep import TRIAL_KEY, SweepSearch

    space = load_space(write_space(tmp_path, space_dict(search={"sampler": "tpe", "seed": 3})))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    search = SweepSearch(space, storage, "alloy")
    search.suggest("a")
    lost = search.suggest("b")
    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    search.save(str(tune_dir / "searcher-state-2026-01-01_00-00-00.pkl"))
    trial = json.dumps({"trial_id": "a", "stub": False})                # Tune saved trial "a" only
    (tune_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [[trial, "{}"]]}))

    restored = SweepSearch(space, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"), "alloy",
                           enqueue_start=False)
    restored.restore_from_dir(str(tune_dir))
    adopted = restored.suggest("c")
    assert adopted == lost and adopted[TRIAL_KEY] == 1
    restored.on_trial_complete("a", final_result(2, 0.5))
    restored.on_trial_complete("c", final_result(2, 0.4))
    assert {t.number: t.state for t in restored.study.get_trials()} == {0: State.COMPLETE, 1: State.COMPLETE}


def test_sweep_refuses_bad_folders_before_ray(tmp_path):
    from alloy.search.sweep import run_sweep

    space = write_space(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(AlloyError, match="is not empty; pass --resume"):
        run_sweep(space, tmp_path / "busy")
    with pytest.raises(AlloyError, match="no sweep to resume"):
        run_sweep(space, tmp_path / "fresh", resume=True)
    data = space_dict()
    data["evaluation"]["runner"] = "telepathy"
    with pytest.raises(AlloyError, match="unknown runner 'telepathy'"):
        run_sweep(write_space(tmp_path, data), tmp_path / "fresh")


def test_a_local_sweep_checks_its_code_task_before_ray(tmp_path, monkeypatch):
    """An lm-eval sweep on the embedded Ray checks, before Ray starts, what its workers need here: the
    code task's opt-in, then the sandbox (no bubblewrap on PATH)."""
    import ray

    from alloy.search.sweep import run_sweep

    data = space_dict()
    data["evaluation"] = {"runner": "lm_eval", "tasks": ["aime24", "livecodebench"], "rungs": [2]}
    with pytest.raises(AlloyError, match="'livecodebench' runs model-written code"):
        run_sweep(write_space(tmp_path, data), tmp_path / "sweep")
    data["evaluation"]["generation"] = {"allow_code_execution": True}
    space = write_space(tmp_path, data)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap-here"))
    with pytest.raises(AlloyError, match=r"needs bubblewrap \(bwrap\), which is not on PATH"):
        run_sweep(space, tmp_path / "sweep")
    assert not ray.is_initialized() and not (tmp_path / "sweep").exists()


# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_end_to_end_sweep_through_ray_tune(tmp_path, local_ray, capsys):
    from alloy.search.sweep import run_sweep

    data = space_dict(objectives=["aime24/exact_match", "tokens_mean"])
    data["evaluation"]["synthetic"] = {"fail_fraction": 0.4, "noise": 0.05}
    data["search"] = {"sampler": "nsga2", "population_size": 4, "seed": 1, "trials": 12, "concurrency": 2,
                      "resources": {"cpu": 1}, "start": ["uniform"], "reduction_factor": 2}
    out = tmp_path / "sweep"
    board_path = run_sweep(write_space(tmp_path, data), out)
    progress = capsys.readouterr().out
    assert "rung 1/3 n=4" in progress and "ETA" in progress and "sweep finished" in progress

    all_rows = pq.read_table(board_path).to_pylist()
    rows = [r for r in all_rows if r["rung"] < 3]                       # the search rungs
    latest = {r["trial"]: r for r in rows if r["trial"] not in {o["trial"] for o in rows if o["rung"] > r["rung"]}}
    study = {t.number: t for t in study_of(out).get_trials()}
    assert set(latest) == set(study) and len(study) == 12
    assert len(rows) == len({(r["trial"], r["rung"]) for r in rows})
    assert {r["status"] for r in rows} <= {"ok", "pruned", "failed"}
    expected_state = {"ok": State.COMPLETE, "pruned": State.PRUNED, "failed": State.FAIL}
    for number, row in latest.items():
        assert study[number].state == expected_state[row["status"]], (number, row["status"])
        if row["status"] == "ok":
            assert row["n_samples"] == 16
            assert study[number].values == pytest.approx([row["aime24/exact_match"], row["tokens_mean"]])
        if row["status"] == "pruned":
            assert row["n_samples"] < 16
        if row["status"] == "failed":
            assert "synthetic failure for recipe" in row["error"] and row["aime24/exact_match"] is None
    statuses = [r["status"] for r in latest.values()]
    assert statuses.count("failed") >= 1 and statuses.count("pruned") >= 1 and statuses.count("ok") >= 1
    assert sum(r["reference"] == "uniform" for r in latest.values()) == 1
    # starting points are the baselines: ASHA never stops them
    assert all(r["status"] != "pruned" for r in latest.values() if r["reference"])

    full = [r for r in rows if r["status"] == "ok" and r["n_samples"] == 16]
    mask = pareto_mask([[r["aime24/exact_match"], r["tokens_mean"]] for r in full], ["maximize", "minimize"])
    assert [r["pareto"] for r in full] == mask and any(mask)
    assert not any(r["pareto"] for r in rows if r["status"] != "ok" or r["n_samples"] != 16)
    optuna_front = {t.number for t in study_of(out).best_trials}
    assert optuna_front == {r["trial"] for r in full if r["pareto"]}
    for r in full:                                                       # every score carries its interval
        assert r["aime24/exact_match.lo"] <= r["aime24/exact_match"] <= r["aime24/exact_match.hi"]

    # the confirmation: the best 3 of the front re-scored on 4 x 16 samples, the winner decided on them
    confirmed = [r for r in all_rows if r["rung"] == 3]
    assert len(confirmed) == min(3, len(full)) and all(r["n_samples"] == 64 and r["latest"] for r in confirmed)
    assert {r["trial"] for r in confirmed} <= {r["trial"] for r in full}
    assert any(r["best"] for r in confirmed) and "best after confirmation: trial" in progress

    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Pareto front" in html and "Evaluation saved by ASHA" in html and "synthetic failure" in html


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_identical_recipes_are_scored_once(tmp_path, local_ray):
    from alloy.search.sweep import run_sweep

    data = space_dict(default={"merge_method": "linear", "weights": "uniform"})
    data["groups"] = {"routed_experts": {"merge_method": ["linear", "aoe"], "weights": {"C": 1.0},
                                         "parameters": {"threshold": 0.01}}}
    data["evaluation"]["rungs"] = [2, 4]
    data["search"] = {"sampler": "random", "seed": 0, "trials": 6, "concurrency": 1, "prune": False,
                      "resources": {"cpu": 1}, "confirm": False}
    out = tmp_path / "sweep"
    rows = pq.read_table(run_sweep(write_space(tmp_path, data), out)).to_pylist()
    hashes = {r["recipe_hash"] for r in rows}
    assert len(hashes) == 2 and len(rows) == 12
    assert sum(not r["cached"] for r in rows) == 4                      # 2 recipes x 2 rungs evaluated once
    assert len(list((out / "cache").glob("*/*.json"))) == 4
    assert {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_stopped_before_its_first_trial_resumes_with_its_starting_points(tmp_path, local_ray, monkeypatch):
    """A driver that stopped before the study held any trial (here its runner's setup failed) gave the
    study no starting points: the resume enqueues them."""
    from alloy.search import sweep

    data = space_dict()
    data["evaluation"]["rungs"] = [2, 4]
    data["search"] = {"sampler": "tpe", "seed": 0, "trials": 4, "concurrency": 1, "resources": {"cpu": 1},
                      "start": ["parents"], "confirm": False}
    space, out = write_space(tmp_path, data), tmp_path / "sweep"

    def unavailable(*args, **kwargs):
        raise AlloyError("the workers are unavailable")

    monkeypatch.setattr(sweep, "prepare_runner", unavailable)
    with pytest.raises(AlloyError, match="the workers are unavailable"):
        sweep.run_sweep(space, out)
    monkeypatch.undo()
    rows = pq.read_table(sweep.run_sweep(space, out, resume=True)).to_pylist()
    assert sorted(t.number for t in study_of(out).get_trials()) == [0, 1, 2, 3]
    assert {r["trial"]: r["reference"] for r in rows if r["latest"] and r["reference"]} == {
        0: "parent:A", 1: "parent:B", 2: "parent:C"}


# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("sampler", ["cmaes", "gp"])
def test_resume_after_the_driver_is_killed(tmp_path, sampler):
    """SIGKILL to the driver alone, then `--resume`, with CMA-ES and the GP sampler. The reaper stops
    the killed driver's embedded Ray: none of its processes is left. TPE's resume is the Ctrl-C test's
    (tests/test_reliability_drivers.py); every sampler's pickle round trip, which a resume goes through,
    is tests/test_samplers.py's."""
    data = space_dict()
    data["evaluation"]["synthetic"] = {"seconds_per_sample": 0.05}
    data["search"] = {"sampler": sampler, "seed": 2, "trials": 10, "concurrency": 2, "resources": {"cpu": 1},
                      "reduction_factor": 2, "start": ["parents"], "confirm": {"top": 1, "samples": 20}}
    space = write_space(tmp_path, data)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "alloy.cli", "sweep", str(space), "--out", str(out), "--num-cpus", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                  env=env)
    before: dict = {}
    ray_processes: list = []
    ray_was_up = False
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.3)
            try:
                rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
            except (OSError, ValueError):
                continue
            done = {r["trial"] for r in rows if r["status"] in ("ok", "pruned", "failed")}
            if len(done) >= 3 and any(r["status"] == "running" for r in rows):
                before = {(r["trial"], r["rung"]): r for r in rows if r["trial"] in done}
                ray_processes = descendants(driver.pid)
                ray_was_up = runs_ray(ray_processes)
                break
    finally:
        driver.kill()  # the driver alone: its Ray processes are the reaper's to stop
        driver.wait()
        left = gone(ray_processes, timeout=60)
        stop_processes(left)  # what the reaper failed to stop, so that no later test shares a machine with it
    assert before, (tmp_path / "first.log").read_text()[-3000:]
    assert ray_was_up and not left, [p.pid for p in left]

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]

    trials = study_of(out).get_trials()
    assert sorted(t.number for t in trials) == list(range(10))           # same study, none lost, none twice
    assert all(t.state in (State.COMPLETE, State.PRUNED) for t in trials)
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert len(rows) == len({(r["trial"], r["rung"]) for r in rows})
    latest = {r["trial"]: r for r in rows if r["latest"]}
    assert sorted(latest) == list(range(10))
    assert {r["status"] for r in rows} <= {"ok", "pruned"}
    for key, row in before.items():                                      # finished trials kept as they were
        now = next(r for r in rows if (r["trial"], r["rung"]) == key)
        assert (now["trial_id"], now["status"], now["aime24/exact_match"]) == \
            (row["trial_id"], row["status"], row["aime24/exact_match"])
    # every (recipe, rung) was evaluated once: each has its one cache entry, reused after the restart;
    # the only entries no row uses are rungs that in-flight trials (at most `concurrency`) finished just
    # before the kill and that ASHA, seeing results in another order after the resume, did not reach
    cached = {(p.parent.name, int(p.stem)) for p in (out / "cache").glob("*/*.json")}
    used = {(r["recipe_hash"], r["n_samples"]) for r in rows}
    assert used <= cached and len(cached - used) <= 2
    assert sum(r["reference"] is not None for r in latest.values()) == 3
    with pytest.raises(AlloyError, match="differs from the one the sweep"):
        from alloy.search.sweep import run_sweep

        changed = yaml.safe_load(space.read_text())
        changed["search"]["trials"] = 11
        space.write_text(yaml.safe_dump(changed))
        run_sweep(space, out, resume=True)
