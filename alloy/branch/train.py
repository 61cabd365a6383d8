"""Fine-tune one backbone separately on each domain's traces with Ray Train, one expert per domain.

For every domain, a `TorchTrainer` runs `train_domain_loop` on `num_workers` workers (gloo on CPU,
NCCL on GPU), with one of two strategies:

- `ddp`: a full model and AdamW state per worker (PyTorch DDP), for small backbones;
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`, each decoder layer and then the root), which
  shards parameters, gradients and optimizer state over the workers, for backbones that do not fit
  one device. The weights and AdamW state stay float32 shards; with bf16 precision each layer is
  gathered in bfloat16 for compute and gradients are reduced in float32 (`MixedPrecisionPolicy`).

`precision` `auto` means bf16 on GPU and float32 on CPU (DDP uses bfloat16 autocast for bf16).
`activation_checkpointing` recomputes each decoder layer's activations in the backward pass.

Each epoch rank 0 reports a Ray Train checkpoint (`model/` as a Hugging Face folder in float32, the
full `optimizer.pt` and `scheduler.pt`, `state.json`) into the run folder `<storage>/<domain>` (default
storage: `<out>/.runs`). A run whose folder exists is resumed from its latest checkpoint (Ray Train
restores it); the run folder also holds `alloy_branch.json`, the settings the run was started with,
and resuming with different data or hyperparameters is refused. After the last epoch the driver
writes `<out>/<domain>/` (config, safetensors in the backbone's dtype, tokenizer) under a temporary
name and renames it: an ordinary HF folder, ready to be a merge parent. A domain whose expert folder
already exists is skipped.

Batching: `batch_size` items per worker per optimizer step, an item being an example or, with
`pack_length`, a packed row of examples (`alloy.branch.data.pack_examples`: per-example position ids,
so packed examples do not attend to each other). Each epoch the items are shuffled with a generator
seeded by (seed, epoch) and split evenly over the workers (the shuffled order is padded by wrapping
around, so every worker runs the same number of steps). AdamW (no weight decay), gradients clipped to
norm 1, and a learning-rate schedule (`lr_schedule`: `constant`, `linear` or `cosine` decay to 0 over
the run's steps, after a linear warmup over `warmup_ratio` of them; transformers' `get_scheduler`).

Two terms keep an expert near the backbone, so that experts branched from it stay mergeable (their
task vectors small, and each one's changes confined to its own domain):

- `anchor` a: after each optimizer step every weight moves back toward the backbone's by the fraction
  lr_t · a of the gap (weight decay toward the backbone instead of toward 0; lr_t is the step's
  learning rate);
- `retain_weight` β: each step also takes `retain_batch_size` examples of the retain traces (by
  default the other domains' traces) as extra rows of the same forward pass, and adds β · KL(backbone ‖
  expert) over the full vocabulary at their response positions to the loss.

Both read a frozen copy of the backbone on every worker (sharded like the trained model with FSDP).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from alloy.io.atomic import atomic_dir, atomic_write_text
from alloy.branch.data import (EncodedExample, encode_traces, load_chat_tokenizer, pack_examples, pad_id,
                               read_traces)
from alloy.errors import AlloyError, check_options
from alloy.workers.local_ray import ray_session

RUN_SETTINGS_FILE = "alloy_branch.json"
STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("constant", "linear", "cosine")
# settings that do not change what a run computes, so a resumed run may change them
_RUN_FREE_SETTINGS = ("epochs", "num_workers", "use_gpu", "activation_checkpointing")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class BranchSettings:
    """Hyperparameters of one branch run (the same for every domain)."""

    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 4  # items (examples, or packed rows) per worker per optimizer step
    max_length: int = 4096
    num_workers: int = 1
    use_gpu: bool = False
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    seed: int = 0
    strategy: str = "ddp"  # "ddp" or "fsdp" (FSDP2)
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "bf16" or "fp32"
    activation_checkpointing: bool = False
    lr_schedule: str = "constant"  # "constant", "linear" or "cosine"
    warmup_ratio: float = 0.0  # share of the run's steps with a linear warmup
    pack_length: int | None = None  # pack examples into rows of this many tokens (None: no packing)
    anchor: float = 0.0  # after each step, weights move back toward the backbone's by lr * anchor of the gap
    retain_weight: float = 0.0  # weight of the KL to the backbone on the retain traces
    retain_batch_size: int = 4  # retain examples per worker per step

    def validate(self) -> None:
        """Raise AlloyError naming the first setting out of range."""
        for name, allowed in (("strategy", STRATEGIES), ("precision", PRECISIONS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise AlloyError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        checks = (("epochs", self.epochs >= 1, "at least 1"), ("lr", self.lr > 0, "positive"),
                  ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "in [0, 1)"),
                  ("pack_length", self.pack_length is None or self.pack_length >= 2, "at least 2"),
                  ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("max_length", self.max_length >= 2, "at least 2"),
                  ("num_workers", self.num_workers >= 1, "at least 1"),
                  ("kd_temperature", self.kd_temperature > 0, "positive"),
                  ("kd_alpha", 0.0 <= self.kd_alpha <= 1.0, "between 0 and 1"),
                  ("anchor", self.anchor >= 0 and self.anchor * self.lr <= 1.0,
                   f"at least 0 and at most 1 / --lr = {1 / self.lr if self.lr > 0 else math.inf:g}"),
                  ("retain_weight", self.retain_weight >= 0, "at least 0"),
                  ("retain_batch_size", self.retain_batch_size >= 1, "at least 1"))
        check_options(self, checks)


@dataclass(frozen=True)
class DomainJob:
    """One domain to fine-tune: its validated, tokenized data and where its run and expert go."""

    domain: str
    trace_file: Path
    examples: list[EncodedExample]
    rows: list[list[int]] | None  # packed rows of example indices (None without packing)
    teacher: list[tuple[Any, Any]] | None  # aligned with examples: (indices, logits) kept rows
    retain: list[EncodedExample]  # traces whose backbone predictions the expert keeps (retain_weight)
    teacher_file: Path | None
    expert_dir: Path
    run_dir: Path
    fingerprint: dict[str, Any]  # what a resumed run must match (see RUN_SETTINGS_FILE)


@dataclass(frozen=True)
class BranchPlan:
    """Everything `branch` does, checked before Ray starts."""

    backbone: Path
    settings: BranchSettings
    storage: Path
    pad_token_id: int
    jobs: list[DomainJob]
    done: dict[str, Path]  # domain -> expert folder that already exists


@dataclass(frozen=True)
class BranchResult:
    """One domain's expert; `metrics` are the last epoch's (empty when the expert already existed)."""

    domain: str
    expert_dir: Path
    metrics: dict[str, Any]

    def describe(self) -> str:
        """One line for the terminal: where the expert is and its last epoch's losses."""
        if not self.metrics:
            return f"{self.domain}: expert {self.expert_dir} already exists (delete it to train again)"
        losses = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in ("loss", "sft_loss", "kd_loss", "retain_loss")
                           if k in self.metrics)
        return f"{self.domain}: expert {self.expert_dir} (epoch {self.metrics.get('epoch')}, {losses})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_backbone(backbone: str | Path) -> Path:
    """The backbone folder, which must hold config.json and weights (its tokenizer is checked separately)."""
    backbone = Path(backbone)
    if not backbone.is_dir():
        raise AlloyError(f"backbone folder {backbone} does not exist")
    if not (backbone / "config.json").is_file():
        raise AlloyError(f"backbone {backbone} has no config.json; pass a Hugging Face model folder")
    if not any(backbone.glob("*.safetensors")) and not any(backbone.glob("pytorch_model*.bin")):
        raise AlloyError(f"backbone {backbone} has no weights (*.safetensors or pytorch_model*.bin)")
    return backbone.resolve()


