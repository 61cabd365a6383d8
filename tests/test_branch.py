"""The branch phase: tokenization and masking, losses, teacher logits, bad inputs, Ray Train runs."""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from alloy.branch.data import IGNORE_INDEX, Trace, encode_trace, encode_traces, load_chat_tokenizer, read_traces
from alloy.branch.losses import branch_loss, kd_loss, retain_loss
from alloy.branch.teacher import compute_teacher_logits, read_teacher_logits, write_teacher_logits
from alloy.branch.train import BranchSettings, branch, epoch_shard, plan_branch
from alloy.demo.backbone import build_backbone
from alloy.demo.domains import split_domain
from alloy.errors import AlloyError

N_EXAMPLES = 24
MAX_LENGTH = 192
SETTINGS = BranchSettings(epochs=1, lr=2e-3, batch_size=4, max_length=MAX_LENGTH, num_workers=2, seed=0)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny pre-trained MoE backbone, two domains of traces, and teacher logits for one of them."""
    from transformers import AutoModelForCausalLM

    from alloy.tiny import perturbed_copy

    root = tmp_path_factory.mktemp("branch")
    traces = {d: [item.trace for item in split_domain(d, N_EXAMPLES, 0, seed=0)[0]] for d in ("math", "science")}
    backbone = build_backbone(root / "backbone", traces["math"] + traces["science"], steps=2, batch_size=4,
                              max_length=128, vocab_size=400)
    files = {d: _write_jsonl(root / f"{d}.jsonl", rows) for d, rows in traces.items()}
    tokenizer = load_chat_tokenizer(backbone)
    full = encode_traces(tokenizer, read_traces(files["math"]), 10**6, "math")
    teacher = perturbed_copy(AutoModelForCausalLM.from_pretrained(backbone), scale=0.5, seed=3)
    teacher_file = write_teacher_logits(root / "teacher_math.safetensors", compute_teacher_logits(teacher, full, k=8))
    return {"root": root, "backbone": backbone, "files": files, "teacher": teacher_file, "tokenizer": tokenizer}


# ------------------------------------------------------------------------------------- no Ray


def test_loss_masks_everything_but_the_response(workspace):
    tokenizer = workspace["tokenizer"]
    trace = Trace("0", "What is 2 + 3?", "<think>\n2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{5}")
    example = encode_trace(tokenizer, trace, 10**6)
    n_prompt = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
    assert all(label == IGNORE_INDEX for label in example.labels[:n_prompt])
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    prompt = tokenizer.decode(example.input_ids[:n_prompt])
    assert prompt == tokenizer.apply_chat_template([{"role": "user", "content": trace.prompt}], tokenize=False,
                                                   add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    response = tokenizer.decode(example.input_ids[n_prompt:])
    assert response == "2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{5}<|im_end|>\n"
    assert example.n_response == example.n_kept == len(example.input_ids) - n_prompt
    # a response without the opener is aligned with the generation prompt the same way
    bare = encode_trace(tokenizer, Trace("1", trace.prompt, trace.response[len("<think>\n"):]), 10**6)
    assert bare.input_ids == example.input_ids and bare.labels == example.labels
    # truncation keeps the prompt and cuts the response; a prompt that fills max_length is left out
    cut = encode_trace(tokenizer, trace, n_prompt + 3)
    assert cut.n_kept == 3 and cut.n_response == example.n_response and len(cut.input_ids) == n_prompt + 3
    assert encode_trace(tokenizer, trace, n_prompt) is None


def test_sft_loss_is_cross_entropy_on_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 6, 0]])
    loss, sft, kd = branch_loss(logits, labels)
    assert sft is loss
    terms = [-torch.log_softmax(logits[b, i - 1], -1)[labels[b, i]] for b in range(2) for i in range(1, 5)
             if labels[b, i] != IGNORE_INDEX]
    assert kd is None and torch.allclose(loss, torch.stack(terms).mean())
    changed = logits.clone()
    changed[0, 0] += 10.0  # position 0 of row 0 predicts a prompt token: no effect
    assert torch.allclose(branch_loss(changed, labels)[0], loss)


def test_kd_loss_matches_a_hand_computation():
    ln2, ln3 = math.log(2.0), math.log(3.0)
    # T = 2. Token 1: student/T = [0, ln2, 0] -> q = [1/4, 1/2, 1/4]; teacher/T on ids [1, 0] is [ln3, 0]
    # -> p = [3/4, 1/4]; KL = 3/4 ln((3/4)/(1/2)) + 1/4 ln((1/4)/(1/4)) = 3/4 ln(3/2).
    # Token 2: q = [1/3, 1/3, 1/3]; teacher on ids [2, 0] is [0, 0] -> p = [1/2, 1/2]; KL = ln(3/2).
    # Each is scaled by T^2 = 4, then averaged over the two tokens.
    student = torch.tensor([[0.0, 2 * ln2, 0.0], [0.0, 0.0, 0.0]])
    indices = torch.tensor([[1, 0], [2, 0]])
    teacher = torch.tensor([[2 * ln3, 0.0], [0.0, 0.0]])
    expected = (4 * 0.75 * math.log(1.5) + 4 * math.log(1.5)) / 2
    assert kd_loss(student, indices, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)
    # Mixed with SFT by alpha on one sequence [prompt, 1, 2]: positions 0 and 1 predict the response.
    logits = torch.cat([student, torch.zeros(1, 3)]).unsqueeze(0)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    loss, sft, kd = branch_loss(logits, labels, (indices, teacher), temperature=2.0, alpha=0.25)
    expected_sft = (math.log(1.5) + math.log(3.0)) / 2  # softmax [1/6, 4/6, 1/6] at id 1; uniform at id 2
    assert sft.item() == pytest.approx(expected_sft, rel=1e-6)
    assert kd.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.75 * expected_sft + 0.25 * expected, rel=1e-6)


def test_retain_loss_is_the_kl_to_the_reference_at_response_positions():
    torch.manual_seed(0)
    reference = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]])
    student = torch.cat([reference, torch.randn(2, 3, 5)], dim=1)  # a wider batch: the extra columns are unread
    assert retain_loss(student, reference, labels).item() == pytest.approx(0.0, abs=1e-7)
    student[:, :4] = torch.randn(2, 4, 5)
    terms = []
    for b, i in ((0, 1), (0, 2), (1, 0)):  # the positions that predict a response token
        log_p, log_q = reference[b, i].log_softmax(-1), student[b, i].log_softmax(-1)
        terms.append((log_p.exp() * (log_p - log_q)).sum())
    assert retain_loss(student, reference, labels).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    changed = student.clone()
    changed[0, 0] += 5.0  # predicts a prompt token
    changed[1, 3] += 5.0  # past the last response token
    assert torch.allclose(retain_loss(changed, reference, labels), retain_loss(student, reference, labels))


def test_teacher_logits_file_roundtrip_truncation_and_errors(workspace, tmp_path):
    tokenizer, vocab = workspace["tokenizer"], len(workspace["tokenizer"])
    traces = read_traces(workspace["files"]["math"])
    full = encode_traces(tokenizer, traces, 10**6, "math")
    entries = read_teacher_logits(workspace["teacher"], full, vocab)
    assert [e[0].shape for e in entries] == [(ex.n_response, 8) for ex in full]
    longest_prompt = max(len(ex.input_ids) - ex.n_response for ex in full)
    cut = encode_traces(tokenizer, traces, longest_prompt + 3, "math")
    assert len(cut) == len(full) and all(ex.n_kept < ex.n_response for ex in cut)
    assert [e[0].shape[0] for e in read_teacher_logits(workspace["teacher"], cut, vocab)] == [ex.n_kept for ex in cut]

    one = {full[0].key: (torch.zeros(full[0].n_response + 1, 8, dtype=torch.long), torch.zeros(full[0].n_response + 1, 8))}
    with pytest.raises(AlloyError, match=f"T = {full[0].n_response}"):
        read_teacher_logits(write_teacher_logits(tmp_path / "long.safetensors", one), full[:1], vocab)
    with pytest.raises(AlloyError, match="no tensor"):
        read_teacher_logits(workspace["teacher"], encode_traces(tokenizer, [Trace("nope", "p", "r")], 10**6, "x"),
                            vocab)
    bad_ids = {full[0].key: (torch.full((full[0].n_response, 8), vocab), torch.zeros(full[0].n_response, 8))}
    with pytest.raises(AlloyError, match="vocabulary"):
        read_teacher_logits(write_teacher_logits(tmp_path / "ids.safetensors", bad_ids), full[:1], vocab)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(AlloyError, match="format"):
        read_teacher_logits(tmp_path / "plain.safetensors", full[:1], vocab)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AlloyError, match="not a readable safetensors"):
        read_teacher_logits(tmp_path / "junk.safetensors", full[:1], vocab)


def test_epoch_shards_are_even_and_cover_every_example():
    for n, world in ((10, 2), (7, 3), (1, 2), (24, 1)):
        shards = [epoch_shard(n, world, rank, seed=0, epoch=1) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1
        assert set().union(*map(set, shards)) == set(range(n))
    assert epoch_shard(10, 2, 0, seed=0, epoch=0) != epoch_shard(10, 2, 0, seed=0, epoch=1)
    assert epoch_shard(10, 2, 0, seed=0, epoch=1) == epoch_shard(10, 2, 0, seed=0, epoch=1)


def test_bad_inputs_fail_before_ray_starts(workspace, tmp_path, monkeypatch):
    import alloy.branch.train as train

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(train, "ray_session", no_ray)
    backbone, good = workspace["backbone"], workspace["files"]["math"]
    out = tmp_path / "out"

    def fails(match, data=None, backbone=backbone, **kwargs):
        with pytest.raises(AlloyError, match=match):
            branch(backbone, data if data is not None else {"math": good}, out, kwargs.pop("settings", SETTINGS),
                   **kwargs)

    fails("does not exist", {"math": tmp_path / "missing.jsonl"})
    (tmp_path / "empty.jsonl").write_text("\n")
    fails("has no records", {"math": tmp_path / "empty.jsonl"})
    _write_jsonl(tmp_path / "nofield.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    fails(r"nofield.jsonl:2: field 'response'", {"math": tmp_path / "nofield.jsonl"})
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "response": "r"}\n{oops\n')
    fails(r"broken.jsonl:2: not valid JSON", {"math": tmp_path / "broken.jsonl"})
    _write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "p", "response": "r"}] * 2)
    fails("already used on line 1", {"math": tmp_path / "dup.jsonl"})
    fails("no training data", {})
    fails("domain name", {".hidden": good})
    fails("has no --data", teacher_logits={"code": workspace["teacher"]})
    fails("kd-alpha", settings=BranchSettings(kd_alpha=2.0))
    fails("no run folder", resume=True)
    fails("at least --max-length", settings=BranchSettings(max_length=8))
    fails("--retain-weight is 0", retain=[workspace["files"]["science"]])
    fails("no traces to retain", settings=BranchSettings(retain_weight=1.0))
    fails("does not exist", settings=BranchSettings(retain_weight=1.0), retain=[tmp_path / "missing.jsonl"])
    fails(r"--anchor must be at least 0 and at most 1 / --lr = 500", settings=BranchSettings(lr=2e-3, anchor=600.0))
    fails("--retain-batch-size must be at least 1", settings=BranchSettings(retain_batch_size=0))

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(backbone / name, no_tokenizer / name)
    fails("no loadable tokenizer", backbone=no_tokenizer)
    no_template = tmp_path / "no_template"
    shutil.copytree(backbone, no_template)
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    fails("no chat template", backbone=no_template)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(backbone, no_weights)
    (no_weights / "model.safetensors").unlink()
    fails("no weights", backbone=no_weights)
    fails("does not exist", backbone=tmp_path / "nowhere")


def test_cli_pairs_and_registration():
    from alloy.commands.branch import parse_pairs
    from alloy.cli import COMMANDS

    assert COMMANDS["branch"][0] == "alloy.commands.branch"
    assert parse_pairs(["math=a.jsonl", "code=b=c.jsonl"], "--data") == {"math": "a.jsonl", "code": "b=c.jsonl"}
    with pytest.raises(AlloyError, match="DOMAIN=FILE"):
        parse_pairs(["math.jsonl"], "--data")
    with pytest.raises(AlloyError, match="given twice"):
        parse_pairs(["math=a", "math=b"], "--data")


# ------------------------------------------------------------------------------ Ray Train runs


@pytest.fixture(scope="module")
def first_run(workspace, local_ray):
    out = workspace["root"] / "experts"
    results = branch(workspace["backbone"], workspace["files"], out, SETTINGS,
                     teacher_logits={"math": workspace["teacher"]})
    return out, results


@pytest.mark.slow
def test_branch_writes_experts_that_reload_and_differ_from_the_backbone(workspace, first_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, results = first_run
    base = _tensors(workspace["backbone"])
    assert list(results) == ["math", "science"]
    for domain, result in results.items():
        assert result.expert_dir == out / domain
        assert result.metrics["epoch"] == 1 and result.metrics["start_epoch"] == 0
        assert math.isfinite(result.metrics["loss"])
        model = AutoModelForCausalLM.from_pretrained(result.expert_dir)
        assert model.config.model_type == "qwen3_moe"
        assert AutoTokenizer.from_pretrained(result.expert_dir).chat_template
        expert = _tensors(result.expert_dir)
        assert set(expert) == set(base)  # the on-disk layout of the backbone: a ready merge parent
        assert all(expert[name].dtype == base[name].dtype for name in base)
        assert any(not torch.equal(expert[name], base[name]) for name in base)
        assert any(not torch.equal(expert[name], base[name]) for name in base if ".experts." in name)
    assert "kd_loss" in results["math"].metrics and math.isfinite(results["math"].metrics["kd_loss"])
    assert "kd_loss" not in results["science"].metrics
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    assert (out / ".runs" / "math" / "alloy_branch.json").is_file()


def _distance(weights: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((weights[k].double() - base[k].double()).pow(2).sum()) for k in base))


def _kl_to_backbone(expert_dir: Path, workspace, domain: str) -> float:
    """The retain term of `expert_dir` on a domain's traces: KL(backbone || expert) at response tokens."""
    from transformers import AutoModelForCausalLM

    from alloy.branch.data import collate

    examples = encode_traces(workspace["tokenizer"], read_traces(workspace["files"][domain]), MAX_LENGTH, domain)
    batch = collate(examples, workspace["tokenizer"].pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d).eval()(**batch).logits
                  for d in (workspace["backbone"], expert_dir)]
    return float(retain_loss(logits[1], logits[0], labels))


