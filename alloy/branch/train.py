"""Fine-tune one backbone separately on each domain's traces with Ray Train, one expert per domain.

For every domain, a `TorchTrainer` runs `train_domain_loop` on `num_workers` data-parallel workers
(DDP; gloo on CPU, NCCL on GPU). Each epoch rank 0 reports a Ray Train checkpoint (`model/` as a
Hugging Face folder in float32, `optimizer.pt`, `state.json`) into the run folder
`<storage>/<domain>` (default storage: `<out>/.runs`). A run whose folder exists is resumed from its
latest checkpoint (Ray Train restores it); the run folder also holds `alloy_branch.json`, the settings
the run was started with, and resuming with different data or hyperparameters is refused. After the
last epoch the driver writes `<out>/<domain>/` (config, safetensors in the backbone's dtype, tokenizer)
under a temporary name and renames it: an ordinary HF folder, ready to be a merge parent. A domain
whose expert folder already exists is skipped.

Batching: `batch_size` examples per worker per optimizer step; each epoch the examples are shuffled
with a generator seeded by (seed, epoch) and split evenly over the workers (the shuffled order is
padded by wrapping around, so every worker runs the same number of steps). The learning rate is
constant, or with `schedule="cosine"` warms up linearly over the first 5% of the steps and then decays
to zero along a cosine (AdamW, no weight decay); gradients are clipped to norm 1. Weights and optimizer state
are float32; on GPU the forward pass runs under bfloat16 autocast.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from alloy.io.atomic import atomic_dir, atomic_write_text
from alloy.branch.data import EncodedExample, encode_traces, load_chat_tokenizer, pad_id, read_traces
from alloy.errors import AlloyError

RUN_SETTINGS_FILE = "alloy_branch.json"
SCHEDULES = ("constant", "cosine")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class BranchSettings:
    """Hyperparameters of one branch run (the same for every domain)."""

    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 4  # examples per worker per optimizer step
    max_length: int = 4096
    num_workers: int = 1
    use_gpu: bool = False
    kd_temperature: float = 2.0
    kd_alpha: float = 0.5
    seed: int = 0
    schedule: str = "constant"  # one of SCHEDULES

    def validate(self) -> None:
        """Raise AlloyError naming the first setting out of range."""
        checks = (("epochs", self.epochs >= 1, "at least 1"), ("lr", self.lr > 0, "positive"),
                  ("batch_size", self.batch_size >= 1, "at least 1"),
                  ("max_length", self.max_length >= 2, "at least 2"),
                  ("num_workers", self.num_workers >= 1, "at least 1"),
                  ("kd_temperature", self.kd_temperature > 0, "positive"),
                  ("kd_alpha", 0.0 <= self.kd_alpha <= 1.0, "between 0 and 1"),
                  ("schedule", self.schedule in SCHEDULES, f"one of {SCHEDULES}"))
        for name, ok, what in checks:
            if not ok:
                raise AlloyError(f"--{name.replace('_', '-')} must be {what}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DomainJob:
    """One domain to fine-tune: its validated, tokenized data and where its run and expert go."""

    domain: str
    trace_file: Path
    examples: list[EncodedExample]
    teacher: list[tuple[Any, Any]] | None  # aligned with examples: (indices, logits) kept rows
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
        losses = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in ("loss", "sft_loss", "kd_loss") if k in self.metrics)
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


def _check_domain(domain: str, option: str) -> None:
    if not _DOMAIN_NAME.match(domain):
        raise AlloyError(f"{option}: domain name {domain!r} must be letters, digits, '_', '-' or '.', not starting "
                         f"with '.' (it names the expert folder)")


def plan_branch(backbone: str | Path, data: Mapping[str, str | Path], out: str | Path,
                settings: BranchSettings = BranchSettings(), *, teacher_logits: Mapping[str, str | Path] | None = None,
                resume: bool = False, storage: str | Path | None = None) -> BranchPlan:
    """Validate every input and tokenize every trace file; no Ray, no training."""
    from transformers import AutoConfig

    from alloy.branch.teacher import read_teacher_logits

    settings.validate()
    if not data:
        raise AlloyError("no training data: pass --data DOMAIN=TRACES.jsonl at least once")
    teacher_logits = dict(teacher_logits or {})
    for domain in data:
        _check_domain(domain, "--data")
    for domain in teacher_logits:
        if domain not in data:
            raise AlloyError(f"--teacher-logits names domain {domain!r}, which has no --data; domains: {sorted(data)}")
    backbone = check_backbone(backbone)
    tokenizer = load_chat_tokenizer(backbone)
    vocab_size = AutoConfig.from_pretrained(backbone, local_files_only=True).vocab_size
    out = Path(out).resolve()
    storage = Path(storage).resolve() if storage is not None else out / ".runs"
    jobs, done = [], {}
    for domain, trace_file in data.items():
        trace_file = Path(trace_file)
        expert_dir = out / domain
        examples = encode_traces(tokenizer, read_traces(trace_file), settings.max_length, str(trace_file))
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
                       **{k: v for k, v in asdict(settings).items() if k not in ("epochs", "num_workers", "use_gpu")}}
        _check_run_settings(run_dir, fingerprint)
        jobs.append(DomainJob(domain, trace_file, examples, teacher, teacher_file, expert_dir, run_dir, fingerprint))
    return BranchPlan(backbone, settings, storage, pad_id(tokenizer), jobs, done)


def _check_run_settings(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a run folder that was started with other data or hyperparameters."""
    saved_file = run_dir / RUN_SETTINGS_FILE
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())
    changed = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in fingerprint.items() if saved.get(key) != value]
    if changed:
        raise AlloyError(f"run folder {run_dir} was started with other settings ({'; '.join(changed)}); use the "
                         f"original settings to resume it, or delete the folder to start over")


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[None]:
    """Use a running Ray, connect to `address` (`auto` or `ray://host:port`), or start an embedded one.

    Whatever this starts or connects, it shuts down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def branch(backbone: str | Path, data: Mapping[str, str | Path], out: str | Path,
           settings: BranchSettings = BranchSettings(), *, teacher_logits: Mapping[str, str | Path] | None = None,
           resume: bool = False, address: str | None = None,
           storage: str | Path | None = None) -> dict[str, BranchResult]:
    """Fine-tune `backbone` on each domain's traces; return domain -> its expert (`<out>/<domain>/`).

    `data` and `teacher_logits` map a domain name to its trace JSONL and (optionally) its teacher-logits
    file (see `alloy.branch.teacher`). All inputs are validated before Ray starts.
    """
    plan = plan_branch(backbone, data, out, settings, teacher_logits=teacher_logits, resume=resume, storage=storage)
    results = {domain: BranchResult(domain, path, {}) for domain, path in plan.done.items()}
    if plan.jobs:
        with ray_session(address, num_cpus=max(2, settings.num_workers)):
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
              "data": ray.put({"examples": job.examples, "teacher": job.teacher}), **asdict(settings)}
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


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning rate's multiplier at optimizer step `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, round(0.05 * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


def train_domain_loop(config: dict[str, Any]) -> None:
    """The per-worker training loop of one domain (runs inside a Ray Train worker)."""
    import tempfile

    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model
    from transformers import AutoModelForCausalLM

    from alloy.branch.data import collate
    from alloy.branch.losses import branch_loss

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    payload = ray.get(config["data"])
    examples: list[EncodedExample] = payload["examples"]
    teacher = payload["teacher"]
    torch.manual_seed(config["seed"])

    start_epoch, optimizer_state, source = 0, None, Path(config["backbone"])
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            ckpt_dir = Path(stack.enter_context(checkpoint.as_directory()))
            start_epoch = json.loads((ckpt_dir / "state.json").read_text())["epoch"]
            optimizer_state = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu")
            source = ckpt_dir / "model"
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    model = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    device = get_device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    steps_per_epoch = math.ceil(len(epoch_shard(len(examples), world, rank, 0, 0)) / config["batch_size"])
    for epoch in range(start_epoch, config["epochs"]):
        shard = epoch_shard(len(examples), world, rank, config["seed"], epoch)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, sft, kd, steps
        for step, start in enumerate(range(0, len(shard), config["batch_size"]), start=epoch * steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = config["lr"] * lr_factor(config["schedule"], step, config["epochs"] * steps_per_epoch)
            batch_ids = shard[start:start + config["batch_size"]]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_ids], config["pad_token_id"]).items()}
            rows = None
            if teacher is not None:
                rows = (torch.cat([teacher[i][0] for i in batch_ids]), torch.cat([teacher[i][1] for i in batch_ids]))
            with autocast:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, sft, kd = branch_loss(logits, batch["labels"], rows, config["kd_temperature"], config["kd_alpha"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            sums += torch.tensor([loss.item(), sft.item(), kd.item() if kd is not None else 0.0, 1.0],
                                 dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(sums)
        steps = float(sums[3])
        metrics = {"epoch": epoch + 1, "start_epoch": start_epoch, "steps_per_worker": int(steps) // world,
                   "loss": float(sums[0]) / steps, "sft_loss": float(sums[1]) / steps}
        if teacher is not None:
            metrics["kd_loss"] = float(sums[2]) / steps
        with tempfile.TemporaryDirectory() as tmp:
            reported = None
            if rank == 0:
                unwrapped = model.module if hasattr(model, "module") else model
                unwrapped.save_pretrained(Path(tmp) / "model")
                torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch + 1}))
                reported = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=reported)
