"""cluster.yaml passes Ray's own cluster-config validation and keeps alloy's cluster rules."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_config(config):
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before validating
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_ray_rejects_a_broken_copy(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["unknown_field"] = 1
    with pytest.raises(jsonschema.ValidationError, match="unknown_field"):
        validate_config(prepare_config(broken))


def test_head_runs_no_trials_and_gpu_workers_autoscale(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    gpu_types = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker type is required"
    for worker in gpu_types:
        assert worker["min_workers"] == 0
        assert 0 < worker["max_workers"] <= config["max_workers"]


def test_images_are_pinned_to_the_installed_ray(config):
    docker = config["docker"]
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert docker["worker_image"] == docker["image"]
    assert docker["head_image"].startswith(f"rayproject/ray:{ray.__version__}-py311")


def test_alloy_is_installed_from_the_mounted_working_dir(config):
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert mounted
    assert any("pip install" in cmd and mounted[0] in cmd for cmd in config["setup_commands"])


def test_dashboard_is_not_exposed(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    open_ports = {port for rule in rules for port in range(rule["FromPort"], rule["ToPort"] + 1)}
    assert open_ports == {22}
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head_start
    assert "--dashboard-host=127.0.0.1" in head_start


def test_every_shipped_search_space_fits_a_node_type(config):
    """Each shipped space's workers (each of their pipeline stages) fit a worker node type, and the cluster
    can hold `concurrency` of them."""
    from alloy.search.space import load_space

    types = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    spaces = sorted((CLUSTER_YAML.parent / "search_spaces").glob("*.yaml"))
    assert spaces
    for path in spaces:
        search = load_space(path, check_paths=False).search
        per_node = {name: min(t["resources"].get("GPU", 0) // search.gpu if search.gpu else float("inf"),
                              t["resources"].get("CPU", 0) // search.cpu if search.cpu else float("inf"))
                    for name, t in types.items()}
        fitting = {name: n for name, n in per_node.items() if n >= 1}
        assert fitting, f"{path.name}: no node type has {search.gpu:g} GPUs and {search.cpu:g} CPUs"
        capacity = sum(min(n, 1e6) * types[name]["max_workers"] for name, n in fitting.items())
        stages = search.stages if search.gpu else 1   # on CPUs a worker's stages share its CPUs
        assert capacity >= search.concurrency * stages, f"{path.name}: the cluster holds {capacity} of its stages"
