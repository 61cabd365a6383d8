"""The sweep: Ray Tune runs trials proposed by Optuna (through OptunaSearch) and stops weak ones early
with ASHA over the evaluation rungs; results land in the leaderboard as they come.

A sweep folder holds `space.yaml` (the space, parent paths resolved), `sweep.json` (the study's
storage URL and name), `study.db` (the Optuna study, SQLite by default), `cache/` (scores by recipe
hash and sample count), `tune/` (Ray Tune's experiment state), `.driver.lock` (the driver's lock,
`alloy.search.lock`) and `leaderboard.parquet`. The study is the record of the sweep: its trials and,
as study attributes, every leaderboard row (`alloy.search.records`); the Parquet file is a view
regenerated from it.

A sweep ends with its store actors, workers and pool removed (unless `keep_store`), with exit status
130 and a resume hint when stopped by Ctrl-C (`SweepInterrupted`), and with an AlloyError when every
trial failed. `alloy.log` holds
what Ray and the libraries printed when the sweep runs quietly (`alloy.logs`).

Each trial evaluates its candidate at every rung in turn (reading the cache first) and reports once per
rung; ASHA's time attribute is `asha_t` = reduction_factor ** rung, so its milestones fall exactly on
the rungs whatever their sample counts. Trials that ASHA stops reach Optuna as PRUNED, never COMPLETE.
The starting points and those of `search.warm_start` are enqueued trials, once: when the study holds
no trial yet (a new sweep, or the resume of one whose driver stopped before the first). When
Tune is done, the confirmation stage (alloy.search.confirm) re-scores the best candidates.

Resume (`resume=True`) restores the Tune experiment (`Tuner.restore`) and the same Optuna study. Trials
that were running when the driver died run again under the same trial id; the rungs they had finished
come from the cache. An Optuna trial whose Tune trial was never saved (the driver died between the
two) is adopted by the next Tune trial, so no trial is lost and none appears twice in the study.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from alloy.io.atomic import atomic_write_text
from alloy.logs import LOG_FILE, say
from alloy.errors import AlloyError
from alloy.search.cache import ResultCache
from alloy.search.confirm import confirm_sweep
from alloy.search.leaderboard import FILENAME, PARAM_PREFIX, Leaderboard, rebuild_leaderboard, result_columns
from alloy.workers.local_ray import ray_session
from alloy.search.lock import LOCK_FILE, StudyLease, driver_lock
from alloy.search.records import META_FILE, SweepRecords, open_records, open_storage, read_meta
from alloy.search.runner import (DEFAULT_PLACEMENT_TIMEOUT_S, check_host, check_runner, make_runner,
                                 prepare_runner, teardown_runner)
from alloy.search.samplers import reported_scalar, study_target
from alloy.search.space import SearchSpace, load_space
from alloy.search.warm_start import warm_start_points

SPACE_FILE = "space.yaml"
TUNE_DIR = "tune"
TRIAL_KEY = "_optuna_trial"          # config key carrying the Optuna trial number into the trainable
CHECKPOINT_PERIOD_S = "1"            # how often Tune saves its experiment state (TUNE_GLOBAL_CHECKPOINT_S)


def run_sweep(space_path: str | Path, out_dir: str | Path, address: str = "local", resume: bool = False,
              storage: str | None = None, num_cpus: int | None = None, check_paths: bool = True,
              keep_store: bool = False, placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S) -> Path:
    """Run (or resume) the sweep of a search space into `out_dir`; return the leaderboard path.

    address: "local" starts an embedded Ray (`ray.init(address="local")`); anything else ("auto",
    "ray://host:10001") connects to a running cluster. storage: an SQLAlchemy URL for the Optuna study
    (default: SQLite in the sweep folder). num_cpus: CPUs of the embedded Ray (default: all).
    keep_store: leave the parent stores running at the end (workers and pool always go), so that a
    `--resume` of this sweep does not read the parents again.
    placement_timeout_s: how long to wait for the cluster to offer the workers' resources.

    One driver per sweep: the folder lock (and, for a study storage outside the folder, the study
    lease) is held from the start; another driver's sweep is refused naming it. Raises `SweepInterrupted` on
    Ctrl-C (the sweep can be resumed) and AlloyError when every trial failed.
    """
    space = load_space(space_path, check_paths=check_paths)
    check_runner(space)
    if address == "local":
        check_host(space)
    warm = [] if resume else warm_start_points(space)
    out = Path(out_dir).resolve()
    _check_folder(out, resume)
    with driver_lock(out) as holder:
        url, study_name = _study_location(space, out, resume, storage)
        rdb = open_storage(url)
        lease = StudyLease(rdb, study_name) if url != _folder_storage(out) else None
        if lease is not None:
            lease.acquire(holder)
        try:
            _prepare_folder(space, out, resume, rdb, url, study_name)
            enqueue = not resume or not _holds_trials(rdb, study_name)
            if resume and enqueue:  # the last driver stopped before the study was given its starting points
                warm = warm_start_points(space)
            with ray_session(address, num_cpus):
                try:
                    prepare_runner(space, out, placement_timeout_s)
                    _fit(space, out, rdb, study_name, resume, enqueue, warm)
                    confirm_sweep(space, out, SweepRecords(rdb, study_name))
                finally:
                    teardown_runner(space, out, keep_store)
        except KeyboardInterrupt:
            raise SweepInterrupted(_resume_hint(space, out, "interrupted")) from None
        finally:
            if lease is not None:
                lease.release()
        return _conclude(space, out, rdb, study_name)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before its budget was spent (Ctrl-C); the message says how to resume it."""


