"""The demo's backbone: a tiny MoE of a real architecture, pre-trained on the benchmarks' formats and
a sample of each domain.

A byte-level BPE tokenizer (with alloy's chat template, one token per digit) is trained on the text of
every trace the demo has, a tiny `qwen3_moe` or `deepseek_v3` model is made with its vocabulary, and a
plain torch loop trains it on the traces it is given (loss on every token of the chat-formatted trace,
AdamW with a linear warm-up and a cosine decay). The demo gives it format traces
(`alloy.demo.domains.format_traces`) and the first `DemoScale.n_backbone_domain` training traces of
each domain, so the backbone knows the chat and answer formats and a little of each domain before it
is branched. The result is an ordinary HF
folder with config, safetensors and tokenizer, written under a temporary name and renamed; when the
folder already exists it is reused as is.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping, Sequence

from alloy.errors import AlloyError

MOE_ARCHITECTURES = ("qwen3_moe", "deepseek_v3")


def build_backbone(out_dir: str | Path, traces: Sequence[Mapping[str, str]], *, arch: str = "qwen3_moe",
                   seed: int = 0, steps: int = 200, batch_size: int = 16, max_length: int = 384, lr: float = 3e-3,
                   vocab_size: int = 1024, hidden_size: int = 64, num_layers: int = 2,
                   tokenizer_texts: Sequence[str] = (),
                   progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Train the tokenizer and pre-train the tiny MoE backbone on `traces`; reuse `out_dir` when present.

    `traces` are `{"prompt", "response"}` records; the tokenizer also learns from `tokenizer_texts`
    (the demo passes its domains' traces, which the backbone is not trained on). `progress(step,
    steps, loss)` is called after every optimizer step.
    """
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    if arch not in MOE_ARCHITECTURES:
        raise AlloyError(f"demo backbone architecture {arch!r} is not one of {MOE_ARCHITECTURES}")
    if not traces:
        raise AlloyError("no traces to pre-train the demo backbone on")
    for i, trace in enumerate(traces):
        if not isinstance(trace.get("prompt"), str) or not isinstance(trace.get("response"), str):
            raise AlloyError(f"trace {i} needs string fields 'prompt' and 'response'")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("max_length", max_length)):
        if value < 1:
            raise AlloyError(f"{name} must be at least 1, got {value}")

    import torch

    from alloy.branch.data import Trace, collate, encode_traces, pad_id
    from alloy.io.atomic import atomic_dir
    from transformers import get_scheduler

    from alloy.tiny import make_tiny_model, save_tiny_checkpoint, train_tokenizer

    texts = [t["prompt"] + "\n" + t["response"] for t in traces] + list(tokenizer_texts)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, split_digits=True)
    encoded = encode_traces(tokenizer, [Trace(str(i), t["prompt"], t["response"]) for i, t in enumerate(traces)],
                            max_length, "the demo traces")
    # pre-training: every token is a target, not only the response
    examples = [dataclasses.replace(e, labels=list(e.input_ids)) for e in encoded]
    model = make_tiny_model(arch, seed=seed, vocab_size=len(tokenizer), hidden_size=hidden_size, num_layers=num_layers)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=round(0.05 * steps), num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    pad = pad_id(tokenizer)
    for step in range(steps):
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        batch = collate([examples[i] for i in picks], pad)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    model.eval()
    with atomic_dir(out) as staging:
        save_tiny_checkpoint(model, staging, tokenizer)
    return out
