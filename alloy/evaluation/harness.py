"""Scoring models with lm-eval on alloy's tasks: scores, output-token statistics, nested-rung reuse.

`TaskSuite.load` resolves task names in the `evaluators/` folder (cheap checks first: unknown task,
missing data file, code execution not allowed), then builds lm-eval Task objects once, with their
documents processed once. `RungEvaluator` runs `lm_eval.simple_evaluate` on a resident model for
explicit document indices and caches every per-sample result under (child_key, task, doc index,
repeat), so that successive-halving rungs only score the documents they add: rung n scores docs
0..n-1 (each task orders its docs in a fixed seeded order, so these are nested subsets), rung 2n
then scores docs n..2n-1 and reuses the rest. `evaluate` is the one-shot form.

Repeats sample each question several times, each with its own seeded generator per request (see
`request_seed`), so results are reproducible; a task that decodes greedily is switched to sampling
(temperature 0.6, top-p 0.95 unless given) when repeats > 1. A task's score for a metric is the mean
of its per-sample values over documents and repeats (alloy's metrics are per-sample means). From the
samples' correctness (the task's first metric) every task also reports `avg@n` (n = repeats) and the
unbiased `pass@k` for k in (1, 5, 10) up to n (`alloy.evaluation.passk`), with pass@k intervals
from a bootstrap over questions.
"""
from __future__ import annotations

import contextlib
import os
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Iterator, Mapping, Sequence

from alloy.errors import AlloyError
from alloy.evaluation.intervals import bootstrap, score_interval
from alloy.evaluation.passk import PASS_KS, pass_at_k
from alloy.resources import shipped_folder

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

EVALUATORS_ENV = "ALLOY_EVALUATORS"
REPEAT_TEMPERATURE = 0.6
REPEAT_TOP_P = 0.95
_MAX_TOKEN_ALIASES = ("max_new_tokens", "max_tokens", "max_completion_tokens")


def evaluators_dir(path: str | Path | None = None) -> Path:
    """The lm-eval task folder: `path` if given, else $ALLOY_EVALUATORS, else the `evaluators/` shipped
    with alloy (inside the installed package, or at the top of a source checkout)."""
    if path is None:
        path = os.environ.get(EVALUATORS_ENV) or shipped_folder("evaluators")
    folder = Path(path)
    if not folder.is_dir():
        raise AlloyError(f"evaluation task folder {folder} does not exist; pass the evaluators folder "
                         f"explicitly or set {EVALUATORS_ENV}")
    return folder