def cleanup_sweep(out_dir: str | Path, address: str = "auto") -> list[str]:
    """Remove a sweep's actors (parent stores, workers, pool) from a running cluster; return their names.

    Refused while the sweep's driver runs (it holds the folder lock and removes them itself)."""
    out = Path(out_dir).resolve()
    if not (out / SPACE_FILE).is_file():
        raise AlloyError(f"{out}: not a sweep folder (no {SPACE_FILE}); give the --out folder of `alloy sweep`")
    with driver_lock(out):
        space = load_space(out / SPACE_FILE, check_paths=False)
        with ray_session(address):
            return teardown_runner(space, out)


def _fit(space: SearchSpace, out: Path, rdb: Any, study_name: str, resume: bool, enqueue: bool,
         warm: list) -> None:
    with _env(TUNE_GLOBAL_CHECKPOINT_S=CHECKPOINT_PERIOD_S, TUNE_PRINT_ALL_TRIAL_ERRORS="0"):
        tuner = _restored_tuner(space, out) if resume else None
        if tuner is None:
            tuner = _new_tuner(space, out, rdb, study_name, resume, enqueue, warm)
        if tuner is not None:
            tuner.fit()


def _conclude(space: SearchSpace, out: Path, rdb: Any, study_name: str) -> Path:
    """After Tune returned: the leaderboard when the budget is spent and a trial succeeded;
    SweepInterrupted when trials are missing (Tune stops on Ctrl-C without raising); AlloyError when
    every trial failed."""
    study = optuna.load_study(study_name=study_name, storage=rdb)
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    if finished < _budget(space):
        raise SweepInterrupted(_resume_hint(space, out, f"stopped after {finished} of {_budget(space)} trials"))
    path = rebuild_leaderboard(out)
    latest = {r["trial"]: r for r in SweepRecords(rdb, study_name).rows()}  # rows by rung: the last wins
    counts = {s: sum(r["status"] == s for r in latest.values()) for s in ("ok", "pruned", "failed")}
    if counts["failed"] and counts["failed"] == len(latest):
        first = min(latest.values(), key=lambda r: r["trial"])
        raise AlloyError(f"every trial of the sweep in {out} failed ({counts['failed']} of {len(latest)}); "
                         f"trial {first['trial']}: {first['error']} (all errors: `alloy board {out}`)")
    say(f"sweep finished: {counts['ok']} ok, {counts['pruned']} pruned, {counts['failed']} failed; "
        f"leaderboard {path}")
    return path


