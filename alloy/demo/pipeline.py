"""The local demo: branch → merge → evaluate on one machine with an embedded Ray.

1. synthetic data: three learnable domains in three benchmarks' formats, with disjoint training and
   evaluation problems; a tiny tokenizer and a tiny MoE backbone pre-trained on the formats and a
   small share of each domain's training problems;
2. branch: one expert per domain with Ray Train (cosine learning-rate schedule), kept mergeable by
   the anchor to the backbone and the retain term on the other domains' traces;
3. sweep: task-arithmetic / TIES merges of the experts, one coefficient each
   (`search_spaces/demo.yaml`), each child built in memory and scored by lm-eval on the three tasks,
   one trial at a time so that a seed gives the same results;
4. the leaderboard, the HTML report, and the verdict: whether the best merge beats every expert on
   the combined score beyond the 95% intervals (`alloy.demo.verdict`), then the `alloy export` command
   that writes the winner.

Everything goes under one folder; each step reuses what an earlier run left there. The terminal gets a
few lines per stage with timings; everything else the libraries print (Ray, Ray Train, transformers,
lm-eval) goes to `alloy.log` in that folder (`alloy.logs.quiet_output`; `verbose` shows it instead).
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import yaml

from alloy.demo.domains import DOMAIN_TASKS
from alloy.demo.verdict import DemoVerdict, verdict
from alloy.errors import AlloyError
from alloy.io.atomic import atomic_write_text
from alloy.logs import LOG_FILE, lines_to_log_only, quiet_output, say, terminal
from alloy.resources import shipped_folder

SPACE = shipped_folder("search_spaces") / "demo.yaml"
SETTINGS_FILE = "alloy_demo.json"  # the seed and scale a demo folder was made with
_BAR = 24


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is: problems per domain, backbone steps, expert epochs, sweep trials.

    The defaults are sized for 2 CPU cores (see the README for timings); the tests use a smaller one.
    """

    n_train: int = 400
    n_eval: int = 40
    n_format: int = 200             # backbone traces per benchmark format
    n_backbone_domain: int = 100    # of each domain's training traces, also in the backbone's pre-training
    backbone_steps: int = 600
    expert_epochs: int = 24         # of n_train / 16 = 25 optimizer steps each
    anchor: float = 10.0            # the experts' pull toward the backbone (BranchSettings.anchor)
    retain_weight: float = 1.0      # their KL to the backbone on the other domains' traces
    trials: int | None = None       # None: as search_spaces/demo.yaml says
    rungs: tuple[int, ...] | None = None


class Terminal:
    """The demo's own lines (`say`: the terminal and the log) and its progress bars (the terminal only)."""

    def line(self, text: str) -> None:
        say(text)

    def bar(self, label: str, done: int, total: int, started: float, note: str = "", last: bool = False) -> None:
        """Redraw one progress bar line in place; the `last` one (or a full one) ends the line."""
        filled = _BAR * min(done, total) // max(1, total)
        stream = terminal()
        stream.write(f"\r      {label} [{'#' * filled}{'.' * (_BAR - filled)}] {done}/{total} "
                     f"{time.monotonic() - started:5.0f}s {note}".rstrip() + ("\n" if last or done >= total else ""))
        stream.flush()


@contextlib.contextmanager
def stage(term: Terminal, title: str) -> Iterator[None]:
    """One stage: its title line, then its time when it ends."""
    term.line(title)
    started = time.monotonic()
    yield
    term.line(f"      done in {time.monotonic() - started:.0f}s")


def check_folder(out: Path, seed: int, scale: DemoScale) -> None:
    """Refuse a demo folder made with another seed or scale (or by an earlier demo, which wrote no
    settings file), since its data, backbone and experts would be reused; record them in a new one."""
    wanted = {"seed": seed, **asdict(scale)}
    wanted["rungs"] = list(scale.rungs) if scale.rungs is not None else None
    path = out / SETTINGS_FILE
    if path.is_file():
        made = json.loads(path.read_text())
        changed = [f"{key}: {made.get(key)!r} -> {value!r}" for key, value in wanted.items() if made.get(key) != value]
        if changed:
            raise AlloyError(f"demo folder {out} was made with other settings ({'; '.join(changed)}); delete it, or "
                             f"pass --out DIR for a new one")
    elif any((out / name).exists() for name in ("data", "backbone", "experts", "sweep")):
        raise AlloyError(f"demo folder {out} was made by an earlier version of the demo (it has no {SETTINGS_FILE}); "
                         f"delete it, or pass --out DIR for a new one")
    else:
        atomic_write_text(path, json.dumps(wanted, indent=2, sort_keys=True))


