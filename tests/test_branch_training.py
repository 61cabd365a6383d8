"""Expert training that scales: packing without attention leaks, FSDP2 against DDP, LR schedules."""
from __future__ import annotations

import json

import pytest
import torch

from alloy.branch.data import IGNORE_INDEX, EncodedExample, collate_packed, pack_examples
from alloy.branch.train import BranchSettings, plan_branch
from alloy.errors import AlloyError


def _example(key: str, n_prompt: int, n_response: int, seed: int, vocab: int = 300) -> EncodedExample:
    ids = torch.randint(6, vocab, (n_prompt + n_response,), generator=torch.Generator().manual_seed(seed)).tolist()
    return EncodedExample(key, ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:], n_response)


def test_packing_fills_rows_and_refuses_an_example_longer_than_a_row():
    examples = [_example(str(i), 3, n, i) for i, n in enumerate((9, 2, 5, 1, 6))]  # 12, 5, 8, 4, 9 tokens
    rows = pack_examples(examples, 16, "t.jsonl")
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    assert all(sum(len(examples[i].input_ids) for i in row) <= 16 for row in rows) and len(rows) == 3
    with pytest.raises(AlloyError, match="--pack-length 10 is shorter than example '0' of t.jsonl \\(12 tokens\\)"):
        pack_examples(examples, 10, "t.jsonl")
    batch = collate_packed([[examples[i] for i in row] for row in rows], pad_token_id=5)
    assert "attention_mask" not in batch
    first = rows[0]
    lengths = [len(examples[i].input_ids) for i in first]
    expected = [p for n in lengths for p in range(n)]
    assert batch["position_ids"][0, :len(expected)].tolist() == expected
    assert batch["labels"][0, lengths[0]].item() == IGNORE_INDEX  # no target across the boundary


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "llama"])
def test_packed_examples_do_not_attend_to_each_other(arch):
    from alloy.tiny import make_tiny_model

    model = make_tiny_model(arch, seed=0, vocab_size=300)
    examples = [_example(str(i), 4, n, i) for i, n in enumerate((7, 3, 5))]
    batch = collate_packed([examples], pad_token_id=5)
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, 3), 5)], dim=1)  # padding at the end
    batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(3)[None]], dim=1)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        at = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[at:at + len(example.input_ids)], alone, rtol=1e-4, atol=1e-5)
            at += len(example.input_ids)
        # without the position ids the same row is one causal sequence, and later examples see earlier ones
        leaked = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        # with a KV cache transformers ignores the packing: why training runs with use_cache=False
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        assert not torch.allclose(cached[len(examples[0].input_ids):at], packed[len(examples[0].input_ids):at],
                                  atol=1e-3)
        assert not torch.allclose(leaked[len(examples[0].input_ids):at], packed[len(examples[0].input_ids):at],
                                  atol=1e-3)


def test_bad_training_settings_fail_before_ray(tmp_path, monkeypatch):
    import ray

    from alloy.demo.backbone import build_backbone
    from alloy.demo.domains import split_domain

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    traces = [item.trace for item in split_domain("math", 6, 0, 0)[0]]
    backbone = build_backbone(tmp_path / "backbone", traces, steps=1, batch_size=2, max_length=128, vocab_size=300)
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in traces))
    with pytest.raises(AlloyError, match="--pack-length 32 is shorter than example"):
        plan_branch(backbone, {"math": data}, tmp_path / "out", BranchSettings(max_length=512, pack_length=32))
    for settings, match in ((BranchSettings(strategy="zero3"), "--strategy must be one of ddp, fsdp"),
                            (BranchSettings(lr_schedule="wsd"), "--lr-schedule must be one of"),
                            (BranchSettings(precision="fp8"), "--precision must be one of"),
                            (BranchSettings(warmup_ratio=1.0), "--warmup-ratio must be in")):
        with pytest.raises(AlloyError, match=match):
            plan_branch(backbone, {"math": data}, tmp_path / "out", settings)
    plan = plan_branch(backbone, {"math": data}, tmp_path / "out", BranchSettings(max_length=512, pack_length=512))
    assert plan.jobs[0].rows and sum(len(r) for r in plan.jobs[0].rows) == 6


@pytest.mark.slow
def test_fsdp2_and_ddp_give_the_same_loss_curve(tmp_path, local_ray):
    from safetensors.torch import load_file

    from alloy.branch.train import branch
    from alloy.demo.backbone import build_backbone
    from alloy.demo.domains import split_domain

    traces = [item.trace for item in split_domain("math", 12, 0, 0)[0]]
    backbone = build_backbone(tmp_path / "backbone", traces, steps=2, batch_size=4, max_length=128, vocab_size=300)
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in traces))
    retain = tmp_path / "science.jsonl"  # the anchor and the retain term, on a sharded backbone with FSDP
    retain.write_text("".join(json.dumps(item.trace) + "\n" for item in split_domain("science", 6, 0, 0)[0]))
    results = {}
    for strategy in ("ddp", "fsdp"):
        settings = BranchSettings(epochs=2, lr=2e-3, batch_size=2, max_length=256, num_workers=2, strategy=strategy,
                                  lr_schedule="cosine", warmup_ratio=0.25, pack_length=256,
                                  activation_checkpointing=strategy == "fsdp", anchor=50.0, retain_weight=1.0,
                                  retain_batch_size=2)
        results[strategy] = branch(backbone, {"math": data}, tmp_path / strategy, settings, retain=[retain])["math"]
    ddp, fsdp = results["ddp"].metrics, results["fsdp"].metrics
    assert ddp["steps_per_worker"] == fsdp["steps_per_worker"] >= 1
    assert fsdp["step_losses"] == pytest.approx(ddp["step_losses"], rel=1e-5)
    assert fsdp["retain_loss"] == pytest.approx(ddp["retain_loss"], rel=1e-4) and ddp["retain_loss"] > 0
    assert fsdp["lr"] == ddp["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine decays to 0 at the last step
    a, b = (load_file(str(results[s].expert_dir / "model.safetensors")) for s in ("ddp", "fsdp"))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    base = load_file(str(backbone / "model.safetensors"))
    assert any(not torch.equal(base[name], b[name]) for name in base)
