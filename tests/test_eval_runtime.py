"""The evaluation harness: lm-eval on in-memory models, token statistics, nested rungs, repeats."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from alloy.errors import AlloyError
from alloy.evaluation.harness import EVALUATORS_ENV, RungEvaluator, TaskSuite, TokenStats, evaluate, evaluators_dir
from alloy.tiny import make_tiny_model
from tests.scripted_models import answering_model, encode

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOY_ANSWERS = ["42", "42", "42", "7", "42", "7"]

TOY_YAML = """\
task: toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}\\nPut the final answer within \\\\boxed{{}}."
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: 64
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""

TOY_UTILS = """\
from alloy.evaluation.answers import aime_score


def process_results(doc, results):
    return {"exact_match": float(aime_score(results[0], doc["answer"]))}
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy_tasks(tmp_path_factory) -> Path:
    """An lm-eval task folder with one generative task `toy` over a local JSONL of six questions."""
    root = tmp_path_factory.mktemp("toy_tasks")
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": answer}) + "\n"
                            for i, answer in enumerate(TOY_ANSWERS)))
    (root / "toy.yaml").write_text(TOY_YAML.format(data=data))
    (root / "utils.py").write_text(TOY_UTILS)
    bad = TOY_YAML.format(data=data).replace("task: toy", "task: toy_beams").replace(
        "do_sample: false", "do_sample: false\n  num_beams: 4")
    (root / "toy_beams.yaml").write_text(bad)
    return root


def test_evaluate_reports_scores_samples_and_token_stats(toy_tasks, tiny_tokenizer):
    model = make_tiny_model("qwen3", seed=5)
    result = evaluate(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, limit=4, max_gen_toks=20,
                      max_thinking_tokens=5, log_samples=True)
    task = result.tasks["toy"]
    assert (task.n_samples, task.repeats, len(task.samples)) == (4, 1, 4)
    assert [s.doc_id for s in task.samples] == [0, 1, 2, 3]
    outputs = [s.output_tokens for s in task.samples]
    thinking = [s.thinking_tokens for s in task.samples]
    assert all(0 < n <= 20 for n in outputs) and all(t <= 5 for t in thinking)
    assert task.output_tokens == TokenStats.of(outputs)
    assert task.output_tokens.mean == pytest.approx(statistics.fmean(outputs))
    assert task.thinking_tokens.max == max(thinking)
    assert result.output_tokens == task.output_tokens  # one task: pooled == per task
    assert task.scores["exact_match"] == pytest.approx(statistics.fmean(s.metrics["exact_match"] for s in task.samples))
    for sample in task.samples:
        assert sample.prompt.endswith("<|im_start|>assistant\n<think>\n")  # the chat template was applied
        assert sample.target == TOY_ANSWERS[sample.doc_id]
        assert sample.correct == (sample.metrics["exact_match"] == 1.0)
        if sample.thinking_capped:
            assert sample.thinking_tokens == 5 and "</think>\nFinal Answer:" in sample.completion
    flat = result.metrics()
    assert flat["toy/exact_match"] == task.scores["exact_match"]
    assert flat["output_tokens_mean"] == task.output_tokens.mean
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["tasks"]["toy"]["n_samples"] == 4 and len(payload["tasks"]["toy"]["samples"]) == 4
    assert payload["config"]["max_thinking_tokens"] == 5 and payload["config"]["limit"] == {"toy": 4}


def test_scripted_children_score_and_in_place_weights_are_seen(toy_tasks, tiny_tokenizer):
    model = answering_model(tiny_tokenizer, "42")
    evaluator = RungEvaluator(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, max_gen_toks=32,
                              log_samples=True)
    first = evaluator.score("child-42")
    assert first.tasks["toy"].scores["exact_match"] == pytest.approx(4 / 6)
    assert [s.correct for s in first.tasks["toy"].samples] == [a == "42" for a in TOY_ANSWERS]
    assert {s.response for s in first.tasks["toy"].samples} == {"\\boxed{42}"}
    assert first.tasks["toy"].thinking_tokens.mean == len(encode(tiny_tokenizer, " the answer is"))
    with torch.no_grad():  # the next child overwrites the resident model's weights in place
        for target, source in zip(model.parameters(), answering_model(tiny_tokenizer, "7").parameters()):
            target.copy_(source)
    second = evaluator.score("child-7")
    assert second.tasks["toy"].scores["exact_match"] == pytest.approx(2 / 6)
    assert evaluator.score("child-42").tasks["toy"].scores["exact_match"] == pytest.approx(4 / 6)  # cached


def test_rungs_score_only_the_docs_they_add(toy_tasks, tiny_tokenizer):
    model = make_tiny_model("llama", seed=2)
    evaluator = RungEvaluator(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, max_gen_toks=10,
                              log_samples=True)
    generated = []
    real_generate = evaluator.lm.generate_until

    def counting_generate(requests, disable_tqdm=False):
        generated.append(len(requests))
        return real_generate(requests, disable_tqdm)

    evaluator.lm.generate_until = counting_generate
    rung1 = evaluator.score("child", 2)
    rung2 = evaluator.score("child", 4)
    again = evaluator.score("child", 4)
    assert generated == [2, 2]  # rung 2 generated docs 2 and 3 only; the repeat generated nothing
    assert rung2.tasks["toy"].samples[:2] == rung1.tasks["toy"].samples
    assert again.to_dict() == rung2.to_dict()
    fresh = evaluate(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, limit=4, max_gen_toks=10,
                     log_samples=True)
    assert [s.response for s in fresh.tasks["toy"].samples] == [s.response for s in rung2.tasks["toy"].samples]
    assert fresh.tasks["toy"].output_tokens == rung2.tasks["toy"].output_tokens
    assert evaluator.score("child", 100).tasks["toy"].n_samples == 6  # clipped to the task size
    assert evaluator.score("child", {"toy": 3}).tasks["toy"].n_samples == 3
    assert generated == [2, 2, 2]
    evaluator.forget("child")
    evaluator.score("child", 1)
    assert generated == [2, 2, 2, 1]


def test_environment_is_described_once_per_process(toy_tasks, tiny_tokenizer, monkeypatch):
    """lm-eval's ~0.3 s environment description runs at most once however many rungs are scored."""
    import torch.utils.collect_env

    calls = []
    real = torch.utils.collect_env.get_pretty_env_info
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or real())
    evaluator = RungEvaluator(make_tiny_model("llama", seed=2), tiny_tokenizer, ["toy"], evaluators=toy_tasks,
                              max_gen_toks=4)
    for n in (1, 2, 3):
        evaluator.score("child", n)
    assert len(calls) <= 1  # none where an earlier test of this process described it already


