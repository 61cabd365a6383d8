"""The branch phase: fine-tune one backbone separately on each domain's teacher traces (Ray Train).

`alloy.branch.data` reads and tokenizes traces (loss on response tokens only), `alloy.branch.teacher`
defines the teacher-logits file for distillation, `alloy.branch.losses` holds the SFT and
distillation losses, `alloy.branch.train` runs one `TorchTrainer` per domain and writes the experts,
and `alloy.commands.branch` is `alloy branch`. Imports `alloy.io` only.
"""
