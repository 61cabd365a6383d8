"""A store on one node and a builder on another, with `ray.cluster_utils.Cluster`."""
from __future__ import annotations

import pytest
import ray
import torch

from alloy.workers.local_ray import start_lock
from tests.parents import write_parents
from tests.parents import disk_child


@pytest.mark.slow
def test_store_and_builder_on_two_nodes(tmp_path, tiny_tokenizer):
    from ray.cluster_utils import Cluster

    from alloy.workers.builder import builder_actor
    from alloy.workers.store import start_stores

    parents = write_parents(tmp_path, "qwen3_moe", tiny_tokenizer, n=2, dtype=torch.bfloat16)
    with start_lock():  # in turn with the embedded Rays other tests start
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"store_node": 1},
                                                                "include_dashboard": False})
        cluster.add_node(num_cpus=1, resources={"builder_node": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        (store,) = start_stores("t-cluster", {str(p): p for p in parents}, resources={"store_node": 0.1})
        builder = builder_actor(num_cpus=1, resources={"builder_node": 0.1}).remote("t-cluster")
        recipe = {"merge_method": "linear", "models": [{"model": str(parents[0]), "parameters": {"weight": 0.5}},
                                                       {"model": str(parents[1]), "parameters": {"weight": 0.5}}]}
        ray.get(builder.build.remote(recipe))
        node = lambda h: ray.get(h.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # noqa: E731
        assert node(store) != node(builder)
        expected = disk_child(tmp_path, recipe, "two-nodes")
        state = ray.get(builder.state_dict.remote())
        assert all(torch.equal(state[n], expected[n]) for n in state)
    finally:
        ray.shutdown()
        cluster.shutdown()
