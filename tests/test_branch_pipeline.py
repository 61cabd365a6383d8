"""The TinyR1 pipeline of the README at a tiny scale: traces → select → branch (FSDP2) → sweep.

The same commands as `ray_jobs/traces.py`, `selection.py`, `branch.py` and `sweep.py` run, and the sweep
uses the shipped `search_spaces/branch_merge.yaml` with its parents, evaluation and budget made tiny.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.teachers import correct_traces, teacher_workspace

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "branch_merge.yaml"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tinyr1_pipeline_at_tiny_scale(tmp_path_factory, tmp_path, capsys):
    from alloy.branch.problems import read_problems, score_response
    from alloy.cli import main
    from alloy.demo.backbone import build_backbone

    workspace = teacher_workspace(tmp_path_factory.getbasetemp())
    files, teacher = workspace["files"], workspace["teacher"]
    problems = [arg for domain, path in files.items() for arg in ("--problems", f"{domain}={path}")]
    sampling = ["--temperature", "0.3", "--max-new-tokens", "160", "--backend", "hf"]
    # a weak backbone with the teacher's tokenizer: the student that gets fine-tuned, and the reference student
    backbone = build_backbone(tmp_path / "backbone", correct_traces(files), steps=3, batch_size=4, max_length=256,
                              vocab_size=400)

    # 1. teacher traces, verified; the student's own attempts for the difficulty signal
    assert main(["traces", "--teacher", str(teacher), *problems, "--out", str(tmp_path / "traces"), "-k", "2",
                 *sampling]) == 0
    assert main(["traces", "--teacher", str(backbone), *problems, "--out", str(tmp_path / "student"), "-k", "1",
                 "--allow-empty-domains", *sampling]) == 0
    # 2. s1-style selection
    assert main(["select", str(tmp_path / "traces"), "--out", str(tmp_path / "selected"), "--student",
                 str(tmp_path / "student"), "--keep-easy", "--per-domain", "4"]) == 0
    assert "student right" in capsys.readouterr().out
    for domain, path in files.items():
        by_id = {p.id: p for p in read_problems(path, domain)}
        selected = [json.loads(line) for line in (tmp_path / "selected" / f"{domain}.jsonl").read_text().splitlines()]
        assert selected and all(score_response(by_id[t["problem_id"]], t["response"])[0] for t in selected)
    # 3. one expert per domain with FSDP2 over two Ray Train workers, packed, cosine schedule
    data = [arg for domain in files for arg in ("--data", f"{domain}={tmp_path / 'selected' / f'{domain}.jsonl'}")]
    assert main(["branch", "--backbone", str(backbone), *data, "--out", str(tmp_path / "experts"), "--strategy", "fsdp",
                 "--num-workers", "2", "--lr", "2e-3", "--lr-schedule", "cosine", "--warmup-ratio", "0.1",
                 "--max-length", "256", "--pack-length", "512", "--batch-size", "1"]) == 0
    for domain in files:
        assert (tmp_path / "experts" / domain / "config.json").is_file()
    # 4. the shipped branch-merge space, at tiny scale, merges the experts
    space = yaml.safe_load(SPACE.read_text())
    space["parents"]["root"] = str(tmp_path)
    space["parents"]["models"] = {"backbone": "backbone", **{domain: f"experts/{domain}" for domain in files}}
    space["objectives"] = ["aime24/exact_match", "gpqa_diamond/exact_match"]
    space["evaluation"].update(tasks=["aime24", "gpqa_diamond"], rungs=[2], max_gen_toks=48,
                               data_dir=str(files["math"].parent))
    space["search"].update(trials=5, concurrency=1, resources={"cpu": 1})
    space_file = tmp_path / "branch_merge.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    assert main(["sweep", str(space_file), "--out", str(tmp_path / "sweep")]) == 0
    rows = pq.read_table(tmp_path / "sweep" / "leaderboard.parquet").to_pylist()
    merges = [r for r in rows if r["status"] == "ok" and not r["reference"]]
    assert {"parent:backbone", *(f"parent:{d}" for d in files)} <= {r["reference"] for r in rows if r["reference"]}
    assert merges and all(json.loads(r["recipe"])["merge_method"] in ("ties", "dare_ties", "arcee_fusion", "linear")
                          for r in merges)
