"""The local demo: branch → merge → evaluate on one machine with an embedded Ray.

1. synthetic data in three benchmarks' formats, a tiny tokenizer and a tiny MoE backbone pre-trained
   briefly on the mix of the domains;
2. branch: one expert per domain with Ray Train;
3. sweep: AoE / TIES / linear merges of the experts (`search_spaces/demo.yaml`), each child built in
   memory and scored by lm-eval on the three tasks;
4. the leaderboard, the HTML report, and the honest answer to whether the best merge beats every
   expert on the combined score.

Everything goes under one folder; each step reuses what an earlier run left there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from alloy.demo.domains import DOMAIN_TASKS
from alloy.logs import say
from alloy.resources import shipped_folder

SPACE = shipped_folder("search_spaces") / "demo.yaml"


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is: problems per domain, backbone steps, branch epochs, sweep trials.

    The defaults run the whole demo in under 10 minutes on 2 CPU cores; the tests use a smaller one.
    """

    n_train: int = 64
    n_eval: int = 18
    backbone_steps: int = 200
    branch_epochs: int = 2
    trials: int | None = None       # None: as search_spaces/demo.yaml says
    rungs: tuple[int, ...] | None = None


@dataclass
class DemoVerdict:
    """The best merge's combined score (mean of the task objectives) against each expert's."""

    best_trial: int | None
    best_score: float | None
    experts: dict[str, float]

    @property
    def beats_every_expert(self) -> bool:
        return self.best_score is not None and bool(self.experts) and all(
            self.best_score > s for s in self.experts.values())

    def render(self) -> str:
        if self.best_score is None:
            return "no merge finished at the full rung, so there is nothing to compare"
        lines = [f"best merge: trial {self.best_trial}, combined score {self.best_score:.3f}"]
        lines += [f"  {label:>8} expert alone: {score:.3f}" for label, score in sorted(self.experts.items())]
        lines.append("the best merge beats every expert on the combined score: "
                     + ("yes" if self.beats_every_expert else "no"))
        return "\n".join(lines)


def prepare_models(out: Path, seed: int = 0, scale: DemoScale = DemoScale()) -> Path:
    """Steps 1 and 2: data, backbone and experts under `out` (reused when present); returns the space."""
    from alloy.branch.train import BranchSettings, branch
    from alloy.demo.backbone import build_backbone
    from alloy.demo.domains import generate_domain, write_domain_data

    data = out / "data"
    traces = {domain: data / "traces" / f"{domain}.jsonl" for domain in DOMAIN_TASKS}
    if not all(p.is_file() for p in traces.values()) or not all(
            (data / "eval" / f"{task}.jsonl").is_file() for task in DOMAIN_TASKS.values()):
        say("[1/4] writing the three synthetic domains")
        write_domain_data(data, n_train=scale.n_train, n_eval=scale.n_eval, seed=seed)
    say("[1/4] tiny tokenizer and MoE backbone (pre-trained on all three domains)")
    mix = [item.trace for domain in DOMAIN_TASKS for item in generate_domain(domain, scale.n_train, seed + 1)]
    backbone = build_backbone(out / "backbone", mix, seed=seed, steps=scale.backbone_steps)
    say("[2/4] branch: one expert per domain (Ray Train)")
    experts = branch(backbone, traces, out / "experts",
                     BranchSettings(epochs=scale.branch_epochs, lr=2e-3, batch_size=8, max_length=384,
                                    num_workers=2, seed=seed))
    for result in experts.values():
        say(f"      {result.describe()}")
    return _space_for(out, scale)


def _space_for(out: Path, scale: DemoScale) -> Path:
    """The demo search space pointing at `out`: the shipped file when `out` is its default folder and
    the scale keeps the shipped sweep, else a copy in `out`."""
    document = yaml.safe_load(SPACE.read_text())
    default = (SPACE.parent / document["parents"]["root"]).resolve()
    if out.resolve() == default and scale.trials is None and scale.rungs is None:
        return SPACE
    if scale.trials is not None:
        document["search"]["trials"] = scale.trials
    if scale.rungs is not None:
        document["evaluation"]["rungs"] = list(scale.rungs)
    document["parents"]["root"] = str(out.resolve())
    document["evaluation"]["data_dir"] = str((out / "data" / "eval").resolve())
    path = out / "demo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def verdict(sweep: Path) -> DemoVerdict:
    """Compare the best merge with each expert alone on the mean of the task objectives: on the confirmed
    scores when the sweep ran its confirmation, else at the full rung."""
    from alloy.search.leaderboard import combined_score, leaderboard_meta, read_leaderboard, task_metrics

    table = read_leaderboard(sweep)
    meta = leaderboard_meta(table)
    tasks = task_metrics(meta["objectives"])
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    confirmed = [r for r in ok if r["rung"] == len(meta["rungs"])]
    rows = confirmed or [r for r in ok if r["rung"] == len(meta["rungs"]) - 1]

    def combined(row: dict) -> float:
        return combined_score(row, tasks)

    experts = {r["reference"].removeprefix("parent:"): combined(r) for r in rows
               if (r.get("reference") or "").startswith("parent:")}
    merges = [r for r in rows if not r.get("reference")]
    best = max(merges, key=combined, default=None)
    return DemoVerdict(best["trial"] if best else None, combined(best) if best else None, experts)


def run_demo(out: str | Path = "alloy-demo", seed: int = 0, scale: DemoScale = DemoScale()) -> DemoVerdict:
    """The whole demo; returns the verdict it prints."""
    from alloy.search.leaderboard import read_leaderboard, render_board, select_rows
    from alloy.search.report import write_report
    from alloy.search.sweep import run_sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"alloy demo: everything goes under {out.resolve()}")
    space = prepare_models(out, seed, scale)
    sweep = out / "sweep"
    say(f"[3/4] sweep: alloy sweep {space} --out {sweep}")
    run_sweep(space, sweep, resume=(sweep / "study.db").is_file())
    say("[4/4] leaderboard (each expert alone is a reference row)")
    table = read_leaderboard(sweep)
    say(render_board(select_rows(table, top=10), table))
    say(f"report: {write_report(sweep)}")
    result = verdict(sweep)
    say(result.render())
    return result
