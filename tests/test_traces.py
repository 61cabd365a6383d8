"""alloy traces and alloy select: problem formats, scorers, rejection sampling, resume, logits, selection."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alloy.branch.problems import read_problems, score_response
from alloy.branch.sampling import SamplingSettings
from alloy.branch.select import SelectSettings, quality_problem, render_summary, select_domain
from alloy.branch.traces import TraceSettings, plan_traces, read_ledger, traces
from alloy.errors import AlloyError
from tests.teachers import teacher_workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLING = SamplingSettings(temperature=0.3, top_p=0.95, max_new_tokens=160, seed=0, batch_size=8)
SETTINGS = TraceSettings(k=2, chunk=3, backend="hf", sampling=SAMPLING)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_setup(tmp_path_factory):
    return {"root": tmp_path_factory.mktemp("traces"), **teacher_workspace(tmp_path_factory.getbasetemp())}


# ------------------------------------------------------------------------ formats and scorers (no model)


def test_formats_are_detected_and_prompted_as_the_evaluators_do(shared_data, tmp_path):
    from lm_eval.utils import apply_template

    aime = read_problems(shared_data / "aime24.jsonl", "math")
    assert {p.format for p in aime} == {"aime"} and aime[0].id == "2024-I-1" and aime[0].answer == "204"
    assert aime[0].prompt == apply_template(
        "{{problem}}\nPlease reason step by step, and put your final answer within \\boxed{}.", aime[0].record)
    assert {p.format for p in read_problems(shared_data / "math500_50.jsonl", "math")} == {"math"}
    code = read_problems(shared_data / "livecodebench_subset.jsonl", "code")
    assert {p.format for p in code} == {"livecodebench"} and all(p.verifiable for p in code)
    assert code[0].prompt.startswith("You are an expert Python programmer") and code[0].subject
    generic = read_problems(_write_jsonl(tmp_path / "g.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "x?"}]),
                            "misc")
    assert [p.format for p in generic] == ["generic"] * 2 and generic[0].id == "0" and not generic[1].verifiable
    with pytest.raises(AlloyError, match="cannot tell its format"):
        read_problems(_write_jsonl(tmp_path / "bad.jsonl", [{"question": "?"}]), "misc")
    with pytest.raises(AlloyError, match="unknown format"):
        read_problems(shared_data / "aime24.jsonl", "math", "aime2")
    with pytest.raises(AlloyError, match="already used on line 1"):
        read_problems(_write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 1}]), "m")


def test_each_format_is_scored_by_its_task_scorer(shared_data, tmp_path, monkeypatch):
    from alloy.demo.domains import split_domain
    from alloy.sandbox import OPT_IN_ENV

    aime = read_problems(shared_data / "aime24.jsonl", "math")[0]
    assert score_response(aime, "<think>\nwork\n</think>\n\nThe answer is \\boxed{204}") == (True, "204")
    assert score_response(aime, "<think>\n\\boxed{204}\n</think>\n\nSo \\boxed{205}") == (False, "205")
    math = next(p for p in read_problems(shared_data / "math500_50.jsonl", "math") if p.answer == "\\frac{14}{3}")
    assert score_response(math, "thus \\boxed{\\dfrac{14}{3}}")[0]
    science_file = _write_jsonl(tmp_path / "gpqa.jsonl", [i.record for i in split_domain("science", 3, 0, 0)[0]])
    science = read_problems(science_file, "science")[0]
    assert science.format == "gpqa" and science.answer in ("(A)", "(B)", "(C)", "(D)")
    assert score_response(science, f"The answer is {science.answer}.") == (True, science.answer.strip("()"))
    wrong = next(letter for letter in "ABCD" if f"({letter})" != science.answer)
    assert score_response(science, f"The answer is ({wrong}).")[0] is False
    assert score_response(science, "no idea") == (False, None)
    items = split_domain("code", 2, 0, 0)[0]
    code_file = _write_jsonl(tmp_path / "lcb.jsonl", [i.record for i in items])
    code = read_problems(code_file, "code")
    monkeypatch.setenv(OPT_IN_ENV, "1")
    assert score_response(code[0], items[0].trace["response"])[0] is True  # runs in the sandbox
    assert score_response(code[0], "```python\nprint(0)\n```")[0] is False
    assert score_response(code[0], "no code") == (False, None)


def test_quality_filter():
    good = {"finish": "eos", "thinking_ended": True, "response": "x</think>\\boxed{3}", "answer": "3", "correct": True}
    assert quality_problem(good) is None
    assert quality_problem({**good, "finish": "length"}) == "truncated"
    assert quality_problem({**good, "thinking_ended": False}) == "format"
    assert quality_problem({**good, "answer": None}) == "no answer"
    assert quality_problem({**good, "correct": False}) == "incorrect"
    assert quality_problem({**good, "correct": None, "thinking_ended": None}) is None  # unverified, no thinking


def test_selection_by_difficulty_and_across_subjects():
    def trace(q, subject, thinking, **extra):
        return {"problem_id": q, "subject": subject, "finish": "eos", "thinking_ended": True, "response": "r",
                "answer": "1", "correct": True, "tokens": {"thinking": thinking, "output": thinking + 5}, **extra}

    rows = [trace(f"a{i}", "algebra", 10 + i) for i in range(6)] + [trace("g0", "geometry", 12),
                                                                     trace("g1", "geometry", 11)]
    rows += [trace("a0", "algebra", 40), trace("a1", "algebra", 99, finish="length")]
    # no student: hard = thinking at or above the domain median of the question lengths
    result = select_domain("math", rows, SelectSettings(), None)
    lengths = {t["problem_id"]: t["tokens"]["thinking"] for t in result.traces}
    assert lengths["a0"] == 40  # the longest passing trace of a question
    assert result.summary["dropped"] == {"truncated": 1} and result.summary["questions"] == 8
    assert set(lengths) == {"a0", "a3", "a4", "a5"}  # lengths 40, 13, 14, 15 reach the median 13
    # a student that fails g1 makes it hard; a budget of 2 is spread over both subjects
    student = {q: 1.0 for q in ("a0", "a1", "a2", "a3", "a4", "a5", "g0")} | {"g1": 0.0}
    pick = select_domain("math", rows, SelectSettings(per_domain=2, long_quantile=1.0), student)
    assert {t["subject"] for t in pick.traces} == {"algebra", "geometry"}
    assert {t["problem_id"] for t in pick.traces} == {"g1", "a0"}
    assert pick.summary["student_right"] == pytest.approx(7 / 8) and pick.summary["student_right_selected"] == 0.5
    easy = select_domain("math", rows, SelectSettings(per_domain=5, long_quantile=1.0, keep_easy=True), student)
    assert len(easy.traces) == 5 and easy.traces[0]["problem_id"] in ("g1", "a0")
    table = render_summary({"math": pick.summary})
    assert "student right" in table and "88% / 50%" in table


# ----------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_fail_before_the_teacher_loads(teacher_setup, tmp_path, monkeypatch, shared_data):
    import alloy.branch.traces as module
    from alloy.tiny import make_tiny_model, save_tiny_checkpoint, train_tokenizer

    monkeypatch.setattr(module, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    teacher, files = teacher_setup["teacher"], teacher_setup["files"]

    def fails(match, problems=None, settings=SETTINGS, **kwargs):
        with pytest.raises(AlloyError, match=match):
            traces(kwargs.pop("teacher", teacher), {"math": files["math"]} if problems is None else problems, tmp_path / "out", settings,
                   **kwargs)

    unanswered = _write_jsonl(tmp_path / "open.jsonl", [{"prompt": "Why?"}, {"prompt": "How?", "answer": "so"}])
    fails("1 problem\\(s\\) have no answer.*--no-verify", {"misc": unanswered})
    monkeypatch.delenv("ALLOY_ALLOW_CODE_EXECUTION", raising=False)
    fails("verified by running code", {"code": shared_data / "livecodebench_subset.jsonl"})
    fails("needs --backbone", settings=TraceSettings(logits_k=4, backend="hf"))
    other = save_tiny_checkpoint(make_tiny_model("qwen3", vocab_size=300), tmp_path / "other",
                                 train_tokenizer(["a different corpus of words"] * 20, vocab_size=300))
    fails("different tokenizers", settings=TraceSettings(logits_k=4, backend="hf"), backbone=other)
    fails("does not exist", teacher=tmp_path / "nowhere")
    fails("--k must be at least 1", settings=TraceSettings(k=0))
    fails("--top-p", settings=TraceSettings(sampling=SamplingSettings(top_p=0)))
    fails(r"--gpu-memory-utilization must be in \(0, 1\], got 1.5", settings=TraceSettings(gpu_memory_utilization=1.5))
    fails("--format names domain", formats={"code": "livecodebench"})
    fails("unknown format", formats={"math": "aime2"})
    fails("no problems", problems={})
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- sampling runs


@pytest.fixture(scope="module")
def first_run(teacher_setup):
    out = teacher_setup["root"] / "out"
    settings = TraceSettings(k=2, chunk=3, backend="hf", sampling=SAMPLING, logits_k=4)
    lines: list[str] = []
    summaries = traces(teacher_setup["teacher"], teacher_setup["files"], out, settings,
                       backbone=teacher_setup["teacher"], echo=lines.append)
    return out, summaries, lines


@pytest.mark.slow
def test_traces_keep_what_the_scorers_verify(teacher_setup, first_run):
    from alloy.branch.data import encode_traces, load_chat_tokenizer, read_traces
    from alloy.branch.teacher import read_teacher_logits

    out, summaries, lines = first_run
    assert any("ETA" in line and "4/8 problems" in line for line in lines)
    for domain, summary in summaries.items():
        samples, kept = _rows(out / f"{domain}.samples.jsonl"), _rows(out / f"{domain}.jsonl")
        assert summary.samples == len(samples) == 8 and summary.kept == len(kept) == summary.correct > 0
        problems = {p.id: p for p in read_problems(teacher_setup["files"][domain], domain)}
        for row in samples:  # every sample was scored by its task's scorer, and only correct ones are kept
            assert row["correct"] == score_response(problems[row["problem_id"]], row["response"])[0]
            assert row["tokens"]["output"] == row["tokens"]["thinking"] + row["tokens"]["answer"]
            assert row["prompt"] == problems[row["problem_id"]].prompt
        assert [r for r in samples if r["correct"]] == kept
        assert all(r["thinking_ended"] == ("</think>" in r["response"]) for r in samples)
        assert any(r["thinking_ended"] for r in kept)
        # alloy branch reads the kept file, and the teacher logits match its tokenization
        examples = encode_traces(load_chat_tokenizer(teacher_setup["teacher"]), read_traces(out / f"{domain}.jsonl"),
                                 10**6, domain)
        entries = read_teacher_logits(out / f"{domain}.teacher.safetensors", examples, 400)
        assert [e[0].shape[0] for e in entries] == [e.n_response for e in examples]


@pytest.mark.slow
def test_a_killed_run_resumes_without_regenerating(teacher_setup, first_run, monkeypatch, tmp_path):
    import shutil

    from alloy.branch.sampling import HFTeacher

    out, _, _ = first_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    ledger = resumed / "science.samples.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:5]) + lines[5][:20])  # killed while writing problem 3's second sample
    (resumed / "science.jsonl").unlink()
    assert len(read_ledger(ledger, 2)) == 2
    prompts: list[int] = []
    generate = HFTeacher.generate
    monkeypatch.setattr(HFTeacher, "generate", lambda self, p, k: prompts.append(len(p)) or generate(self, p, k))
    settings = TraceSettings(k=2, chunk=3, backend="hf", sampling=SAMPLING)
    traces(teacher_setup["teacher"], teacher_setup["files"], resumed, settings)
    assert sum(prompts) == 2  # only the science problems the ledger did not hold complete
    for name in ("math.samples.jsonl", "science.samples.jsonl", "math.jsonl", "science.jsonl"):
        assert _rows(resumed / name) == _rows(out / name)  # seeded per sample: as if never killed
    with pytest.raises(AlloyError, match="other settings"):
        plan_traces(teacher_setup["teacher"], teacher_setup["files"], resumed, TraceSettings(k=3, backend="hf"))


@pytest.mark.slow
def test_a_domain_without_correct_traces_is_an_error(teacher_setup, tmp_path):
    from alloy.demo.domains import split_domain

    hard = _write_jsonl(tmp_path / "hard.jsonl", [{**i.record, "answer": "999"} for i in split_domain("math", 2, 0, 5)[0]])
    settings = TraceSettings(k=2, backend="hf", sampling=SamplingSettings(max_new_tokens=40))
    with pytest.raises(AlloyError, match="domain 'hard': no correct trace after rejection \\(4 samples of 2 problems"):
        traces(teacher_setup["teacher"], {"hard": hard}, tmp_path / "out", settings)
    assert len(_rows(tmp_path / "out" / "hard.samples.jsonl")) == 4 and not (tmp_path / "out" / "hard.jsonl").exists()
    student = traces(teacher_setup["teacher"], {"hard": hard}, tmp_path / "out",
                     TraceSettings(k=2, backend="hf", sampling=settings.sampling, allow_empty_domains=True))
    assert student["hard"].kept == 0


@pytest.mark.slow
def test_cli_traces_then_select(teacher_setup, first_run, tmp_path, capsys):
    from alloy.cli import main

    out, _, _ = first_run
    selected = tmp_path / "selected"
    assert main(["select", str(out), "--out", str(selected), "--student", str(out), "--per-domain", "2",
                 "--long-quantile", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "student right" in printed and "science" in printed
    summary = json.loads((selected / "summary.json").read_text())
    for domain in ("math", "science"):
        rows = _rows(selected / f"{domain}.jsonl")
        assert 1 <= len(rows) <= 2 and all(r["correct"] for r in rows)
        assert summary[domain]["selected_traces"] == len(rows)
    assert main(["select", str(out), "--out", str(selected)]) == 2  # exists: refused
    assert main(["select", str(out), "--out", str(tmp_path / "x"), "--budget", "poetry=3"]) == 2
    assert "poetry" in capsys.readouterr().err
    args = ["traces", "--teacher", str(teacher_setup["teacher"]), "--problems", f"math={teacher_setup['files']['math']}",
            "--out", str(tmp_path / "cli"), "-k", "1", "--max-new-tokens", "160", "--temperature", "0",
            "--backend", "hf"]
    assert main(args) == 0
    assert "traces kept" in capsys.readouterr().out


@pytest.mark.slow
def test_vllm_teacher_samples_what_the_hf_teacher_samples(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from alloy.branch.sampling import HFTeacher, VLLMTeacher, chat_prompt
    from alloy.tiny import save_tiny_checkpoint, train_tokenizer

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    tokenizer = train_tokenizer(vocab_size=400)
    # vLLM's CPU attention needs a head size of at least 32
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=2, pad_token_id=5)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # clear argmaxes
    folder = save_tiny_checkpoint(model, tmp_path / "llama", tokenizer)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=20)
    hf = HFTeacher(folder, greedy)
    prompts = [chat_prompt(hf.tokenizer, p) for p in ("What is 2+3?", "Name a prime.", "Sum 1 to 10", "Why?")]
    vllm = VLLMTeacher(folder, greedy, gpu_memory_utilization=0.05)
    for ours, theirs in zip(hf.generate(prompts, 1), vllm.generate(prompts, 1), strict=True):
        assert ours[0].text == theirs[0].text and ours[0].record.output_tokens == theirs[0].record.output_tokens
    vllm.settings = SamplingSettings(temperature=0.8, max_new_tokens=20, seed=3)
    first, again = vllm.generate(prompts[:1], 3), vllm.generate(prompts[:1], 3)
    assert [c.text for c in first[0]] == [c.text for c in again[0]]  # seeded per sample
    assert len({c.text for c in first[0]}) > 1


def test_cli_registration():
    from alloy.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["traces", "--teacher", "t", "--problems", "math=p.jsonl", "--out", "o"])
    assert args.k == 4 and args.backend == "auto" and not args.no_verify
    args = parser.parse_args(["select", "tr", "--out", "o", "--budget", "math=3"])
    assert args.budget == ["math=3"] and args.traces_per_question == 1
    assert isinstance(parser, argparse.ArgumentParser)