def _budget(space: SearchSpace) -> int:
    """How many trials the sweep runs."""
    trials = space.search.trials
    return min(trials, space.grid_size()) if space.search.sampler == "grid" else trials


def _resume_hint(space: SearchSpace, out: Path, what: str) -> str:
    return (f"sweep {what}; nothing is lost: resume it with `alloy sweep {space.source} --out {out} --resume`")


# --------------------------------------------------------------------------------------------------
# The sweep folder
def _check_folder(out: Path, resume: bool) -> None:
    """Refuse a folder that cannot hold this sweep before taking its lock (which creates a file in it)."""
    if resume and not (out / META_FILE).is_file():
        raise AlloyError(f"{out}: no sweep to resume here (no {META_FILE}); start one without --resume")
    if not resume and out.exists() and not (out / LOCK_FILE).exists():
        _refuse_non_empty(out)


def _refuse_non_empty(out: Path) -> None:
    if any(p.name not in (LOCK_FILE, LOG_FILE) for p in out.iterdir()):
        raise AlloyError(f"output folder {out} is not empty; pass --resume to continue its sweep, or choose "
                         f"another --out")


def _folder_storage(out: Path) -> str:
    """The default study storage: SQLite in the sweep folder."""
    return f"sqlite:///{out / 'study.db'}"


def _study_location(space: SearchSpace, out: Path, resume: bool, storage: str | None) -> tuple[str, str]:
    """The study's storage URL and name (checked against the sweep's on resume), before anything is
    written."""
    if not resume:
        _refuse_non_empty(out)  # again: another driver may have filled it before this one took the lock
        return storage or _folder_storage(out), space.search.study_name
    saved = (out / SPACE_FILE).read_text()
    if saved != space.to_yaml():
        raise AlloyError(f"{space.source}: this search space differs from the one the sweep in {out} started "
                         f"with ({out / SPACE_FILE}); resume with that file, or start a new sweep")
    meta = read_meta(out)
    if storage is not None and storage != meta["storage"]:
        raise AlloyError(f"--storage {storage} differs from the study storage of this sweep ({meta['storage']})")
    return meta["storage"], meta["study_name"]


def _prepare_folder(space: SearchSpace, out: Path, resume: bool, rdb: Any, url: str, name: str) -> None:
    """Create the sweep's study (or load it, on resume) and, for a new sweep, its folder files."""
    records = _open_study(space, rdb, name)
    if resume:
        if not records.rows() and (out / FILENAME).is_file():  # a sweep started before the study held its rows
            for row in Leaderboard.open(out / FILENAME, records.schema()["objectives"], space.evaluation.rungs).rows():
                records.put(row)
        return
    atomic_write_text(out / SPACE_FILE, space.to_yaml())
    atomic_write_text(out / META_FILE, json.dumps({"storage": url, "study_name": name,
                                                   "space": space.source, "created": time.time()}, indent=1))


def _holds_trials(rdb: Any, name: str) -> bool:
    """Whether the study holds any trial (one that ran, runs or waits in the queue)."""
    return rdb.get_n_trials(rdb.get_study_id_from_name(name)) > 0


