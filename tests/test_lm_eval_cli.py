"""Plain lm-eval runs alloy's tasks offline: the `lm_eval` console script with `--include_path
evaluators` and ALLOY_DATA_DIR, on a tiny scripted checkpoint, exactly as the README shows it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alloy.evaluation.datasets import order_key
from alloy.sandbox import OPT_IN_ENV
from alloy.tiny import save_tiny_checkpoint
from tests.scripted_models import answering_model

ROOT = Path(__file__).resolve().parents[1]
LM_EVAL = Path(sys.executable).parent / "lm_eval"

pytestmark = pytest.mark.slow


def lm_eval(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the lm_eval CLI from the repository root as the README shows it (ALLOY_DATA_DIR relative
    to the root), with no network, no code-execution opt-in and a private HF cache."""
    environment = {key: value for key, value in os.environ.items() if key != OPT_IN_ENV}
    environment.update(ALLOY_DATA_DIR="../shared/data", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                       HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    return subprocess.run([str(LM_EVAL), *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def first_answer(shared_data) -> tuple[str, list[str]]:
    """The answer of the first AIME 2024 question in the seeded order, and the first two answers."""
    rows = [json.loads(line) for line in (shared_data / "aime24.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: order_key(row["id"]))
    return rows[0]["answer"], [row["answer"] for row in rows[:2]]


def test_lm_eval_cli_scores_aime24_offline(first_answer, tiny_tokenizer, tmp_path):
    answer, first_two = first_answer
    model = save_tiny_checkpoint(answering_model(tiny_tokenizer, answer), tmp_path / "model", tiny_tokenizer)
    out = tmp_path / "out"
    result = lm_eval(["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
                      "--include_path", "evaluators", "--tasks", "aime24", "--apply_chat_template",
                      "--limit", "2", "--gen_kwargs", "max_gen_toks=24", "--output_path", str(out)],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    scores = json.loads(results_file.read_text())["results"]["aime24"]
    expected = sum(a == answer for a in first_two) / 2
    assert scores["exact_match,none"] == pytest.approx(expected) and expected > 0
    assert scores["pass@1,none"] == pytest.approx(expected)


def test_lm_eval_cli_livecodebench_needs_the_opt_in_before_generating(tiny_tokenizer, tmp_path):
    model = save_tiny_checkpoint(answering_model(tiny_tokenizer, "1"), tmp_path / "model", tiny_tokenizer)
    args = ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
            "--include_path", "evaluators", "--tasks", "livecodebench", "--limit", "1",
            "--gen_kwargs", "max_gen_toks=8", "--confirm_run_unsafe_code"]
    refused = lm_eval(args, tmp_path)
    assert refused.returncode != 0
    assert OPT_IN_ENV in refused.stderr
    assert "generate_until" not in refused.stderr + refused.stdout  # failed while loading, before any request
