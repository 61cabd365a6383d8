"""A sweep that cannot run says so instead of hanging or claiming success, and its leaderboard survives
deletion and corruption: objectives the tasks never report, resources no node offers, every trial
failed, a deleted or corrupt leaderboard.parquet rebuilt from the study (synthetic runner, seconds)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from alloy.cli import main
from alloy.errors import AlloyError
from alloy.search.records import SweepRecords
from alloy.search.space import load_space
from tests.spaces import space_dict, write_space

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def quick_space(tmp_path: Path, trials: int = 4, **search) -> dict:
    data = space_dict()
    data["evaluation"]["rungs"] = [2, 4]
    data["search"] = {"sampler": "random", "seed": 0, "trials": trials, "concurrency": 2, "resources": {"cpu": 1},
                      **search}
    return data


def test_objectives_the_tasks_do_not_report_are_refused_before_ray(tmp_path, capsys):
    data = space_dict(objectives=["aime24/accuracy"])
    with pytest.raises(AlloyError, match=r"objectives\[0\]\.metric: task 'aime24' reports no 'aime24/accuracy'; "
                                         r"it reports \['aime24/exact_match'"):
        load_space(write_space(tmp_path, data))
    data["evaluation"]["runner"] = "lm_eval"
    assert main(["sweep", str(write_space(tmp_path, data)), "--out", str(tmp_path / "sweep")]) == 2
    assert "aime24/accuracy" in capsys.readouterr().err and not (tmp_path / "sweep").exists()
    for ok in ("aime24/exact_match.lo", "tokens_p90", "aime24/thinking_tokens_mean"):   # all reported
        assert load_space(write_space(tmp_path, space_dict(objectives=[ok]))).metrics == [ok]


@pytest.mark.parametrize("resources, runner, concurrency", [
    ({"cpu": 64}, "synthetic", 1), ({"gpu": 1}, "synthetic", 1), ({"cpu": 1, "gpu": 1}, "lm_eval", 1),
    ({"cpu": 1}, "lm_eval", 4)])   # four pooled workers of one CPU each on a 2-CPU cluster
def test_resources_no_node_offers_are_refused_at_once(tmp_path, local_ray, resources, runner, concurrency):
    from alloy.search.sweep import run_sweep

    data = quick_space(tmp_path, resources=resources, concurrency=concurrency)
    data["evaluation"]["runner"] = runner
    start = time.monotonic()
    with pytest.raises(AlloyError, match=r"can never be placed: the largest node has .* there is no autoscaler"):
        run_sweep(write_space(tmp_path, data), tmp_path / "sweep", check_paths=False)
    assert time.monotonic() - start < 30


def test_resources_the_autoscaler_must_add_are_waited_for_with_a_timeout(local_ray):
    from alloy.workers.placement import autoscaler_node_types, check_placement

    types = autoscaler_node_types(bootstrap=REPO / "cluster.yaml")    # as on the head of a launched cluster
    assert ({"CPU": 8.0, "GPU": 1.0}, 8.0) in types
    check_placement({"CPU": 1}, 2, "trials", 1.0, node_types=types)   # fits the nodes up now: no wait
    start = time.monotonic()
    with pytest.raises(AlloyError, match=r"trials: 1 × \{cpu: 1, gpu: 1\} did not come up within 1.5 s"):
        check_placement({"CPU": 1, "GPU": 1}, 1, "trials", 1.5, node_types=types)
    assert 1.5 <= time.monotonic() - start < 10
    with pytest.raises(AlloyError, match=r"1 × \{cpu: 8, gpu: 16\} can never be placed.*node types hold 0"):
        check_placement({"CPU": 8, "GPU": 16}, 1, "workers", 1.0, node_types=types)   # no type has 16 GPUs


def test_worker_resources_are_reserved_with_a_timeout(local_ray):
    from ray.util.placement_group import remove_placement_group

    from alloy.workers.placement import reserve

    group = reserve({"CPU": 1, "GPU": 0}, 2, "workers", 30.0, "alloy-test-reserve")
    assert group.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
    try:
        with pytest.raises(AlloyError, match=r"workers: 1 × \{cpu: 1\} could not be reserved within 1 s"):
            reserve({"CPU": 1}, 1, "workers", 1.0, "alloy-test-more")   # both CPUs are held
    finally:
        remove_placement_group(group)
    assert reserve({"CPU": 0, "GPU": 0}, 3, "workers", 1.0, "alloy-test-none") is None


def test_a_sweep_whose_every_trial_failed_exits_non_zero(tmp_path, local_ray, capsys):
    data = quick_space(tmp_path, trials=3)
    data["evaluation"]["synthetic"]["fail_fraction"] = 1.0
    out = tmp_path / "sweep"
    assert main(["sweep", str(write_space(tmp_path, data)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"every trial of the sweep in {out} failed (3 of 3)" in err and "synthetic failure" in err
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert sorted(r["trial"] for r in rows) == [0, 1, 2] and {r["status"] for r in rows} == {"failed"}


def test_deleted_or_corrupt_leaderboard_is_rebuilt_from_the_study(tmp_path, local_ray, capsys):
    from alloy.search.leaderboard import read_leaderboard
    from alloy.search.sweep import run_sweep

    out = tmp_path / "sweep"
    board = run_sweep(write_space(tmp_path, quick_space(tmp_path, trials=5)), out)
    original = pq.read_table(board).to_pylist()
    study = optuna.load_study(study_name="alloy", storage=f"sqlite:///{out / 'study.db'}")
    assert {r["trial"] for r in original} == {t.number for t in study.get_trials()} and len(study.trials) == 5

    board.write_bytes(board.read_bytes()[:100])                     # corrupt
    capsys.readouterr()
    assert main(["board", str(out), "--top", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 5
    assert pq.read_table(board).to_pylist() == original             # rebuilt in place, every row
    board.write_text("not parquet at all")
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()

    board.unlink()                                                  # deleted
    assert read_leaderboard(out).to_pylist() == original
    board.unlink()
    assert main(["board", str(out), "--rebuild"]) == 0
    assert "rebuilt" in capsys.readouterr().out and pq.read_table(board).to_pylist() == original

    with sqlite3.connect(out / "study.db") as db:                  # a sweep from before the study held its rows
        db.execute("DELETE FROM study_user_attributes WHERE key LIKE 'row:%'")
    run_sweep(tmp_path / "space.yaml", out, resume=True)             # adopts the rows of its Parquet file
    assert pq.read_table(board).to_pylist() == original
    assert len(SweepRecords(study._storage, "alloy").rows()) == len(original)

    (tmp_path / "loose.parquet").write_text("garbage")             # not a sweep folder: a clear error
    with pytest.raises(AlloyError, match="loose.parquet: not a readable Parquet file"):
        read_leaderboard(tmp_path / "loose.parquet")
