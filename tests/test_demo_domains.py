"""The demo's synthetic domains (record formats, verified programs, determinism, disjoint training and
evaluation problems), its format traces and its tiny backbone."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from alloy.demo.domains import (DOMAIN_TASKS, addition_steps, check_program, evaluation_prompts, format_traces,
                                overlap, split_domain, write_domain_data)
from alloy.errors import AlloyError
from alloy.evaluation.answers import aime_score, gpqa_score
from alloy.evaluation.livecodebench import extract_code

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVALUATORS = Path(__file__).resolve().parents[1] / "evaluators"
N = 40


def _evaluator_prompt(task_yaml: Path, doc: dict) -> str:
    """The prompt an evaluator task's YAML `doc_to_text` gives for `doc`."""
    import jinja2
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return jinja2.Template(yaml.load(task_yaml.read_text(), Loader=Loader)["doc_to_text"]).render(**doc)


@pytest.fixture(scope="module")
def splits():
    return {domain: split_domain(domain, 3 * N, N, seed=3) for domain in DOMAIN_TASKS}


@pytest.fixture(scope="module")
def items(splits):
    """Training and evaluation problems of each domain together."""
    return {domain: train + evaluation for domain, (train, evaluation) in splits.items()}


def _split_think(response: str) -> tuple[str, str]:
    assert response.startswith("<think>\n") and "\n</think>\n\n" in response
    thinking, answer = response[len("<think>\n"):].split("\n</think>\n\n", 1)
    assert thinking.strip() and answer.strip()
    return thinking, answer


def test_math_records_are_aime_records(items):
    real = json.loads((SHARED_DATA / "aime24.jsonl").read_text().splitlines()[0])
    for item in items["math"]:
        record = item.record
        assert set(record) == set(real)
        assert isinstance(record["answer"], str) and 0 <= int(record["answer"]) <= 999
        assert item.trace["prompt"] == _evaluator_prompt(EVALUATORS / "aime" / "_aime_template_yaml", record)
        _, answer = _split_think(item.trace["response"])
        assert answer.endswith(f"\\boxed{{{record['answer']}}}")
        assert aime_score(item.trace["response"], record["answer"]) == 1.0
    assert len({item.record["id"] for item in items["math"][:3 * N]}) == 3 * N


def test_addition_trace_carries():
    assert addition_steps(47, 5) == ["47 + 5", "units: 7 + 5 = 12, carry 1", "tens: 4 + 1 = 5", "so 47 + 5 = 52"]
    assert addition_steps(98, 3)[-1] == "so 98 + 3 = 101"


def test_science_records_work_with_lm_eval_gpqa_and_alloy_scoring(items):
    import datasets
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.tasks.gpqa.cot_zeroshot.utils import process_docs

    from alloy.evaluation.datasets import gpqa_records

    fields = {"Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"}
    records = [item.record for item in items["science"]]
    assert all(fields <= set(r) and len({r[f] for f in fields - {"Question"}}) == 4 for r in records)
    docs = process_docs(datasets.Dataset.from_list(records))  # lm-eval's own shuffle into choice1..4
    for doc, record in zip(docs, records):
        assert doc[f"choice{'ABCD'.index(doc['answer'][1]) + 1}"] == record["Correct Answer"]
    strict = RegexFilter(regex_pattern="(?<=The answer is )(.*)(?=.)")  # lm-eval's gpqa strict-match filter
    for item in items["science"]:
        _, answer = _split_think(item.trace["response"])
        letter = re.fullmatch(r".*The answer is \(([ABCD])\)\.", answer, flags=re.DOTALL).group(1)
        choices = [line[4:] for line in item.trace["prompt"].splitlines() if re.match(r"\([ABCD]\) ", line)]
        doc = {"question": item.record["Question"], **{f"choice{i + 1}": c for i, c in enumerate(choices)}}
        assert item.trace["prompt"] == _evaluator_prompt(EVALUATORS / "gpqa" / "gpqa_diamond.yaml", doc)
        assert sorted(choices) == sorted(gpqa_records([item.record])[0]["choices"])
        assert choices["ABCD".index(letter)] == item.record["Correct Answer"]
        assert gpqa_score(item.trace["response"], f"({letter})") == 1.0
        assert next(iter(strict.apply([[answer]], [{}]))) == [f"({letter})"]


def test_code_records_have_livecodebench_fields(items):
    from alloy.evaluation.livecodebench import build_prompt, normalize_problem, passes_problem
    real = json.loads((SHARED_DATA / "livecodebench_subset.jsonl").read_text().splitlines()[0])
    for item in items["code"]:
        record = item.record
        assert set(record) == set(real)
        assert all(isinstance(value, str) for value in record.values())
        tests = json.loads(record["public_test_cases"])
        assert tests and all(set(t) == {"input", "output", "testtype"} and t["testtype"] == "stdin" for t in tests)
        assert record["private_test_cases"] == "[]" and record["metadata"] == "{}"
        assert record["starter_code"] == ""
        assert item.trace["prompt"] == build_prompt(normalize_problem(record))
        _, answer = _split_think(item.trace["response"])
        assert answer.startswith("```python\n") and answer.endswith("\n```")
    for item in items["code"][:3]:  # the evaluator's own scoring (sandboxed) passes the reference programs
        assert passes_problem(extract_code(item.trace["response"]), normalize_problem(item.record),
                              allow_code_execution=True)


def test_every_generated_program_passes_its_own_tests(items):
    for item in items["code"]:
        tests = json.loads(item.record["public_test_cases"])
        assert check_program(extract_code(item.trace["response"]), tests) == [], item.record["question_id"]