def prepare_models(out: Path, term: Terminal, seed: int = 0, scale: DemoScale = DemoScale()) -> Path:
    """Steps 1 and 2: data, backbone and experts under `out` (reused when present); returns the space."""
    from alloy.branch.data import read_traces
    from alloy.branch.train import BranchSettings, branch
    from alloy.demo.backbone import build_backbone
    from alloy.demo.domains import format_traces, write_domain_data

    data = out / "data"
    traces = {domain: data / "traces" / f"{domain}.jsonl" for domain in DOMAIN_TASKS}
    with stage(term, f"[1/4] data and backbone: {scale.n_train} training and {scale.n_eval} evaluation problems "
                     f"per domain (disjoint), a tiny MoE backbone that knows the formats and has seen "
                     f"{scale.n_backbone_domain} training problems per domain"):
        if not all(p.is_file() for p in traces.values()) or not all(
                (data / "eval" / f"{task}.jsonl").is_file() for task in DOMAIN_TASKS.values()):
            write_domain_data(data, n_train=scale.n_train, n_eval=scale.n_eval, seed=seed)
        domain_traces = [read_traces(path) for path in traces.values()]
        seen = [{"prompt": t.prompt, "response": t.response} for ts in domain_traces for t in ts[:scale.n_backbone_domain]]
        started = time.monotonic()
        build_backbone(out / "backbone", format_traces(scale.n_format, seed) + seen, seed=seed,
                       steps=scale.backbone_steps, max_length=512,
                       tokenizer_texts=[f"{t.prompt}\n{t.response}" for ts in domain_traces for t in ts],
                       progress=lambda step, steps, loss: term.bar("backbone", step, steps, started, f"loss {loss:.3f}")
                       if step % 5 == 0 or step == steps else None)
    with stage(term, "[2/4] branch: one expert per domain (Ray Train)"):
        for domain, trace_file in traces.items():
            started = time.monotonic()
            settings = BranchSettings(epochs=scale.expert_epochs, lr=3e-3, batch_size=8, max_length=512, num_workers=2,
                                      seed=seed, lr_schedule="cosine", warmup_ratio=0.05, anchor=scale.anchor,
                                      retain_weight=scale.retain_weight, retain_batch_size=4)
            result = branch(out / "backbone", {domain: trace_file}, out / "experts", settings,
                            retain=[path for other, path in traces.items() if other != domain])[domain]
            loss = result.metrics.get("sft_loss")
            term.line(f"      {domain:>8} expert: " + (f"last-epoch loss {loss:.3f}, {time.monotonic() - started:.0f}s"
                                                     if loss is not None else "reused"))
    return _space_for(out, scale, seed)


def _space_for(out: Path, scale: DemoScale, seed: int) -> Path:
    """The demo search space pointing at `out`: the shipped file when `out` is its default folder and
    the scale and seed keep the shipped sweep, else a copy in `out`."""
    document = yaml.safe_load(SPACE.read_text())
    default = (SPACE.parent / document["parents"]["root"]).resolve()
    if out.resolve() == default and scale.trials is None and scale.rungs is None and seed == document["search"]["seed"]:
        return SPACE
    if scale.trials is not None:
        document["search"]["trials"] = scale.trials
    if scale.rungs is not None:
        document["evaluation"]["rungs"] = list(scale.rungs)
    document["search"]["seed"] = seed
    document["parents"]["root"] = str(out.resolve())
    document["evaluation"]["data_dir"] = str((out / "data" / "eval").resolve())
    path = out / "demo.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@contextlib.contextmanager
def sweep_progress(term: Terminal, sweep: Path, total: int) -> Iterator[None]:
    """Redraw a bar of finished trials (read from the leaderboard) every second while the block runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alloy.search.leaderboard import FILENAME

    stop = threading.Event()
    started = time.monotonic()

    def finished() -> int:
        try:  # the file as it is now: never a rebuild from the study, which the sweep is writing
            rows = pq.read_table(sweep / FILENAME).to_pylist()
        except (OSError, pa.ArrowException):  # not written yet
            return 0
        return sum(r["latest"] and r["status"] in ("ok", "pruned", "failed") for r in rows)

    def poll() -> None:
        while not stop.wait(1.0):
            term.bar("trials", min(finished(), total - 1), total, started)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        term.bar("trials", finished(), total, started, last=True)


def run_demo(out: str | Path = "alloy-demo", seed: int = 0, scale: DemoScale = DemoScale(),
             verbose: bool = False) -> DemoVerdict:
    """The whole demo; returns the verdict it prints (library output in `out/alloy.log` unless `verbose`)."""
    from alloy.sandbox import check_sandbox
    from alloy.search.leaderboard import read_leaderboard, render_board, select_rows
    from alloy.search.report import write_report
    from alloy.search.space import load_space
    from alloy.search.sweep import run_sweep
    from alloy.workers.local_ray import ray_session

    check_sandbox(allow_code_execution=True)  # the code task's programs run there: known before any training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_folder(out, seed, scale)
    started = time.monotonic()
    with quiet_output(out / LOG_FILE, verbose):
        term = Terminal()
        term.line(f"alloy demo: everything goes under {out.resolve()} (library output: {out / LOG_FILE})")
        with ray_session("local", num_cpus=2):  # one embedded Ray for the experts and the sweep
            space = prepare_models(out, term, seed, scale)
            sweep = out / "sweep"
            trials = load_space(space).search.trials
            with stage(term, f"[3/4] sweep: alloy sweep {space} --out {sweep} ({trials} trials, one at a time)"):
                with sweep_progress(term, sweep, trials), lines_to_log_only():  # its trial lines: the log
                    run_sweep(space, sweep, resume=(sweep / "study.db").is_file())
        term.line("[4/4] leaderboard (each expert alone is a reference row; scores with 95% intervals)")
        table = read_leaderboard(sweep)
        term.line(render_board(select_rows(table), table, gaps=False))  # the verdict gives the combined gaps
        term.line(f"report: {write_report(sweep)}")
        result = verdict(sweep)
        term.line(result.render())
        if result.best_trial is not None:
            term.line(f"next: write the best merge as a model folder with\n"
                      f"  alloy export {sweep} {result.best_trial} {out / 'best-merge'}")
        term.line(f"alloy demo finished in {time.monotonic() - started:.0f}s")
    return result