@pytest.mark.slow
def test_anchor_and_retain_keep_an_expert_near_the_backbone(workspace, first_run):
    from dataclasses import replace

    out, _ = first_run
    base = _tensors(workspace["backbone"])
    free = out / "science"  # SETTINGS: neither term
    science = {"science": workspace["files"]["science"]}
    anchored = branch(workspace["backbone"], science, workspace["root"] / "anchor", replace(SETTINGS, anchor=200.0))
    retained = branch(workspace["backbone"], science, workspace["root"] / "retain",
                      replace(SETTINGS, retain_weight=20.0, retain_batch_size=4), retain=[workspace["files"]["math"]])
    anchored, retained = anchored["science"], retained["science"]
    assert "retain_loss" in retained.metrics and math.isfinite(retained.metrics["retain_loss"])
    assert "retain_loss" not in anchored.metrics
    assert _distance(_tensors(anchored.expert_dir), base) < 0.8 * _distance(_tensors(free), base)
    assert _kl_to_backbone(retained.expert_dir, workspace, "math") < 0.8 * _kl_to_backbone(free, workspace, "math")


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(workspace, first_run):
    out, _ = first_run
    after_epoch_1 = _tensors(out / "math")
    shutil.rmtree(out / "math")  # as if the run had stopped after its first checkpoint
    with pytest.raises(AlloyError, match="other settings"):
        plan_branch(workspace["backbone"], {"math": workspace["files"]["math"]}, out,
                    BranchSettings(**{**SETTINGS.__dict__, "lr": 1e-4}), teacher_logits={"math": workspace["teacher"]})
    results = branch(workspace["backbone"], {"math": workspace["files"]["math"]}, out,
                     BranchSettings(**{**SETTINGS.__dict__, "epochs": 2}), teacher_logits={"math": workspace["teacher"]},
                     resume=True)
    assert results["math"].metrics["start_epoch"] == 1 and results["math"].metrics["epoch"] == 2
    after_epoch_2 = _tensors(out / "math")
    assert any(not torch.equal(after_epoch_2[name], after_epoch_1[name]) for name in after_epoch_1)


@pytest.mark.slow
def test_cli_rerun_keeps_existing_experts(workspace, first_run, capsys):
    from alloy.commands import branch as command

    out, _ = first_run
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--backbone", str(workspace["backbone"]), "--data", f"science={workspace['files']['science']}",
                              "--out", str(out), "--max-length", str(MAX_LENGTH), "--lr", "2e-3",
                              "--batch-size", "4", "--num-workers", "2"])
    stamp = (out / "science" / "model.safetensors").stat().st_mtime_ns
    assert command.run(args) == 0
    assert "already exists" in capsys.readouterr().out
    assert (out / "science" / "model.safetensors").stat().st_mtime_ns == stamp