@contextlib.contextmanager
def code_execution(allowed: bool) -> Iterator[None]:
    """Opt in to sandboxed execution of model-written code for the duration of the block."""
    from alloy.sandbox import OPT_IN_ENV

    if not allowed:
        yield
        return
    previous = os.environ.get(OPT_IN_ENV)
    os.environ[OPT_IN_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(OPT_IN_ENV, None)
        else:
            os.environ[OPT_IN_ENV] = previous


@dataclass
class TaskSuite:
    """lm-eval tasks ready to run: the TaskManager over the evaluators folder and one Task per name."""

    names: tuple[str, ...]
    manager: "TaskManager"
    specs: dict[str, dict[str, Any]]
    tasks: dict[str, "Task"] = field(default_factory=dict)
    allow_code_execution: bool = False

    @classmethod
    def resolve(cls, tasks: Sequence[str] | str, *, evaluators: str | Path | None = None,
                data_dir: str | Path | None = None, allow_code_execution: bool = False) -> "TaskSuite":
        """Check the task names, their local data files and the code-execution opt-in, reading only
        the task YAML files; `load()` then builds the tasks (reads their documents)."""
        from lm_eval.tasks import TaskManager
        from lm_eval.tasks._index import Kind

        from alloy.evaluation.datasets import task_spec

        names = tuple(t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip())
        if not names:
            raise AlloyError("no evaluation tasks given; name at least one (e.g. aime24,gpqa_diamond)")
        if len(set(names)) != len(names):
            raise AlloyError(f"evaluation tasks {list(names)} name a task twice; list each task once")
        folder = evaluators_dir(evaluators)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        specs = {}
        for name in names:
            entry = manager.task_index.get(name)
            if entry is None or entry.kind not in (Kind.TASK, Kind.PY_TASK) or entry.yaml_path is None:
                raise AlloyError(f"unknown evaluation task {name!r} in {folder}; available tasks: "
                                 f"{', '.join(manager.all_subtasks) or 'none'}")
            specs[name] = task_spec(name, manager, _data_overrides(name, data_dir))
            if specs[name].get("unsafe_code") and not allow_code_execution:
                raise AlloyError(f"task {name!r} runs model-written code (in alloy's sandbox); allow it "
                                 "explicitly with allow_code_execution=True (alloy eval --allow-code-execution)")
        return cls(names=names, manager=manager, specs=specs, allow_code_execution=allow_code_execution)

    @classmethod
    def load(cls, tasks: Sequence[str] | str, **kwargs) -> "TaskSuite":
        """`resolve` then build every Task (reads the documents; a code task checks the sandbox)."""
        suite = cls.resolve(tasks, **kwargs)
        with code_execution(suite.allow_code_execution):
            loaded = suite.manager.load([suite.specs[name] for name in suite.names])["tasks"]
        suite.tasks = {name: loaded[name] for name in suite.names}
        for task in suite.tasks.values():
            _process_docs_once(task)
        return suite

    def size(self, name: str) -> int:
        """Number of documents of task `name`."""
        return len(self.tasks[name].eval_docs)


def _process_docs_once(task: "Task") -> None:
    """Keep the task's processed documents (alloy's seeded order) as its test split. lm-eval runs
    `process_docs` on every look at the documents, several times per evaluation, each time rebuilding
    the ordered dataset."""
    split = task.config.test_split
    if split and task.config.process_docs is not None:
        task.dataset[split] = task.test_docs()
        task.config.process_docs = None


def _data_overrides(task: str, data_dir: str | Path | None) -> dict[str, Any]:
    """Local-data overrides of an alloy task: `data_dir`, else $ALLOY_DATA_DIR (checked now)."""
    from alloy.evaluation.datasets import TASKS, data_dir_of, task_overrides

    folder = data_dir_of(data_dir)
    return task_overrides(task, folder) if folder is not None and task in TASKS else {}


@dataclass(frozen=True)
class TokenStats:
    """Summary of token counts: mean, median, 90th percentile (linear interpolation), max, total."""

    count: int
    mean: float
    median: float
    p90: float
    max: int
    total: int

    @classmethod
    def of(cls, values: Sequence[int]) -> "TokenStats":
        """Statistics of `values` (all zero when empty)."""
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0, 0)
        ordered = sorted(values)
        rank = 0.9 * (len(ordered) - 1)
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        p90 = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        return cls(count=len(ordered), mean=float(statistics.fmean(ordered)),
                   median=float(statistics.median(ordered)), p90=float(p90), max=ordered[-1], total=sum(ordered))


@dataclass
class SampleRecord:
    """One document answered once (one repeat): its metric values, texts and token counts.

    `metrics` is keyed by metric name, or "metric,filter" when a task has several filters;
    `response` is what the task scored, `extracted` the filtered answer where a filter changed it,
    `completion` the whole continuation (thinking included, special tokens kept); `correct` is
    whether the task's first metric reached 1.
    """

    task: str
    doc_id: int
    repeat: int
    metrics: dict[str, float]
    correct: bool | None
    prompt: str
    response: str
    extracted: str | None
    target: str
    completion: str
    output_tokens: int
    thinking_tokens: int
    waits: int
    thinking_capped: bool
    finish: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy."""
        return asdict(self)


@dataclass
class TaskResult:
    """Scores and token statistics of one task over the scored documents and repeats.

    `intervals` holds a 95% interval (lo, hi) per score, over questions
    (alloy.evaluation.intervals.score_interval), and `questions` the per-question values it is taken
    over (each the mean over the repeats), by document id: what paired comparisons of two candidates
    on the same questions resample.
    """

    task: str
    scores: dict[str, float]
    n_samples: int
    repeats: int
    output_tokens: TokenStats
    thinking_tokens: TokenStats
    samples: list[SampleRecord] | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    questions: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (samples only when they were logged)."""
        out = {"task": self.task, "scores": dict(self.scores),
               "intervals": {m: list(v) for m, v in self.intervals.items()},
               "questions": {m: list(v) for m, v in self.questions.items()}, "n_samples": self.n_samples,
               "repeats": self.repeats, "output_tokens": asdict(self.output_tokens),
               "thinking_tokens": asdict(self.thinking_tokens)}
        if self.samples is not None:
            out["samples"] = [s.to_dict() for s in self.samples]
        return out


