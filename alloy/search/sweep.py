"""The sweep: Ray Tune runs trials proposed by Optuna (through OptunaSearch) and stops weak ones early
with ASHA over the evaluation rungs; results land in the leaderboard as they come.

A sweep folder holds `space.yaml` (the space, parent paths resolved), `sweep.json` (the study's
storage URL and name), `study.db` (the Optuna study, SQLite by default), `cache/` (scores by recipe
hash and sample count), `tune/` (Ray Tune's experiment state) and `leaderboard.parquet`.

Each trial evaluates its candidate at every rung in turn (reading the cache first) and reports once per
rung; ASHA's time attribute is `asha_t` = reduction_factor ** rung, so its milestones fall exactly on
the rungs whatever their sample counts. Trials that ASHA stops reach Optuna as PRUNED, never COMPLETE.

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
from pathlib import Path
from typing import Any, Iterator

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from alloy.io.atomic import atomic_write_text
from alloy.errors import AlloyError
from alloy.search.cache import ResultCache
from alloy.search.leaderboard import FILENAME, PARAM_PREFIX, Leaderboard, interval_columns
from alloy.search.runner import check_runner, make_runner, prepare_runner
from alloy.search.space import TOKEN_METRICS, SearchSpace, load_space

SPACE_FILE = "space.yaml"
META_FILE = "sweep.json"
TUNE_DIR = "tune"
TRIAL_KEY = "_optuna_trial"          # config key carrying the Optuna trial number into the trainable
CHECKPOINT_PERIOD_S = "1"            # how often Tune saves its experiment state (TUNE_GLOBAL_CHECKPOINT_S)


def run_sweep(space_path: str | Path, out_dir: str | Path, address: str = "local", resume: bool = False,
              storage: str | None = None, num_cpus: int | None = None, check_paths: bool = True) -> Path:
    """Run (or resume) the sweep of a search space into `out_dir`; return the leaderboard path.

    address: "local" starts an embedded Ray (`ray.init(address="local")`); anything else ("auto",
    "ray://host:10001") connects to a running cluster. storage: an SQLAlchemy URL for the Optuna study
    (default: SQLite in the sweep folder). num_cpus: CPUs of the embedded Ray (default: all).
    """
    space = load_space(space_path, check_paths=check_paths)
    check_runner(space)
    out = Path(out_dir).resolve()
    rdb, study_name = _prepare_folder(space, out, resume, storage)

    import ray

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        prepare_runner(space, out)
        with _env(TUNE_GLOBAL_CHECKPOINT_S=CHECKPOINT_PERIOD_S, TUNE_PRINT_ALL_TRIAL_ERRORS="0"):
            tuner = _restored_tuner(space, out) if resume else None
            if tuner is None:
                tuner = _new_tuner(space, out, rdb, study_name, resume)
            if tuner is not None:
                tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return out / FILENAME


# --------------------------------------------------------------------------------------------------
# The sweep folder
def _prepare_folder(space: SearchSpace, out: Path, resume: bool, storage: str | None) -> tuple[Any, str]:
    """Check (resume) or create the sweep folder; return the study storage and the study name."""
    meta_path = out / META_FILE
    if resume:
        if not meta_path.is_file():
            raise AlloyError(f"{out}: no sweep to resume here (no {META_FILE}); start one without --resume")
        saved = (out / SPACE_FILE).read_text()
        if saved != space.to_yaml():
            raise AlloyError(f"{space.source}: this search space differs from the one the sweep in {out} started "
                             f"with ({out / SPACE_FILE}); resume with that file, or start a new sweep")
        meta = json.loads(meta_path.read_text())
        if storage is not None and storage != meta["storage"]:
            raise AlloyError(f"--storage {storage} differs from the study storage of this sweep ({meta['storage']})")
        return _open_storage(meta["storage"]), meta["study_name"]
    if out.exists() and any(out.iterdir()):
        raise AlloyError(f"output folder {out} is not empty; pass --resume to continue its sweep, or choose "
                         f"another --out")
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out / 'study.db'}"
    rdb = _open_storage(url)
    atomic_write_text(out / SPACE_FILE, space.to_yaml())
    atomic_write_text(meta_path, json.dumps({"storage": url, "study_name": space.search.study_name,
                                             "space": space.source, "created": time.time()}, indent=1))
    return rdb, space.search.study_name


def _open_storage(url: str) -> Any:
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # noqa: BLE001 - any driver/URL error becomes a user-facing message
        raise AlloyError(f"cannot open the Optuna study storage {url!r}: {exc}") from None


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
        tune.report({**metrics, "rung": rung, "asha_t": space.search.reduction_factor ** rung,
                     "n_samples": n_samples, "cached": cached, "recipe_hash": candidate.recipe_hash,
                     "baseline": baseline})


def _new_tuner(space: SearchSpace, out: Path, rdb: Any, study_name: str, resume: bool) -> Any:
    """A Tuner for a new sweep (or for a study whose driver died before Tune saved anything); None when
    the study already holds every trial."""
    from ray.tune.search import ConcurrencyLimiter

    searcher = SweepSearch(space, rdb, study_name, enqueue_start=not resume)
    trials = space.search.trials
    if space.search.sampler == "grid":
        trials = min(trials, space.grid_size())
    if resume:  # the study outlived a driver that died before Tune saved its state
        trials -= sum(t.state.is_finished() for t in searcher.study.get_trials(deepcopy=False))
        if trials <= 0:
            print(f"sweep in {out}: every trial is finished; nothing to resume", flush=True)
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
    Tune trial (the driver died before Tune saved it) are handed to the next Tune trials.
    """

    def __init__(self, space: SearchSpace, storage: Any, study_name: str, enqueue_start: bool = True):
        multi = len(space.objectives) > 1
        metric = space.metrics if multi else space.metrics[0]
        mode = [o.mode for o in space.objectives] if multi else space.objectives[0].mode
        points = [p for _, p in space.start_points()] if enqueue_start else None
        super().__init__(space=space.define_by_run, metric=metric, mode=mode, points_to_evaluate=points,
                         sampler=space.create_sampler(), study_name=study_name, storage=storage)
        self._last_rung = len(space.evaluation.rungs) - 1
        self._orphans = self._find_orphans()

    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind this searcher."""
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._orphans:
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
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
        self._orphans = self._find_orphans()

    def _find_orphans(self) -> list[int]:
        known = {t._trial_id for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t._trial_id for t in sorted(running, key=lambda t: t.number) if t._trial_id not in known]


class SweepProgress(tune.Callback):
    """Fills the leaderboard as results arrive and prints one progress line per rung and per trial."""

    def __init__(self, space: SearchSpace, out: Path, total: int):
        self.space = space
        self.out = str(out)
        self.total = total
        self._board: Leaderboard | None = None
        self._references: dict[str, str] = {}
        self._started = time.time()
        self._finished_here = 0

    def setup(self, **info: Any) -> None:
        self._board = Leaderboard.open(Path(self.out) / FILENAME, [{"metric": o.metric, "direction": o.direction}
                                                                   for o in self.space.objectives],
                                       self.space.evaluation.rungs)
        self._references = {self.space.candidate(p).recipe_hash: label for label, p in self.space.start_points()}
        self._started = time.time()
        self._finished_here = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self._row(trial, result["rung"], "running")
        row.update(n_samples=result["n_samples"], cached=bool(result.get("cached")))
        for key in (*self.space.metrics, *interval_columns(self.space.metrics), *TOKEN_METRICS, "merge_s", "eval_s"):
            value = result.get(key)
            row[key] = None if value is None else float(value)
        self._board.upsert(row)
        self._board.write()
        self._print(row, f"rung {row['rung'] + 1}/{len(self.space.evaluation.rungs)} n={row['n_samples']}"
                         f"{' (cached)' if row['cached'] else ''}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_KEY)
        rows = self._board.trial_rows(number)
        if not rows:
            return
        full = rows[-1]["rung"] == len(self.space.evaluation.rungs) - 1
        self._board.set_status(number, "ok" if full else "pruned")
        self._finish(rows[-1], "done" if full else "pruned by ASHA")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_KEY)
        message = _error_message(trial)
        rows = self._board.trial_rows(number)
        rung = rows[-1]["rung"] + 1 if rows else 0
        if rung < len(self.space.evaluation.rungs):
            row = self._row(trial, rung, "failed")
            row.update(n_samples=self.space.evaluation.rungs[rung], cached=False)
            self._board.upsert(row)
        self._board.set_status(number, "failed", message)
        self._finish(self._board.trial_rows(number)[-1], f"FAILED: {message}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        rows = [r for r in self._board.rows() if r["latest"]]
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "pruned", "failed")}
        print(f"sweep finished: {counts['ok']} ok, {counts['pruned']} pruned, {counts['failed']} failed; "
              f"leaderboard {Path(self.out) / FILENAME}", flush=True)

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

    def _finish(self, row: dict, what: str) -> None:
        self._board.write()
        self._finished_here += 1
        self._print(row, what)

    def _print(self, row: dict, what: str) -> None:
        scores = " ".join(f"{m}={_fmt(row.get(m))}" for m in self.space.metrics)
        tokens = "" if "tokens_mean" in self.space.metrics else f" tokens={_fmt(row.get('tokens_mean'))}"
        done = sum(r["latest"] and r["status"] in ("ok", "pruned", "failed") for r in self._board.rows())
        elapsed = time.time() - self._started
        eta = "--"
        if self._finished_here:
            eta = _duration(elapsed / self._finished_here * max(0, self.total - done))
        print(f"trial {row['trial']} [{row['recipe_hash'][:8]}] {what} {scores}{tokens} "
              f"merge {_fmt(row.get('merge_s'))}s eval {_fmt(row.get('eval_s'))}s | {done}/{self.total} trials, "
              f"elapsed {_duration(elapsed)}, ETA {eta}", flush=True)


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