def test_repeats_sample_with_seeds(toy_tasks, tiny_tokenizer):
    model = make_tiny_model("qwen3", seed=7)
    options = dict(evaluators=toy_tasks, limit=3, max_gen_toks=8, repeats=2, seed=3, log_samples=True)
    evaluator = RungEvaluator(model, tiny_tokenizer, ["toy"], **{k: v for k, v in options.items() if k != "limit"})
    result = evaluator.score("child", 3)
    kwargs = evaluator.suite.tasks["toy"].get_config("generation_kwargs")
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.6 and kwargs["max_gen_toks"] == 8
    samples = result.tasks["toy"].samples
    assert [(s.doc_id, s.repeat) for s in samples] == [(d, r) for d in range(3) for r in range(2)]
    assert result.tasks["toy"].n_samples == 3 and result.tasks["toy"].output_tokens.count == 6
    scores = result.tasks["toy"].scores
    assert scores["avg@2"] == pytest.approx(scores["exact_match"]) and "pass@5" not in scores
    by_repeat = {r: [s.response for s in samples if s.repeat == r] for r in range(2)}
    assert by_repeat[0] != by_repeat[1]
    rerun = evaluate(model, tiny_tokenizer, ["toy"], **options)
    assert [s.response for s in rerun.tasks["toy"].samples] == [s.response for s in samples]
    reseeded = evaluate(model, tiny_tokenizer, ["toy"], **dict(options, seed=4))
    assert [s.response for s in reseeded.tasks["toy"].samples] != [s.response for s in samples]


