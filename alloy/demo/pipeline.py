"""The local demo: branch → merge → evaluate on one machine with an embedded Ray.

1. synthetic data: three learnable domains in three benchmarks' formats, with disjoint training and
   evaluation problems; a tiny tokenizer and a tiny MoE backbone pre-trained on the formats only;
2. branch: one expert per domain with Ray Train (cosine learning-rate schedule);
3. sweep: AoE / TIES / task-arithmetic / linear merges of the experts (`search_spaces/demo.yaml`), each
   child built in memory and scored by lm-eval on the three tasks, one trial at a time so that a seed
   gives the same results;
4. the leaderboard, the HTML report, and the verdict: whether the best merge beats every expert on
   the combined score beyond the 95% intervals (`alloy.demo.verdict`), then the `alloy export` command
   that writes the winner.

Everything goes under one folder; each step reuses what an earlier run left there. The terminal gets a
few lines per stage with timings; everything else the libraries print (Ray, Ray Train, transformers,
lm-eval) goes to `demo.log` in that folder.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import yaml

from alloy.demo.domains import DOMAIN_TASKS
from alloy.demo.verdict import DemoVerdict, verdict

SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
LOG_FILE = "demo.log"
_BAR = 24


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is: problems per domain, backbone steps, expert epochs, sweep trials.

    The defaults are sized for 2 CPU cores (see the README for timings); the tests use a smaller one.
    """

    n_train: int = 400
    n_eval: int = 40
    n_format: int = 200             # backbone traces per benchmark format
    backbone_steps: int = 200
    expert_epochs: int = 24         # of n_train / 16 = 25 optimizer steps each
    trials: int | None = None       # None: as search_spaces/demo.yaml says
    rungs: tuple[int, ...] | None = None


class Terminal:
    """Where the demo's own lines go: the terminal the demo started on, whatever the libraries' output."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, label: str, done: int, total: int, started: float, note: str = "", last: bool = False) -> None:
        """Redraw one progress bar line in place; the `last` one (or a full one) ends the line."""
        filled = _BAR * min(done, total) // max(1, total)
        self.stream.write(f"\r      {label} [{'#' * filled}{'.' * (_BAR - filled)}] {done}/{total} "
                          f"{time.monotonic() - started:5.0f}s {note}".rstrip() + ("\n" if last or done >= total else ""))
        self.stream.flush()


@contextlib.contextmanager
def quiet(log_path: Path) -> Iterator[Terminal]:
    """Send this process's stdout and stderr (`sys.stdout`/`sys.stderr` and file descriptors 1 and 2, so
    native libraries and child processes too) to `log_path` for the block; the yielded Terminal writes
    to the original stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = open(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    streams = sys.stdout, sys.stderr
    with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            yield Terminal(terminal)
        finally:
            log.flush()
            sys.stdout, sys.stderr = streams
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


@contextlib.contextmanager
def stage(term: Terminal, title: str) -> Iterator[None]:
    """One stage: its title line, then its time when it ends."""
    term.line(title)
    started = time.monotonic()
    yield
    term.line(f"      done in {time.monotonic() - started:.0f}s")


def prepare_models(out: Path, term: Terminal, seed: int = 0, scale: DemoScale = DemoScale()) -> Path:
    """Steps 1 and 2: data, backbone and experts under `out` (reused when present); returns the space."""
    from alloy.branch.data import read_traces
    from alloy.branch.train import BranchSettings, branch
    from alloy.demo.backbone import build_backbone
    from alloy.demo.domains import format_traces, write_domain_data

    data = out / "data"
    traces = {domain: data / "traces" / f"{domain}.jsonl" for domain in DOMAIN_TASKS}
    with stage(term, f"[1/4] data and backbone: {scale.n_train} training and {scale.n_eval} evaluation problems "
                     f"per domain (disjoint), a tiny MoE backbone that knows the formats"):
        if not all(p.is_file() for p in traces.values()) or not all(
                (data / "eval" / f"{task}.jsonl").is_file() for task in DOMAIN_TASKS.values()):
            write_domain_data(data, n_train=scale.n_train, n_eval=scale.n_eval, seed=seed)
        domain_texts = [f"{t.prompt}\n{t.response}" for path in traces.values() for t in read_traces(path)]
        started = time.monotonic()
        build_backbone(out / "backbone", format_traces(scale.n_format, seed), seed=seed, steps=scale.backbone_steps,
                       max_length=512, tokenizer_texts=domain_texts,
                       progress=lambda step, steps, loss: term.bar("backbone", step, steps, started, f"loss {loss:.3f}")
                       if step % 5 == 0 or step == steps else None)
    with stage(term, "[2/4] branch: one expert per domain (Ray Train)"):
        for domain, trace_file in traces.items():
            started = time.monotonic()
            result = branch(out / "backbone", {domain: trace_file}, out / "experts",
                            BranchSettings(epochs=scale.expert_epochs, lr=3e-3, batch_size=8, max_length=512,
                                           num_workers=2, seed=seed, schedule="cosine"))[domain]
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
    from alloy.errors import AlloyError
    from alloy.search.leaderboard import read_leaderboard

    stop = threading.Event()
    started = time.monotonic()

    def finished() -> int:
        try:
            rows = read_leaderboard(sweep).to_pylist()
        except (AlloyError, OSError, ValueError):  # not written yet, or being replaced
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


def run_demo(out: str | Path = "alloy-demo", seed: int = 0, scale: DemoScale = DemoScale()) -> DemoVerdict:
    """The whole demo; returns the verdict it prints."""
    import ray

    from alloy.search.leaderboard import read_leaderboard, render_board, select_rows
    from alloy.search.report import write_report
    from alloy.search.space import load_space
    from alloy.search.sweep import run_sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with quiet(out / LOG_FILE) as term:
        term.line(f"alloy demo: everything goes under {out.resolve()} (library output: {out / LOG_FILE})")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            space = prepare_models(out, term, seed, scale)
            sweep = out / "sweep"
            trials = load_space(space).search.trials
            with stage(term, f"[3/4] sweep: alloy sweep {space} --out {sweep} ({trials} trials, one at a time)"):
                with sweep_progress(term, sweep, trials):
                    run_sweep(space, sweep, resume=(sweep / "study.db").is_file())
        finally:
            ray.shutdown()
        term.line("[4/4] leaderboard (each expert alone is a reference row; scores with 95% intervals)")
        table = read_leaderboard(sweep)
        term.line(render_board(select_rows(table), table))
        term.line(f"report: {write_report(sweep)}")
        result = verdict(sweep)
        term.line(result.render())
        if result.best_trial is not None:
            term.line(f"next: write the best merge as a model folder with\n"
                      f"  alloy export {sweep} {result.best_trial} {out / 'best-merge'}")
        term.line(f"alloy demo finished in {time.monotonic() - started:.0f}s")
    return result
