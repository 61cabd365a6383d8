"""`alloy branch`: fine-tune a backbone separately on each domain's teacher traces (Ray Train)."""
from __future__ import annotations

import argparse

from alloy.logs import add_verbose_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `alloy branch`."""
    parser.add_argument("--backbone", required=True, metavar="DIR",
                        help="Hugging Face model folder with a tokenizer that has a chat template")
    parser.add_argument("--data", action="append", required=True, metavar="DOMAIN=FILE",
                        help="a domain's traces, JSONL of {\"prompt\", \"response\"} (repeat per domain)")
    parser.add_argument("--out", required=True, metavar="DIR", help="experts go to DIR/<domain>/")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per domain (default 1)")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW peak learning rate (default 1e-5)")
    parser.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"), default="constant",
                        help="learning-rate decay to 0 over the run after the warmup (default constant)")
    parser.add_argument("--warmup-ratio", type=float, default=0.0,
                        help="share of the run's steps with a linear warmup (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per worker per step (default 4)")
    parser.add_argument("--max-length", type=int, default=4096,
                        help="tokens per example; longer responses are cut (default 4096)")
    parser.add_argument("--num-workers", type=int, default=1, help="data-parallel Ray Train workers (default 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp",
                        help="ddp: a full model per worker (small backbones); fsdp: FSDP2, parameters, gradients and "
                             "optimizer state sharded over the workers (default ddp)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="compute precision: auto is bf16 on GPU and fp32 on CPU (default auto)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each decoder layer's activations in the backward pass (less memory)")
    parser.add_argument("--pack-length", type=int, default=None, metavar="N",
                        help="pack examples into rows of N tokens, each example with its own position ids (no "
                             "attention across examples); --batch-size then counts rows")
    parser.add_argument("--resume", action="store_true",
                        help="require a run folder to resume for every unfinished domain (a run folder that "
                             "exists is always resumed from its latest checkpoint)")
    parser.add_argument("--teacher-logits", action="append", default=[], metavar="DOMAIN=FILE",
                        help="top-k teacher logits for a domain (safetensors, see alloy.branch.teacher); "
                             "adds a distillation loss")
    parser.add_argument("--kd-temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    parser.add_argument("--kd-alpha", type=float, default=0.5,
                        help="weight of the distillation loss; the SFT loss gets 1 - alpha (default 0.5)")
    parser.add_argument("--anchor", type=float, default=0.0, metavar="A",
                        help="after each step, move every weight back toward the backbone's by lr x A of the gap "
                             "(keeps task vectors small for merging; default 0)")
    parser.add_argument("--retain-weight", type=float, default=0.0, metavar="BETA",
                        help="add BETA x KL(backbone || expert) on retain traces to the loss (default 0)")
    parser.add_argument("--retain", action="append", default=[], metavar="FILE",
                        help="traces whose backbone predictions each expert keeps (repeatable; default with "
                             "--retain-weight: the other --data domains' traces)")
    parser.add_argument("--retain-batch-size", type=int, default=4,
                        help="retain examples per worker per step (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to use: 'auto' or ray://HOST:PORT (default: start Ray on this machine)")
    parser.add_argument("--storage", default=None, metavar="DIR",
                        help="Ray Train run folders (default OUT/.runs; on a multi-node cluster, a folder every "
                             "node can reach)")
    add_verbose_argument(parser)


def parse_pairs(values: list[str], option: str) -> dict[str, str]:
    """`["math=a.jsonl", ...]` -> `{"math": "a.jsonl"}`; a malformed or repeated domain is an AlloyError."""
    from alloy.errors import AlloyError

    pairs: dict[str, str] = {}
    for value in values:
        domain, sep, path = value.partition("=")
        if not sep or not domain or not path:
            raise AlloyError(f"{option} {value!r}: expected DOMAIN=FILE, e.g. {option} math=traces_math.jsonl")
        if domain in pairs:
            raise AlloyError(f"{option}: domain {domain!r} is given twice")
        pairs[domain] = path
    return pairs


def run(args: argparse.Namespace) -> int:
    """Run `alloy branch`."""
    from pathlib import Path

    from alloy.branch.train import BranchSettings, branch
    from alloy.logs import LOG_FILE, quiet_output

    settings = BranchSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                              num_workers=args.num_workers, use_gpu=args.use_gpu, kd_temperature=args.kd_temperature,
                              kd_alpha=args.kd_alpha, seed=args.seed, strategy=args.strategy, precision=args.precision,
                              activation_checkpointing=args.activation_checkpointing, lr_schedule=args.lr_schedule,
                              warmup_ratio=args.warmup_ratio, pack_length=args.pack_length, anchor=args.anchor,
                              retain_weight=args.retain_weight, retain_batch_size=args.retain_batch_size)
    with quiet_output(Path(args.out) / LOG_FILE, args.verbose):
        results = branch(args.backbone, parse_pairs(args.data, "--data"), args.out, settings,
                         teacher_logits=parse_pairs(args.teacher_logits, "--teacher-logits"), retain=args.retain or None,
                         resume=args.resume,
                         address=args.address, storage=args.storage)
    for result in results.values():
        print(result.describe())
    return 0
