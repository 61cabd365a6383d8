"""The branch phase: make expert parents from a teacher's verified traces (TinyR1, s1).

`alloy.branch.problems` reads problems in the evaluators' record formats with their prompts and
scorers, `alloy.branch.sampling` samples a teacher (HF in batches, or vLLM), `alloy.branch.traces` runs
rejection sampling into resumable trace files (`alloy traces`), `alloy.branch.select` picks an s1-style
subset (`alloy select`), `alloy.branch.data` reads, tokenizes and packs traces, `alloy.branch.teacher`
defines the teacher-logits file for distillation, `alloy.branch.losses` holds the SFT and distillation
losses, and `alloy.branch.train` runs one Ray Train `TorchTrainer` per domain (DDP or FSDP2) and writes
the experts (`alloy branch`). Imports `alloy.evaluation` and `alloy.io`, never the merge, worker or
search layers.
"""