@dataclass
class EvalResult:
    """Per-task results plus token statistics pooled over all tasks, and the evaluation settings."""

    tasks: dict[str, TaskResult]
    output_tokens: TokenStats
    thinking_tokens: TokenStats
    config: dict[str, Any]

    def metrics(self) -> dict[str, Any]:
        """A flat view: "task/metric" scores with their intervals ("task/metric.lo", ".hi") and
        per-question values ("task/metric.questions", a list), "task/n_samples" (the questions scored),
        "task/output_tokens_mean" (and median, p90, thinking), and pooled "output_tokens_mean",
        "output_tokens_p90", "thinking_tokens_mean"."""
        flat: dict[str, Any] = {}
        for name, result in self.tasks.items():
            flat[f"{name}/n_samples"] = result.n_samples
            for metric, value in result.scores.items():
                flat[f"{name}/{metric}"] = value
                if metric in result.intervals:
                    flat[f"{name}/{metric}.lo"], flat[f"{name}/{metric}.hi"] = result.intervals[metric]
                if metric in result.questions:
                    flat[f"{name}/{metric}.questions"] = list(result.questions[metric])
            for kind, stats in (("output_tokens", result.output_tokens), ("thinking_tokens", result.thinking_tokens)):
                flat[f"{name}/{kind}_mean"] = stats.mean
                flat[f"{name}/{kind}_median"] = stats.median
                flat[f"{name}/{kind}_p90"] = stats.p90
        for kind, stats in (("output_tokens", self.output_tokens), ("thinking_tokens", self.thinking_tokens)):
            flat[f"{kind}_mean"] = stats.mean
            flat[f"{kind}_median"] = stats.median
            flat[f"{kind}_p90"] = stats.p90
        return flat

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy."""
        return {"tasks": {name: result.to_dict() for name, result in self.tasks.items()},
                "output_tokens": asdict(self.output_tokens), "thinking_tokens": asdict(self.thinking_tokens),
                "config": dict(self.config)}


def summarize(records: Mapping[str, Sequence[SampleRecord]], repeats: int, config: dict[str, Any],
              log_samples: bool) -> EvalResult:
    """Aggregate per-sample records (per task) into an EvalResult."""
    tasks = {}
    for name, rows in records.items():
        values: dict[str, list[float]] = defaultdict(list)
        per_question: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            for metric, value in row.metrics.items():
                values[metric].append(value)
                per_question[metric][row.doc_id].append(value)
        questions = {metric: [float(statistics.fmean(by_doc[doc])) for doc in sorted(by_doc)]
                     for metric, by_doc in per_question.items()}
        intervals = {metric: score_interval(v, repeats) for metric, v in questions.items()}
        scores = {metric: float(statistics.fmean(v)) for metric, v in values.items()}
        _add_repeat_scores(rows, repeats, scores, intervals, questions)
        tasks[name] = TaskResult(
            task=name, scores=scores, intervals=intervals, questions=questions,
            n_samples=len({row.doc_id for row in rows}), repeats=repeats,
            output_tokens=TokenStats.of([row.output_tokens for row in rows]),
            thinking_tokens=TokenStats.of([row.thinking_tokens for row in rows]),
            samples=list(rows) if log_samples else None)
    pooled = [row for rows in records.values() for row in rows]
    return EvalResult(tasks=tasks, output_tokens=TokenStats.of([r.output_tokens for r in pooled]),
                      thinking_tokens=TokenStats.of([r.thinking_tokens for r in pooled]), config=config)


def _add_repeat_scores(rows: Sequence[SampleRecord], repeats: int, scores: dict[str, float],
                       intervals: dict[str, tuple[float, float]], questions: dict[str, list[float]]) -> None:
    """avg@n and pass@k (k <= n) of one task from its samples' correctness, with their intervals and
    per-question values, unless a metric of that name is already a per-sample metric (livecodebench's
    pass@1)."""
    correct: dict[int, list[bool]] = defaultdict(list)
    for row in rows:
        if row.correct is not None:
            correct[row.doc_id].append(row.correct)
    if not correct:
        return
    by_doc = [correct[doc] for doc in sorted(correct)]
    average = [sum(flags) / len(flags) for flags in by_doc]
    if f"avg@{repeats}" not in scores:
        scores[f"avg@{repeats}"] = float(statistics.fmean(average))
        intervals[f"avg@{repeats}"] = score_interval(average, repeats)
        questions[f"avg@{repeats}"] = average
    for k in PASS_KS:
        metric = f"pass@{k}"
        if k > repeats or metric in scores:
            continue
        per_question = [pass_at_k(len(flags), sum(flags), k) for flags in by_doc]
        scores[metric] = float(statistics.fmean(per_question))
        intervals[metric] = score_interval(per_question, repeats) if k == 1 else bootstrap(per_question)
        questions[metric] = per_question


class RungEvaluator:
    """Scores children held in one resident model on the first n docs of each task, with reuse.

    `model` is a transformers model (wrapped in `ThinkingHFLM` with `tokenizer` and the budget
    settings) or an alloy LM built beforehand (`ThinkingHFLM`, `ThinkingVLLM`; then `tokenizer` is
    None and budget forcing is the LM's own). `tasks` is a list of task names or a loaded TaskSuite.
    `score(child_key, n)` evaluates only the (task, doc, repeat) triples not yet cached for
    `child_key`; overwrite the model's weights between children and give each child its own key.
    """

    def __init__(self, model, tokenizer, tasks: Sequence[str] | str | TaskSuite, *, max_gen_toks: int,
                 repeats: int = 1, seed: int = 0, data_dir: str | Path | None = None,
                 evaluators: str | Path | None = None, max_thinking_tokens: int | None = None,
                 min_thinking_tokens: int | None = None, wait_extensions: int = 0, batch_size: int = 1,
                 temperature: float | None = None, top_p: float | None = None,
                 apply_chat_template: bool | None = None, system_instruction: str | None = None,
                 think_start: str | None = None, think_end: str | None = None,
                 allow_code_execution: bool = False, log_samples: bool = False):
        from lm_eval.api.model import LM

        from alloy.evaluation.lm import BudgetForcing, ThinkingHFLM

        if not isinstance(repeats, int) or repeats < 1:
            raise AlloyError(f"repeats must be a positive integer, got {repeats!r}")
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise AlloyError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
        budget = BudgetForcing(max_thinking_tokens=max_thinking_tokens, min_thinking_tokens=min_thinking_tokens,
                               wait_extensions=wait_extensions)
        budget.check_generation_budget(max_gen_toks)
        if isinstance(model, LM):
            if budget.active or think_start is not None or think_end is not None:
                raise AlloyError("budget forcing and thinking delimiters are settings of the LM when a "
                                 "prebuilt LM is evaluated; set them when building it")
            self.lm = model
        else:
            if tokenizer is None:
                raise AlloyError("evaluating a transformers model needs its tokenizer")
            self.lm = ThinkingHFLM(model, tokenizer, max_gen_toks=max_gen_toks, batch_size=batch_size,
                                   budget=budget, think_start=think_start, think_end=think_end, seed=seed)
        self.lm.seed = seed
        self.suite = tasks if isinstance(tasks, TaskSuite) else TaskSuite.load(
            tasks, evaluators=evaluators, data_dir=data_dir, allow_code_execution=allow_code_execution)
        if not self.suite.tasks:
            raise AlloyError("the TaskSuite was resolved but not loaded; use TaskSuite.load")
        self.repeats = repeats
        self.seed = seed
        self.log_samples = log_samples
        self.system_instruction = system_instruction
        if apply_chat_template is None:
            apply_chat_template = bool(getattr(self.lm.tokenizer, "chat_template", None))
        self.apply_chat_template = apply_chat_template
        self._generation = {name: _generation_kwargs(name, task, max_gen_toks, repeats, temperature, top_p)
                            for name, task in self.suite.tasks.items()}
        budget = getattr(self.lm, "budget", budget)
        self.config = {"tasks": list(self.suite.names), "repeats": repeats, "seed": seed,
                       "max_gen_toks": max_gen_toks, "max_thinking_tokens": budget.max_thinking_tokens,
                       "min_thinking_tokens": budget.min_thinking_tokens, "wait_extensions": budget.wait_extensions,
                       "apply_chat_template": apply_chat_template, "temperature": temperature, "top_p": top_p,
                       "backend": type(self.lm).__name__}
        self._cache: dict[tuple[Hashable, str, int, int], SampleRecord] = {}
        collect_environment_once()

    @property
    def task_sizes(self) -> dict[str, int]:
        """Number of documents of each task."""
        return {name: self.suite.size(name) for name in self.suite.names}

    def score(self, child_key: Hashable, n: int | Mapping[str, int] | None = None,
              repeats: range | None = None) -> EvalResult:
        """Scores of child `child_key` on the first n docs of each task (all docs when None; a
        mapping gives n per task; n is clipped to the task's size), evaluating only what is missing.

        `repeats` are the repeat indices to score (default `range(self.repeats)`); other indices are
        new, independent draws of each sampled question (the confirmation stage scores those), decoded
        as the evaluator's own repeats are.
        """
        wanted = self._doc_counts(n)
        repeats = range(self.repeats) if repeats is None else repeats
        if not isinstance(repeats, range) or not len(repeats) or repeats.start < 0:
            raise AlloyError(f"repeats must be a non-empty range of repeat indices, got {repeats!r}")
        for repeat in repeats:
            missing = {name: [d for d in range(count) if (child_key, name, d, repeat) not in self._cache]
                       for name, count in wanted.items()}
            missing = {name: docs for name, docs in missing.items() if docs}
            if missing:
                for record in self._run(missing, repeat):
                    self._cache[(child_key, record.task, record.doc_id, repeat)] = record
        records = {name: [self._cache[(child_key, name, d, r)] for d in range(count) for r in repeats]
                   for name, count in wanted.items()}
        config = dict(self.config, limit={name: count for name, count in wanted.items()}, repeats=len(repeats),
                      first_repeat=repeats.start)
        return summarize(records, len(repeats), config, self.log_samples)

    def forget(self, child_key: Hashable) -> None:
        """Drop every cached result of `child_key`."""
        for key in [k for k in self._cache if k[0] == child_key]:
            del self._cache[key]

    def _doc_counts(self, n: int | Mapping[str, int] | None) -> dict[str, int]:
        sizes = self.task_sizes
        if isinstance(n, Mapping):
            unknown = sorted(set(n) - set(sizes))
            if unknown:
                raise AlloyError(f"limit names tasks {unknown} that are not evaluated ({', '.join(sizes)})")
            counts = {name: n.get(name) for name in sizes}
        else:
            counts = dict.fromkeys(sizes, n)
        for name, count in counts.items():
            if count is not None and (not isinstance(count, int) or count < 1):
                raise AlloyError(f"limit for task {name!r} must be a positive integer, got {count!r}")
        return {name: sizes[name] if count is None else min(count, sizes[name]) for name, count in counts.items()}

    def _run(self, docs: dict[str, list[int]], repeat: int) -> list[SampleRecord]:
        """One simple_evaluate call on the given doc indices of each task, for one repeat."""
        from lm_eval import simple_evaluate

        for name in docs:
            if self._generation[name] is not None:
                self.suite.tasks[name].set_config(key="generation_kwargs", value=dict(self._generation[name]))
        self.lm.repeat = repeat
        self.lm.clear_records()
        with code_execution(self.suite.allow_code_execution):
            output = simple_evaluate(
                model=self.lm, tasks=[self.suite.tasks[name] for name in docs],
                samples={name: sorted(indices) for name, indices in docs.items()},
                task_manager=self.suite.manager, log_samples=True, bootstrap_iters=0,
                apply_chat_template=self.apply_chat_template, system_instruction=self.system_instruction,
                random_seed=self.seed, numpy_random_seed=self.seed, torch_random_seed=self.seed,
                fewshot_random_seed=self.seed, confirm_run_unsafe_code=self.suite.allow_code_execution)
        records = []
        for name, indices in docs.items():
            position = {doc_id: pos for pos, doc_id in enumerate(sorted(indices))}
            records.extend(_sample_records(name, output["samples"][name], position, repeat, self.lm.records))
        return records


def collect_environment_once() -> None:
    """Make lm-eval describe the environment once per process. `simple_evaluate` adds it to every
    result (torch's `collect_env`: pip, compilers and GPUs, about 0.3 s of subprocesses per call), and
    alloy calls it for every rung and repeat of every candidate, where that description cannot change.
    Idempotent (a `RungEvaluator` calls it when it is built)."""
    import lm_eval.evaluator

    describe = lm_eval.evaluator.add_env_info
    if getattr(describe, "once", False):
        return
    described: dict[str, Any] = {}

    def add_env_info(storage: dict[str, Any]) -> None:
        if not described:
            describe(described)
        storage.update(described)

    add_env_info.once = True
    lm_eval.evaluator.add_env_info = add_env_info


def _generation_kwargs(name: str, task: "Task", max_gen_toks: int, repeats: int,
                       temperature: float | None, top_p: float | None) -> dict[str, Any] | None:
    """A task's generation kwargs with alloy's budget (and sampling, for repeats); None for a task
    that does not generate."""
    from alloy.evaluation.lm import check_generation_kwargs

    if task.get_config("output_type") != "generate_until":
        return None
    kwargs = {k: v for k, v in dict(task.get_config("generation_kwargs") or {}).items()
              if k not in _MAX_TOKEN_ALIASES}
    kwargs["max_gen_toks"] = max_gen_toks
    if temperature is not None:
        kwargs.update(do_sample=temperature > 0, temperature=float(temperature))
    if top_p is not None:
        kwargs["top_p"] = float(top_p)
    sampling = check_generation_kwargs(kwargs, f"generation_kwargs of task {name!r}")
    if repeats > 1 and not sampling.do_sample:
        kwargs.update(do_sample=True, temperature=REPEAT_TEMPERATURE)
        kwargs.setdefault("top_p", REPEAT_TOP_P)
    return kwargs


def _sample_records(task: str, logged: list[dict], position: dict[int, int], repeat: int,
                    generations: Mapping[tuple[str, int], list]) -> list[SampleRecord]:
    """Per-document records from lm-eval's logged samples (one per doc and filter) and the LM's
    generation records."""
    by_doc: dict[int, list[dict]] = defaultdict(list)
    for sample in logged:
        by_doc[int(sample["doc_id"])].append(sample)
    records = []
    for doc_id, samples in sorted(by_doc.items()):
        several = len(samples) > 1
        metrics: dict[str, float] = {}
        for sample in samples:
            for metric in sample["metrics"]:
                value = sample.get(metric)
                if isinstance(value, (bool, int, float)):
                    metrics[f"{metric},{sample['filter']}" if several else metric] = float(value)
        first = samples[0]
        response = _first_text(first.get("resps"))
        extracted = _first_text(first.get("filtered_resps"))
        gens = generations.get((task, position[doc_id]), [])
        primary = next(iter(metrics.values()), None)
        records.append(SampleRecord(
            task=task, doc_id=doc_id, repeat=repeat, metrics=metrics,
            correct=None if primary is None else primary >= 1.0,
            prompt=_first_text(first.get("arguments")), response=response,
            extracted=extracted if extracted != response else None, target=str(first.get("target")),
            completion="".join(g.completion for g in gens),
            output_tokens=sum(g.output_tokens for g in gens), thinking_tokens=sum(g.thinking_tokens for g in gens),
            waits=sum(g.waits for g in gens), thinking_capped=any(g.thinking_capped for g in gens),
            finish=gens[-1].finish if gens else None))
    return records


def _first_text(value: Any) -> str:
    """The first string inside lm-eval's nested lists/tuples (arguments, resps, filtered_resps)."""
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return "" if value is None or isinstance(value, (list, tuple)) else str(value)


def evaluate(model, tokenizer, tasks: Sequence[str] | str | TaskSuite, *,
             limit: int | Mapping[str, int] | None = None, max_gen_toks: int, **kwargs) -> EvalResult:
    """Score `model` (a transformers model with its tokenizer, or a prebuilt alloy LM) on `tasks`.

    limit: docs per task (the first n of each task's fixed order; all when None). Other keyword
    arguments are RungEvaluator's: repeats, seed, data_dir, evaluators, max_thinking_tokens,
    min_thinking_tokens, wait_extensions, batch_size, temperature, top_p, apply_chat_template,
    system_instruction, think_start, think_end, allow_code_execution, log_samples.
    """
    evaluator = RungEvaluator(model, tokenizer, tasks, max_gen_toks=max_gen_toks, **kwargs)
    return evaluator.score("model", limit)