def test_program_check_catches_wrong_and_crashing_programs(items):
    item = items["code"][0]
    tests = json.loads(item.record["public_test_cases"])
    assert len(check_program("print('surely not the answer')", tests)) == len(tests)
    assert "exited with" in check_program("raise SystemExit(3)", tests[:1])[0]


def test_splits_are_deterministic_and_evaluation_does_not_depend_on_n_train(splits):
    for domain in DOMAIN_TASKS:
        train, evaluation = splits[domain]
        again_train, again_eval = split_domain(domain, 3 * N, N, seed=3)
        assert [i.record for i in again_eval] == [i.record for i in evaluation]
        assert [i.trace for i in again_train] == [i.trace for i in train]
        assert [i.record for i in split_domain(domain, 5, N, seed=3)[1]] == [i.record for i in evaluation]
        assert [i.record for i in split_domain(domain, 5, N, seed=4)[1]] != [i.record for i in evaluation]
        assert len({i.key for i in train + evaluation}) == 4 * N


def test_evaluation_problems_are_never_training_problems(splits):
    for domain, (train, evaluation) in splits.items():
        assert overlap(domain, train, evaluation) == []
        train_prompts = {i.trace["prompt"] for i in train}
        assert not train_prompts & set(evaluation_prompts(domain, evaluation))
    math_train, math_eval = splits["math"]
    pairs = lambda items: {(a, b) for i in items for a, b in [re.search(r"(\d+)\D+(\d+)", i.record["problem"]).groups()]}
    assert not pairs(math_train) & pairs(math_eval)  # new numbers
    inputs = lambda items: {t["input"] for i in items for t in json.loads(i.record["public_test_cases"])}
    assert not inputs(splits["code"][0]) & inputs(splits["code"][1])  # new test inputs
    # the check catches a shared problem: the same number pair, or a question shown as the evaluator shows it
    assert overlap("math", math_train + math_eval[:1], math_eval)
    science_train, science_eval = splits["science"]
    shown = dataclasses.replace(science_train[0], trace={"prompt": evaluation_prompts("science", science_eval)[0],
                                                         "response": ""})
    assert overlap("science", science_train + [shown], science_eval)


def test_format_traces_teach_the_formats_but_no_domain():
    from alloy.evaluation.answers import aime_score

    traces = format_traces(6, seed=0)
    assert len(traces) == 18
    number, choice, program = traces[:3]
    assert aime_score(number["response"], re.search(r"\d+", number["prompt"]).group()) == 1.0
    assert choice["prompt"].startswith("Answer the following multiple-choice question")
    assert choice["response"].endswith(").") and "The answer is (" in choice["response"]
    assert "print(input())" in program["response"]
    domain_prompts = {i.trace["prompt"] for d in DOMAIN_TASKS for i in split_domain(d, 20, 5, 0)[0]}
    assert not domain_prompts & {t["prompt"] for t in traces}


def test_write_domain_data_layout_split_and_determinism(tmp_path):
    files = write_domain_data(tmp_path / "a", n_train=12, n_eval=5, seed=1)
    write_domain_data(tmp_path / "b", n_train=12, n_eval=5, seed=1)
    assert set(files.eval_files) == {"aime24", "gpqa_diamond", "livecodebench"}
    assert set(files.trace_files) == {"math", "science", "code"}
    for task, path in files.eval_files.items():
        assert path == tmp_path / "a" / "eval" / f"{task}.jsonl"
        assert len(path.read_text().splitlines()) == 5
        assert path.read_bytes() == (tmp_path / "b" / "eval" / path.name).read_bytes()
    for path in files.trace_files.values():
        traces = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(traces) == 12 and all(set(t) == {"prompt", "response"} for t in traces)
        assert path.read_bytes() == (tmp_path / "b" / "traces" / path.name).read_bytes()
    math_eval = {json.loads(line)["problem"] for line in files.eval_files["aime24"].read_text().splitlines()}
    math_train = [json.loads(line)["prompt"] for line in files.trace_files["math"].read_text().splitlines()]
    assert not any(problem in prompt for problem in math_eval for prompt in math_train)
    assert not list((tmp_path / "a").rglob(".*tmp*"))


def test_bad_requests_are_alloy_errors(tmp_path):
    with pytest.raises(AlloyError, match="unknown demo domain"):
        split_domain("history", 3, 3, seed=0)
    with pytest.raises(AlloyError, match="n_eval"):
        split_domain("math", 3, -2, seed=0)
    with pytest.raises(AlloyError, match="n_train"):
        write_domain_data(tmp_path, n_train=-1, n_eval=2)


def test_backbone_is_a_pretrained_moe_with_chat_tokenizer_and_is_reused(tmp_path, items):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alloy.demo.backbone import build_backbone
    from alloy.tiny import make_tiny_model

    traces = [item.trace for domain in DOMAIN_TASKS for item in items[domain][:8]]
    out = build_backbone(tmp_path / "backbone", traces, arch="deepseek_v3", steps=3, batch_size=4, max_length=96,
                         vocab_size=400)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "deepseek_v3" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    untrained = make_tiny_model("deepseek_v3", seed=0, vocab_size=len(tokenizer))
    assert not torch.equal(model.model.embed_tokens.weight, untrained.model.embed_tokens.weight)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_backbone(tmp_path / "backbone", traces, arch="deepseek_v3", steps=3) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(AlloyError, match="not one of"):
        build_backbone(tmp_path / "other", traces, arch="llama")
