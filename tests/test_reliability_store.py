"""Sweep actors do not outlive their use: a store whose parent changed or vanished is replaced or
stopped, a finished sweep removes its stores, workers and pool (unless --keep-store), and
`alloy sweep --cleanup DIR` removes what a kept sweep left on the cluster."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import ray
import yaml

from alloy.cli import main
from alloy.errors import AlloyError
from alloy.workers.store import NAMESPACE, start_stores, stop_stores, store_name
from tests.parents import read_all, write_parents


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_tokenizer):
    return write_parents(tmp_path_factory.mktemp("parents"), "llama", tiny_tokenizer, n=3)


def running(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def stored_tensor(handle, model: str, name: str) -> np.ndarray:
    manifest = ray.get(handle.load.remote())
    block = next(b for b in manifest.blocks[model].values() if name in ray.get(b))
    return ray.get(block)[name]


def test_a_store_of_changed_or_deleted_parents_is_not_served(tmp_path, parents, local_ray):
    a, b = shutil.copytree(parents[0], tmp_path / "a"), shutil.copytree(parents[1], tmp_path / "b")
    models = {"A": str(a), "B": str(b)}
    first = start_stores("stale", models, base="A")[0]
    before = ray.get(first.info.remote())["fingerprint"]
    assert start_stores("stale", models, base="A")[0]._actor_id == first._actor_id   # unchanged: reused

    shutil.rmtree(b)
    shutil.copytree(parents[2], b)                                 # B rewritten with other weights
    second = start_stores("stale", models, base="A")[0]
    assert second._actor_id != first._actor_id and ray.get(second.info.remote())["fingerprint"] != before
    name = "model.layers.0.mlp.up_proj.weight"
    assert np.array_equal(stored_tensor(second, "B", name), read_all(parents[2])[name].numpy())

    shutil.rmtree(b)                                               # B deleted
    with pytest.raises(AlloyError, match=str(b)):
        start_stores("stale", models, base="A")
    assert not running(store_name("stale", 0))
    assert stop_stores("stale") == []


def lm_eval_space(folder, parents, shared_data) -> dict:
    return {
        "name": "teardown",
        "parents": {"base": "base", "models": {"base": str(parents[0]), "ft": str(parents[1])}},
        "default": {"merge_method": "linear", "weights": "simplex"},
        "objectives": ["aime24/exact_match"],
        "evaluation": {"tasks": ["aime24"], "rungs": [1], "max_gen_toks": 4, "data_dir": str(shared_data)},
        "search": {"sampler": "random", "seed": 0, "trials": 2, "concurrency": 1, "resources": {"cpu": 1}},
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_finished_sweep_removes_its_actors_unless_kept(tmp_path, parents, local_ray, shared_data, capsys,
                                                          one_torch_thread):
    from alloy.workers.pool import _pool_name, sweep_id

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(lm_eval_space(tmp_path, parents, shared_data)))

    kept = tmp_path / "kept"
    assert main(["sweep", str(space), "--out", str(kept), "--keep-store"]) == 0
    sweep = sweep_id("teardown", kept)
    assert running(store_name(sweep, 0)) and not running(_pool_name(sweep))   # workers and pool always go
    capsys.readouterr()
    assert main(["sweep", "--cleanup", str(kept)]) == 0
    assert f"removed {store_name(sweep, 0)}" in capsys.readouterr().out
    assert not running(store_name(sweep, 0))
    assert main(["sweep", "--cleanup", str(kept)]) == 0
    assert "no actor of the sweep" in capsys.readouterr().out

    plain = tmp_path / "plain"
    assert main(["sweep", str(space), "--out", str(plain)]) == 0
    sweep = sweep_id("teardown", plain)
    assert not running(store_name(sweep, 0)) and not running(_pool_name(sweep))
    alloy_actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]
    assert alloy_actors == []
    from ray._private.state import actors    # the GCS actor table (the state API needs the dashboard)

    alive = {a["ActorClassName"] for a in actors().values() if a["State"] != "DEAD"}
    assert not alive & {"CandidateWorker", "WorkerPool", "ParentStore"}, alive
    groups = [g["name"] for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    assert groups == [], groups                                     # the workers' reserved resources too


def test_cleanup_is_refused_while_the_driver_runs(tmp_path, capsys):
    from alloy.search.lock import driver_lock

    (tmp_path / "space.yaml").write_text("name: x\n")
    with driver_lock(tmp_path) as me:
        assert main(["sweep", "--cleanup", str(tmp_path)]) == 2
    assert f"being driven by pid {me.pid}" in capsys.readouterr().err
    assert main(["sweep", "--cleanup", str(tmp_path / "nothing")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