def check_domain(domain: str, option: str) -> None:
    """A domain name names a folder or file: refuse one that cannot."""
    if not _DOMAIN_NAME.match(domain):
        raise AlloyError(f"{option}: domain name {domain!r} must be letters, digits, '_', '-' or '.', not starting "
                         f"with '.' (it names the expert folder)")


def plan_branch(backbone: str | Path, data: Mapping[str, str | Path], out: str | Path,
                settings: BranchSettings = BranchSettings(), *, teacher_logits: Mapping[str, str | Path] | None = None,
                retain: Sequence[str | Path] | None = None, resume: bool = False,
                storage: str | Path | None = None) -> BranchPlan:
    """Validate every input and tokenize every trace file; no Ray, no training.

    With `settings.retain_weight` above 0, each domain keeps the backbone's predictions on the `retain`
    trace files, or, without them, on the other domains' traces of `data`.
    """
    from transformers import AutoConfig

    from alloy.branch.teacher import read_teacher_logits

    settings.validate()
    if not data:
        raise AlloyError("no training data: pass --data DOMAIN=TRACES.jsonl at least once")
    teacher_logits = dict(teacher_logits or {})
    for domain in data:
        check_domain(domain, "--data")
    for domain in teacher_logits:
        if domain not in data:
            raise AlloyError(f"--teacher-logits names domain {domain!r}, which has no --data; domains: {sorted(data)}")
    backbone = check_backbone(backbone)
    tokenizer = load_chat_tokenizer(backbone)
    vocab_size = AutoConfig.from_pretrained(backbone, local_files_only=True).vocab_size
    out = Path(out).resolve()
    storage = Path(storage).resolve() if storage is not None else out / ".runs"
    if retain and not settings.retain_weight:
        raise AlloyError("--retain gives traces to retain, but --retain-weight is 0; set it above 0")
    encoded = {Path(f): encode_traces(tokenizer, read_traces(Path(f)), settings.max_length, str(f))
               for f in [*data.values(), *(retain or ())]}
    jobs, done = [], {}
    for domain, trace_file in data.items():
        trace_file = Path(trace_file)
        expert_dir = out / domain
        examples = encoded[trace_file]
        if not settings.retain_weight:
            retain_files = []
        elif retain:
            retain_files = [Path(f) for f in retain]
        else:  # each domain retains the others
            retain_files = [Path(f) for d, f in data.items() if d != domain]
        if settings.retain_weight and not retain_files:
            raise AlloyError(f"--retain-weight: domain {domain!r} has no traces to retain; pass --retain FILE, or "
                             f"more than one --data domain (each retains the others)")
        rows = pack_examples(examples, settings.pack_length, str(trace_file)) if settings.pack_length else None
        teacher_file = Path(teacher_logits[domain]) if domain in teacher_logits else None
        teacher = read_teacher_logits(teacher_file, examples, vocab_size) if teacher_file else None
        if expert_dir.exists():
            done[domain] = expert_dir
            continue
        run_dir = storage / domain
        if resume and not run_dir.exists():
            raise AlloyError(f"--resume: domain {domain!r} has no run folder {run_dir} to resume; drop --resume to "
                             f"start it")
        fingerprint = {"backbone": str(backbone), "traces_sha256": _sha256(trace_file),
                       "teacher_sha256": _sha256(teacher_file) if teacher_file else None,
                       "retain_sha256": [_sha256(f) for f in retain_files] or None,
                       **{k: v for k, v in asdict(settings).items() if k not in _RUN_FREE_SETTINGS}}
        _check_run_settings(run_dir, fingerprint)
        jobs.append(DomainJob(domain, trace_file, examples, rows, teacher, [e for f in retain_files for e in encoded[f]],
                              teacher_file, expert_dir, run_dir, fingerprint))
    return BranchPlan(backbone, settings, storage, pad_id(tokenizer), jobs, done)