def test_new_repeat_indices_are_new_draws_decoded_alike(toy_tasks, tiny_tokenizer):
    """The confirmation's repeats (indices after the search's) are fresh samples, with the same decoding."""
    evaluator = RungEvaluator(make_tiny_model("qwen3", seed=7), tiny_tokenizer, ["toy"], evaluators=toy_tasks,
                              max_gen_toks=8, repeats=2, seed=3, log_samples=True)
    searched = evaluator.score("child", 3).tasks["toy"]
    fresh = evaluator.score("child", 3, range(2, 5)).tasks["toy"]
    assert [(s.doc_id, s.repeat) for s in fresh.samples] == [(d, r) for d in range(3) for r in range(2, 5)]
    assert fresh.repeats == 3 and fresh.n_samples == 3 and "avg@3" in fresh.scores
    assert [s.response for s in fresh.samples if s.repeat == 2] != [s.response for s in searched.samples
                                                                    if s.repeat == 0]
    assert evaluator.suite.tasks["toy"].get_config("generation_kwargs")["temperature"] == 0.6  # still the search's
    again = evaluator.score("child", 3, range(0, 2)).tasks["toy"]  # cached: the search's own draws
    assert [s.response for s in again.samples] == [s.response for s in searched.samples]
    for bad in (range(0), range(-1, 1), [0, 1]):
        with pytest.raises(AlloyError, match="repeats must be a non-empty range"):
            evaluator.score("child", 3, bad)


def test_real_aime_task_scores_a_scripted_answer(tiny_tokenizer):
    suite = TaskSuite.load(["aime24"], data_dir=SHARED_DATA)
    docs = suite.tasks["aime24"].eval_docs
    answer = docs[0]["answer"]
    model = answering_model(tiny_tokenizer, answer)
    result = evaluate(model, tiny_tokenizer, suite, limit=3, max_gen_toks=24, log_samples=True)
    task = result.tasks["aime24"]
    expected = [docs[i]["answer"] == answer for i in range(3)]
    assert [s.correct for s in task.samples] == expected
    assert task.scores["exact_match"] == pytest.approx(sum(expected) / 3) and task.scores["exact_match"] > 0
    assert task.samples[0].prompt.count(docs[0]["problem"]) == 1


def test_bad_inputs_fail_clearly(toy_tasks, tiny_tokenizer, monkeypatch, tmp_path):
    with pytest.raises(AlloyError, match="unknown evaluation task 'nope'.*toy"):
        TaskSuite.resolve(["nope"], evaluators=toy_tasks)
    with pytest.raises(AlloyError, match="does not exist"):
        evaluators_dir(tmp_path / "missing")
    monkeypatch.setenv(EVALUATORS_ENV, str(toy_tasks))
    assert evaluators_dir() == toy_tasks
    monkeypatch.delenv(EVALUATORS_ENV)
    assert evaluators_dir() == Path(__file__).resolve().parents[1] / "evaluators"
    with pytest.raises(AlloyError, match="allow_code_execution"):
        TaskSuite.resolve(["livecodebench"], data_dir=SHARED_DATA)
    with pytest.raises(AlloyError, match="no data for task 'gpqa_diamond'"):
        TaskSuite.resolve(["gpqa_diamond"], data_dir=SHARED_DATA)
    model = make_tiny_model("llama")
    with pytest.raises(AlloyError, match="num_beams"):
        RungEvaluator(model, tiny_tokenizer, ["toy_beams"], evaluators=toy_tasks, max_gen_toks=8)
    evaluator = RungEvaluator(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, max_gen_toks=8)
    with pytest.raises(AlloyError, match="positive integer"):
        evaluator.score("child", 0)
    with pytest.raises(AlloyError, match="not evaluated"):
        evaluator.score("child", {"aime24": 2})
    with pytest.raises(AlloyError, match="repeats"):
        RungEvaluator(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, max_gen_toks=8, repeats=0)
    with pytest.raises(AlloyError, match="below max_gen_toks"):
        evaluate(model, tiny_tokenizer, ["toy"], evaluators=toy_tasks, max_gen_toks=8, max_thinking_tokens=8)


def test_vllm_backend_records_tokens(tmp_path, tiny_tokenizer):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM backend needs a GPU")
    from alloy.evaluation.vllm_lm import ThinkingVLLM, local_engine
    from alloy.tiny import save_tiny_checkpoint

    path = save_tiny_checkpoint(make_tiny_model("qwen3"), tmp_path / "model", tiny_tokenizer)
    lm = ThinkingVLLM(local_engine(str(path), gpu_memory_utilization=0.3, enforce_eager=True), max_gen_toks=16)
    result = evaluate(lm, None, ["aime24"], data_dir=SHARED_DATA, limit=2, max_gen_toks=16, log_samples=True)
    task = result.tasks["aime24"]
    assert task.n_samples == 2 and all(0 < s.output_tokens <= 16 for s in task.samples)