def _open_study(space: SearchSpace, rdb: Any, name: str) -> SweepRecords:
    """Create (or load) the sweep's Optuna study and record the leaderboard's schema in it."""
    optuna.create_study(storage=rdb, study_name=name, directions=space.directions, load_if_exists=True)
    records = SweepRecords(rdb, name)
    records.set_schema([{"metric": o.metric, "direction": o.direction} for o in space.objectives],
                       space.evaluation.rungs)
    return records


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------------
# Ray Tune wiring
def evaluate_trial(config: dict, space: SearchSpace, sweep_dir: str) -> None:
    """The Tune trainable: evaluate one candidate rung by rung, reporting after each rung."""
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    candidate = space.candidate(params)
    baseline = any(candidate.recipe_hash == space.candidate(p).recipe_hash for _, p in space.start_points())
    cache = ResultCache(Path(sweep_dir) / "cache")
    runner = None
    for rung, n_samples in enumerate(space.evaluation.rungs):
        metrics = cache.get(candidate.recipe_hash, n_samples)
        cached = metrics is not None
        if not cached:
            runner = runner or make_runner(space, sweep_dir)
            metrics = dict(runner.run(candidate.recipe, candidate.recipe_hash, n_samples))
            missing = [m for m in space.metrics if m not in metrics]
            if missing:
                raise RuntimeError(f"runner '{space.evaluation.runner}' returned no {missing} "
                                   f"(it returned {sorted(metrics)})")
            cache.put(candidate.recipe_hash, n_samples, metrics)
        tune.report({**metrics, **reported_scalar(space, metrics), "rung": rung,
                     "asha_t": space.search.reduction_factor ** rung,
                     "n_samples": n_samples, "cached": cached, "recipe_hash": candidate.recipe_hash,
                     "baseline": baseline})


def _new_tuner(space: SearchSpace, out: Path, rdb: Any, study_name: str, resume: bool, enqueue: bool,
               warm: list[dict]) -> Any:
    """A Tuner for a new sweep (or for a study whose driver died before Tune saved anything); None when
    the study already holds every trial. `enqueue`: give the study the starting points and `warm`'s
    (search.warm_start)."""
    from ray.tune.search import ConcurrencyLimiter

    searcher = SweepSearch(space, rdb, study_name, enqueue_start=enqueue, warm=warm)
    trials = space.search.trials
    if space.search.sampler == "grid":
        trials = min(trials, space.grid_size())
    if resume:  # the study outlived a driver that died before Tune saved its state
        trials -= sum(t.state.is_finished() for t in searcher.study.get_trials(deepcopy=False))
        if trials <= 0:
            say(f"sweep in {out}: every trial is finished; nothing to resume")
            return None
    return tune.Tuner(
        _trainable(space, out),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=space.search.concurrency),
            scheduler=_scheduler(space), num_samples=trials, reuse_actors=True,
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(out), verbose=0, callbacks=[SweepProgress(space, out, trials)],
            failure_config=tune.FailureConfig(max_failures=space.search.retries)),
    )


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get(TRIAL_KEY)}_{trial.trial_id}"


def _restored_tuner(space: SearchSpace, out: Path) -> Any:
    path = out / TUNE_DIR
    if not tune.Tuner.can_restore(str(path)):
        return None
    return tune.Tuner.restore(str(path), trainable=_trainable(space, out), resume_unfinished=True,
                              resume_errored=False, restart_errored=False)


def _trainable(space: SearchSpace, out: Path) -> Any:
    from alloy.search.runner import trial_resources

    return tune.with_resources(tune.with_parameters(evaluate_trial, space=space, sweep_dir=str(out)),
                               trial_resources(space))