def _check_run_settings(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a run folder that was started with other data or hyperparameters."""
    saved_file = run_dir / RUN_SETTINGS_FILE
    if not saved_file.is_file():
        return
    # a setting added after the run started (absent from its file) had its default value then
    saved = {**asdict(BranchSettings()), **json.loads(saved_file.read_text())}
    changed = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in fingerprint.items() if saved.get(key) != value]
    if changed:
        raise AlloyError(f"run folder {run_dir} was started with other settings ({'; '.join(changed)}); use the "
                         f"original settings to resume it, or delete the folder to start over")


def branch(backbone: str | Path, data: Mapping[str, str | Path], out: str | Path,
           settings: BranchSettings = BranchSettings(), *, teacher_logits: Mapping[str, str | Path] | None = None,
           retain: Sequence[str | Path] | None = None, resume: bool = False, address: str | None = None,
           storage: str | Path | None = None) -> dict[str, BranchResult]:
    """Fine-tune `backbone` on each domain's traces; return domain -> its expert (`<out>/<domain>/`).

    `data` and `teacher_logits` map a domain name to its trace JSONL and (optionally) its teacher-logits
    file (see `alloy.branch.teacher`); `retain` are the trace files of the retain term (see
    `plan_branch`). All inputs are validated before Ray starts.
    """
    plan = plan_branch(backbone, data, out, settings, teacher_logits=teacher_logits, retain=retain, resume=resume,
                       storage=storage)
    results = {domain: BranchResult(domain, path, {}) for domain, path in plan.done.items()}
    if plan.jobs:
        with ray_session(address or "local", num_cpus=max(2, settings.num_workers)):
            for job in plan.jobs:
                results[job.domain] = _run_domain(plan, job)
    return {domain: results[domain] for domain in data}


def _run_domain(plan: BranchPlan, job: DomainJob) -> BranchResult:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    job.run_dir.mkdir(parents=True, exist_ok=True)
    settings_file = job.run_dir / RUN_SETTINGS_FILE
    if not settings_file.exists():
        atomic_write_text(settings_file, json.dumps(job.fingerprint, indent=2, sort_keys=True))
    settings = plan.settings
    config = {"backbone": str(plan.backbone), "pad_token_id": plan.pad_token_id,
              "data": ray.put({"examples": job.examples, "rows": job.rows, "teacher": job.teacher,
                               "retain": job.retain}), **asdict(settings)}
    trainer = TorchTrainer(
        train_domain_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu),
        run_config=RunConfig(name=job.domain, storage_path=str(plan.storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise AlloyError(f"the run of domain {job.domain!r} in {job.run_dir} reported no checkpoint")
    _export_expert(result.checkpoint, plan.backbone, job.expert_dir)
    return BranchResult(job.domain, job.expert_dir, dict(result.metrics or {}))


def _export_expert(checkpoint, backbone: Path, expert_dir: Path) -> None:
    """Write the checkpoint's model in the backbone's dtype, with the backbone's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(AutoConfig.from_pretrained(backbone, local_files_only=True), "dtype", None) or "float32"
    with checkpoint.as_directory() as ckpt_dir:
        model = AutoModelForCausalLM.from_pretrained(Path(ckpt_dir) / "model", dtype=dtype)
    with atomic_dir(expert_dir) as staging:
        model.save_pretrained(staging)
        load_chat_tokenizer(backbone).save_pretrained(staging)


def epoch_shard(n_examples: int, world_size: int, rank: int, seed: int, epoch: int) -> list[int]:
    """This worker's example indices for one epoch: a seeded shuffle, padded by wrapping, split evenly."""
    import torch

    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    total = math.ceil(n_examples / world_size) * world_size
    order = (order * math.ceil(total / n_examples))[:total]
    return order[rank::world_size]


def _shard_fsdp(model, device_type: str, bf16: bool):
    """FSDP2 over the default process group: each decoder layer, then the root module."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise AlloyError(f"FSDP: cannot find the decoder layers of {type(model).__name__} (no _no_split_modules); "
                         f"use --strategy ddp")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _batch(config: dict[str, Any], examples: list[EncodedExample], rows: list[list[int]] | None, teacher,
           items: list[int], retained: list[EncodedExample], device) -> tuple[dict[str, Any], Any, dict[str, Any] | None]:
    """Model inputs and teacher rows of the items (examples, or packed rows) of one step.

    The `retained` examples are extra rows at the end of the model inputs (one forward pass); the third
    value is the same examples as the reference model's inputs (None without them).
    """
    import torch

    from alloy.branch.data import collate, collate_packed

    if rows is None:
        chosen = [[i] for i in items]
        batch = collate([examples[i] for i in items] + retained, config["pad_token_id"])
    else:
        chosen = [rows[i] for i in items]
        batch = collate_packed([[examples[j] for j in row] for row in chosen] + [[e] for e in retained],
                               config["pad_token_id"])
    teacher_rows = None
    if teacher is not None:
        order = [j for row in chosen for j in row]
        teacher_rows = (torch.cat([teacher[j][0] for j in order]), torch.cat([teacher[j][1] for j in order]))
    reference = collate(retained, config["pad_token_id"]) if retained else None
    on_device = (lambda b: {k: v.to(device) for k, v in b.items()})
    return on_device(batch), teacher_rows, on_device(reference) if reference else None


def _reference_model(config: dict[str, Any], device, fsdp: bool, bf16: bool):
    """The frozen backbone on this worker (sharded like the trained model with FSDP): the anchor's
    weights and the retain term's predictions."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(config["backbone"], dtype="float32")
    reference.config.use_cache = False
    reference.requires_grad_(False)
    reference.eval()
    return _shard_fsdp(reference.to(device), device.type, bf16) if fsdp else reference.to(device)


def _retain_draw(retain: list[EncodedExample], config: dict[str, Any], epoch: int, rank: int):
    """A generator of each step's retain examples, seeded by (seed, epoch, rank): a resumed epoch draws
    the same ones."""
    import torch

    generator = torch.Generator().manual_seed((config["seed"] * 1_000_003 + epoch) * 1_009 + rank)
    while True:
        yield [retain[i] for i in torch.randint(len(retain), (config["retain_batch_size"],), generator=generator)]


def _pull_toward(pairs: list[tuple[Any, Any]], fraction: float) -> None:
    """Move each trained weight `fraction` of the way back to its reference weight (the anchor)."""
    import torch

    with torch.no_grad():
        for weight, reference in pairs:
            weight.lerp_(reference, fraction)


def train_domain_loop(config: dict[str, Any]) -> None:
    """The per-worker training loop of one domain (runs inside a Ray Train worker)."""
    import tempfile

    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model
    from transformers import AutoModelForCausalLM, get_scheduler

    from alloy.branch.losses import branch_loss, retain_loss

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    payload = ray.get(config["data"])
    examples: list[EncodedExample] = payload["examples"]
    rows, teacher, retain = payload["rows"], payload["teacher"], payload["retain"]
    torch.manual_seed(config["seed"])
    device = get_device()
    fsdp = config["strategy"] == "fsdp"
    bf16 = config["precision"] == "bf16" or (config["precision"] == "auto" and device.type == "cuda")

    start_epoch, state, source = 0, None, Path(config["backbone"])
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            ckpt_dir = Path(stack.enter_context(checkpoint.as_directory()))
            start_epoch = json.loads((ckpt_dir / "state.json").read_text())["epoch"]
            state = {name: torch.load(ckpt_dir / f"{name}.pt", map_location="cpu") for name in ("optimizer", "scheduler")}
            source = ckpt_dir / "model"
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.config.use_cache = False
    if config["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    if fsdp:
        model = _shard_fsdp(model.to(device), device.type, bf16)
    else:
        model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    n_items = len(rows) if rows is not None else len(examples)
    steps_per_epoch = math.ceil(math.ceil(n_items / world) / config["batch_size"])
    total_steps = steps_per_epoch * config["epochs"]
    schedule = config["lr_schedule"] if config["lr_schedule"] != "constant" or not config["warmup_ratio"] \
        else "constant_with_warmup"
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=int(config["warmup_ratio"] * total_steps),
                              num_training_steps=total_steps)
    if state is not None:
        _load_optimizer(model, optimizer, state["optimizer"], fsdp)
        scheduler.load_state_dict(state["scheduler"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and not fsdp)
    reference = _reference_model(config, device, fsdp, bf16) if config["anchor"] or config["retain_weight"] else None
    anchors = []
    if config["anchor"]:
        backbone_weights = dict(reference.named_parameters())
        trained = model.module if hasattr(model, "module") else model
        anchors = [(weight, backbone_weights[name]) for name, weight in trained.named_parameters()]

    for epoch in range(start_epoch, config["epochs"]):
        shard = epoch_shard(n_items, world, rank, config["seed"], epoch)
        step_losses = []
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # sft, kd, retain, steps
        draws = _retain_draw(retain, config, epoch, rank) if config["retain_weight"] else None
        for start in range(0, len(shard), config["batch_size"]):
            retained = next(draws) if draws is not None else []
            batch, teacher_rows, reference_batch = _batch(config, examples, rows, teacher,
                                                          shard[start:start + config["batch_size"]], retained, device)
            labels = batch.pop("labels")
            n = labels.shape[0] - len(retained)
            with autocast:
                logits = model(**batch, use_cache=False).logits  # with a cache, packing would leak
            loss, sft, kd = branch_loss(logits[:n], labels[:n], teacher_rows, config["kd_temperature"],
                                        config["kd_alpha"])
            kept = None
            if reference_batch is not None:
                reference_labels = reference_batch.pop("labels")
                with torch.no_grad(), autocast:
                    reference_logits = reference(**reference_batch, use_cache=False).logits
                kept = retain_loss(logits[n:], reference_logits, reference_labels)
                loss = loss + config["retain_weight"] * kept
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if anchors:
                _pull_toward(anchors, scheduler.get_last_lr()[0] * config["anchor"])
            scheduler.step()
            step_losses.append(loss.item())
            sums += torch.tensor([sft.item(), kd.item() if kd is not None else 0.0,
                                  kept.item() if kept is not None else 0.0, 1.0], dtype=torch.float64, device=device)
        losses = torch.tensor(step_losses, dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(losses)
        losses /= world
        steps = float(sums[3])
        metrics = {"epoch": epoch + 1, "start_epoch": start_epoch, "steps_per_worker": int(steps) // world,
                   "loss": float(losses.mean()), "sft_loss": float(sums[0]) / steps, "step_losses": losses.tolist(),
                   "lr": scheduler.get_last_lr()[0]}
        if teacher is not None:
            metrics["kd_loss"] = float(sums[1]) / steps
        if config["retain_weight"]:
            metrics["retain_loss"] = float(sums[2]) / steps
        model_state, optimizer_state = _full_state(model, optimizer, fsdp)
        with tempfile.TemporaryDirectory() as tmp:
            reported = None
            if rank == 0:
                unwrapped = model.module if hasattr(model, "module") else model
                unwrapped.save_pretrained(Path(tmp) / "model", state_dict=model_state)
                torch.save(optimizer_state, Path(tmp) / "optimizer.pt")
                torch.save(scheduler.state_dict(), Path(tmp) / "scheduler.pt")
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch + 1}))
                reported = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=reported)


def _full_state(model, optimizer, fsdp: bool) -> tuple[dict | None, dict]:
    """The whole model and optimizer state on CPU (gathered from the shards with FSDP; a collective)."""
    if not fsdp:
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def _load_optimizer(model, optimizer, state: dict, fsdp: bool) -> None:
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
