"""Summaries of checkpoints: tensor groups (`alloy inspect`) and per-group distances between parents."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from alloy.io.checkpoint import Checkpoint
from alloy.merge.groups import GROUPS, preset_for


@dataclass
class GroupSummary:
    """Totals of one tensor group of a checkpoint."""

    tensors: int = 0
    parameters: int = 0
    bytes: int = 0
    dtypes: Counter = field(default_factory=Counter)


def group_summary(ckpt: Checkpoint) -> dict[str, GroupSummary]:
    """Per group (in GROUPS order, empty groups left out): tensor count, parameters, bytes, dtypes."""
    preset = preset_for(ckpt.config)
    out = {g: GroupSummary() for g in GROUPS}
    for name, info in ckpt.tensors.items():
        s = out[preset.group_of(name)]
        s.tensors += 1
        s.parameters += info.numel
        s.bytes += info.nbytes
        s.dtypes[str(info.dtype).removeprefix("torch.")] += 1
    return {g: s for g, s in out.items() if s.tensors}


def render_summary(ckpt: Checkpoint, groups: dict[str, GroupSummary]) -> str:
    """The `alloy inspect` table."""
    cfg = ckpt.config
    head = (f"{ckpt.path}  {', '.join(cfg.get('architectures') or [cfg.get('model_type', '?')])}  "
            f"preset {preset_for(cfg).name}  layers {ckpt.num_layers}  vocab {cfg.get('vocab_size')}"
            + ("  FP8 block weights" if ckpt.is_fp8 else ""))
    rows = [("group", "tensors", "parameters", "bytes", "dtypes")]
    for g, s in groups.items():
        rows.append((g, str(s.tensors), f"{s.parameters:,}", _human(s.bytes),
                     ", ".join(f"{d}×{n}" for d, n in sorted(s.dtypes.items()))))
    total = GroupSummary(sum(s.tensors for s in groups.values()), sum(s.parameters for s in groups.values()),
                         sum(s.bytes for s in groups.values()))
    rows.append(("total", str(total.tensors), f"{total.parameters:,}", _human(total.bytes), ""))
    return head + "\n" + _table(rows)


def render_distances(base: Checkpoint, others: Sequence[Checkpoint]) -> str:
    """Per group and other checkpoint: median and max relative distance to `base`, and max rms distance."""
    from alloy.merge.stats import checkpoint_distances

    preset = preset_for(base.config)
    rows = [("group", "model", "tensors", "rel median", "rel max", "rms max", "identical")]
    for other in others:
        per_group: dict[str, list] = {}
        for d in checkpoint_distances(base, other):
            per_group.setdefault(preset.group_of(d.name), []).append(d)
        for g in GROUPS:
            ds = per_group.get(g)
            if not ds:
                continue
            rel = sorted(d.relative for d in ds)
            rows.append((g, other.path.name, str(len(ds)), f"{rel[len(rel) // 2]:.3g}", f"{rel[-1]:.3g}",
                         f"{max(d.rms for d in ds):.3g}", str(sum(d.frobenius == 0 for d in ds))))
    return f"distances to {base.path}\n" + _table(rows)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)