def _scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    rungs = space.evaluation.rungs
    if not space.search.prune or len(rungs) < 2:
        return FIFOScheduler()
    rf = space.search.reduction_factor
    mode = next(o.mode for o in space.objectives if o.metric == space.search.prune_metric)
    class BaselineASHA(ASHAScheduler):
        """ASHA that never stops a starting point (a parent alone, the uniform mix): those are the
        baselines every candidate is compared with, so they are scored at every rung."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            return self.CONTINUE if result.get("baseline") else decision

    return BaselineASHA(time_attr="asha_t", metric=space.search.prune_metric, mode=mode,
                        max_t=rf ** (len(rungs) - 1), grace_period=1, reduction_factor=rf, brackets=1)




# --------------------------------------------------------------------------------------------------
class SweepSearch(OptunaSearch):
    """OptunaSearch over a search space that tells Optuna the truth about early-stopped trials.

    A trial reaches Optuna as COMPLETE only with its last-rung scores; one that ASHA stopped earlier
    is PRUNED (with its intermediate values, for one objective), one that raised is FAIL. The config
    of each trial carries its Optuna trial number. After a restore, Optuna trials left RUNNING with no
    Tune trial (the driver died before Tune saved it, or between saving this searcher and saving its
    trials) are handed to the next Tune trials.
    """

    def __init__(self, space: SearchSpace, storage: Any, study_name: str, enqueue_start: bool = True,
                 warm: list[dict] = ()):
        metric, mode = study_target(space)
        start = [*(p for _, p in space.start_points()), *warm]
        super().__init__(space=space.define_by_run, metric=metric, mode=mode,
                         points_to_evaluate=start if enqueue_start else None,
                         sampler=space.create_sampler(list(warm) or start),
                         study_name=study_name, storage=storage)
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([metric] if isinstance(metric, str) else list(metric))  # optuna-dashboard
        self._last_rung = len(space.evaluation.rungs) - 1
        self._orphans = self._find_orphans()
        self._budget = _budget(space)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind this searcher."""
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._orphans:
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
        elif trial_id not in self._ot_trials and self._started_trials() >= self._budget:
            # Tune saves its state a moment behind the study: after a kill it may not know trials the
            # study already finished, and would otherwise start more than the budget
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if config is not None:
            config[TRIAL_KEY] = self._ot_trials[trial_id].number
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._told(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        if self._told(trial_id):
            return
        ot_trial = self._ot_trials[trial_id]
        state, values = optuna.trial.TrialState.PRUNED, None
        if error:
            state = optuna.trial.TrialState.FAIL
        elif result and result.get("rung") == self._last_rung:
            state = optuna.trial.TrialState.COMPLETE
            values = [float(result[m]) for m in self.metric] if isinstance(self.metric, list) \
                else float(result[self.metric])
        if result and "recipe_hash" in result:
            ot_trial.set_user_attr("recipe_hash", result["recipe_hash"])
            ot_trial.set_user_attr("rung", result.get("rung"))
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except (ValueError, RuntimeError) as exc:  # e.g. a NaN score: Optuna records the trial as failed
            _LOG.warning("Optuna did not accept trial %s: %s", ot_trial.number, exc)

    def _told(self, trial_id: str) -> bool:
        """Whether Optuna already has the outcome of this trial (told before the driver died, after
        which Tune ran the trial again from the cache)."""
        ot_trial = self._ot_trials.get(trial_id)
        return ot_trial is None or self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._forget_unsaved_trials(Path(checkpoint_path).parent)
        self._orphans = self._find_orphans()

    def _forget_unsaved_trials(self, folder: Path) -> None:
        """Forget the Tune trials this searcher handed a study trial to that Tune's saved experiment in
        `folder` (its newest `experiment_state-*.json`) does not hold, while that study trial is unfinished.

        Tune writes the searcher's state and its own trials one after the other. A driver killed between
        the two leaves a study trial RUNNING that the searcher knows but no restored Tune trial will run
        (seen once in a kill-and-resume test under load: the resumed sweep then ended one trial short).
        Forgotten, it is an orphan and goes to the next new Tune trial."""
        states = sorted(folder.glob("experiment_state-*.json"))
        if not states:
            return
        try:
            saved = {json.loads(trial)["trial_id"] for trial, _ in json.loads(states[-1].read_text())["trial_data"]}
        except (OSError, ValueError, KeyError, TypeError):  # another layout: keep what the searcher knows
            return
        for trial_id in [t for t in self._ot_trials if t not in saved and not self._told(t)]:
            del self._ot_trials[trial_id]

    def _started_trials(self) -> int:
        """Trials of the study that were started (all but the enqueued ones still waiting)."""
        return sum(t.state != optuna.trial.TrialState.WAITING for t in self._ot_study.get_trials(deepcopy=False))

    def _find_orphans(self) -> list[int]:
        known = {t._trial_id for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t._trial_id for t in sorted(running, key=lambda t: t.number) if t._trial_id not in known]


class SweepProgress(tune.Callback):
    """Records every result in the study (`SweepRecords`), regenerates the leaderboard file from it,
    and prints one progress line per rung and per trial."""

    def __init__(self, space: SearchSpace, out: Path, total: int):
        self.space = space
        self.out = str(out)
        self.total = total
        self._records: SweepRecords | None = None
        self._board: Leaderboard | None = None
        self._references: dict[str, str] = {}
        self._started = time.time()
        self._finished_here = 0

    def setup(self, **info: Any) -> None:
        self._records = open_records(self.out)
        self._board = Leaderboard.from_records(Path(self.out) / FILENAME, self._records)
        self._references = {self.space.candidate(p).recipe_hash: label for label, p in self.space.start_points()}
        self._started = time.time()
        self._finished_here = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial, result["rung"], "running")
        row.update(n_samples=result["n_samples"], cached=bool(result.get("cached")))
        row.update(result_columns(self.space.metrics, result))
        self._records.put(row)
        self._write_view()
        self._print(row, f"rung {row['rung'] + 1}/{len(self.space.evaluation.rungs)} n={row['n_samples']}"
                         f"{' (cached)' if row['cached'] else ''}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_KEY)
        rows = self._board.trial_rows(number)
        if not rows:
            return
        full = rows[-1]["rung"] == len(self.space.evaluation.rungs) - 1
        self._set_status(rows, "ok" if full else "pruned")
        self._finish(number, "done" if full else "pruned by ASHA")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_KEY)
        message = _error_message(trial)
        rows = self._board.trial_rows(number)
        rung = rows[-1]["rung"] + 1 if rows else 0
        if rung < len(self.space.evaluation.rungs):
            row = self._row(trial, rung, "failed")
            row.update(n_samples=self.space.evaluation.rungs[rung], cached=False)
            rows = [*rows, row]
        self._set_status(rows, "failed", message)
        self._finish(number, f"FAILED: {message}")

    # ----------------------------------------------------------------------------------------------
    def _row(self, trial: Any, rung: int, status: str) -> dict:
        params = {k: v for k, v in trial.config.items() if not k.startswith("_")}
        candidate = self.space.candidate(params)
        row = {"trial": trial.config.get(TRIAL_KEY), "trial_id": trial.trial_id,
               "recipe_hash": candidate.recipe_hash, "recipe": candidate.canonical_json, "status": status,
               "error": None, "rung": int(rung), "reference": self._references.get(candidate.recipe_hash),
               "finished_at": time.time()}
        row.update({PARAM_PREFIX + k: v for k, v in candidate.coefficients.items()})
        return row

    def _set_status(self, rows: list[dict], status: str, error: str | None = None) -> None:
        for row in rows:
            self._records.put({**row, "status": status, "error": error if error is not None else row.get("error")})

    def _write_view(self) -> None:
        """Regenerate the leaderboard file from the study."""
        self._board = Leaderboard.from_records(Path(self.out) / FILENAME, self._records)
        self._board.write()

    def _finish(self, number: int, what: str) -> None:
        self._write_view()
        self._finished_here += 1
        self._print(self._board.trial_rows(number)[-1], what)

    def _print(self, row: dict, what: str) -> None:
        scores = " ".join(f"{m}={_fmt(row.get(m))}" for m in self.space.metrics)
        tokens = "" if "tokens_mean" in self.space.metrics else f" tokens={_fmt(row.get('tokens_mean'))}"
        done = sum(r["latest"] and r["status"] in ("ok", "pruned", "failed") for r in self._board.rows())
        elapsed = time.time() - self._started
        eta = "--"
        if self._finished_here:
            eta = _duration(elapsed / self._finished_here * max(0, self.total - done))
        say(f"trial {row['trial']} [{row['recipe_hash'][:8]}] {what} {scores}{tokens} "
            f"merge {_fmt(row.get('merge_s'))}s eval {_fmt(row.get('eval_s'))}s | {done}/{self.total} trials, "
            f"elapsed {_duration(elapsed)}, ETA {eta}")


_LOG = logging.getLogger(__name__)


def _error_message(trial: Any) -> str:
    """The last line of a failed trial's traceback (the exception and its message)."""
    local = trial.error_file
    text = Path(local).read_text() if local and Path(local).is_file() else trial.get_error() or ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "the trial failed (no error text recorded)"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
