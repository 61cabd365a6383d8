"""lm-eval's vLLM LM around a running engine, with alloy's token records and s1 budget forcing.

Imports vllm at module import: import this module only when the vLLM backend is asked for.
`ThinkingVLLM` wraps an `LLM` that already exists (a sweep worker's long-lived engine, whose weights
are swapped between children, or the engine `local_engine` starts for `alloy eval`); it never starts
a second one. Data parallelism stays off (lm-eval's data-parallel path calls `ray.shutdown()`).

Generation follows a continuation in rounds, the way s1 budget forces with vLLM: while thinking, a
round generates with `max_tokens` set to what is left of the thinking cap and the end-of-thinking
delimiter (and end of sequence) as stop tokens. At the cap, the delimiter and the answer prompt are
appended and the next round answers; where thinking ends before `min_thinking_tokens` (or in the
first `wait_extensions` ends), the stop is dropped, "Wait" is appended and thinking goes on. The
answer round stops at the task's stop sequences. Every round is one batched `generate` over all
unfinished requests; each request samples with its own seed. Token counting, the forcing rules and
the response text are those of `ThinkingHFLM` (`ThinkingTracker`, `BudgetForcing.may_extend`), so a
cap is exact on both backends.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from lm_eval.api.model import TemplateLM
from lm_eval.models.vllm_causallms import VLLM
from vllm import LLM, SamplingParams, TokensPrompt

from alloy.errors import AlloyError
from alloy.evaluation.lm import (BudgetForcing, DEFAULT_THINK_END, DEFAULT_THINK_START, GenerationRecord,
                                 GenerationRequest, Sampling, ThinkingDelimiters, ThinkingTracker, generation_record,
                                 request_seed, response_text)

# every engine on one host, unless the environment says otherwise: the loopback address keeps vLLM's
# sockets off the machine's external interface, and CPU builds get a 1 GiB KV cache
HOST_ENGINE_ENV = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# one-process engines: vLLM's default engine-core and worker processes take 22-55 s to start, one
# process 2-3 s
ONE_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **HOST_ENGINE_ENV}


def host_engine(model: str, **engine_args: Any) -> LLM:
    """A vLLM engine for the model folder `model` on this host: `HOST_ENGINE_ENV` where the environment
    does not say otherwise, the CPU build's engine arguments (`cpu_engine_args`), and the check of the
    process's parallel groups (`check_process_groups`). `engine_args` go to `LLM`."""
    for key, value in HOST_ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    check_process_groups(model)
    return LLM(model=model, **{**cpu_engine_args(), **engine_args})


def release_import_frames() -> None:
    """Let go of the stack that first imported vLLM's multimodal modules.

    vLLM 0.32 keeps the exception of its failed optional `torchcodec` import (alloy's install removes
    the CUDA-linked torchcodec) in `vllm.multimodal.media.audio._torchcodec_import_exc`. Its traceback
    holds every frame that was on the stack at that import, with their locals: an object whose method
    first imported vLLM, or started the first engine, was never collected, nor its engine, nor the
    parallel groups of a one-process engine. Dropping the tracebacks (vLLM only re-raises the error's
    message) releases them."""
    exc = getattr(sys.modules.get("vllm.multimodal.media.audio"), "_torchcodec_import_exc", None)
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


release_import_frames()  # once: `from vllm import LLM` above has imported them, with the importer's stack


def local_engine(model: str, *, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 **engine_args: Any) -> LLM:
    """A vLLM engine in this process (uni executor) for the model folder `model` (`host_engine`).

    `engine_args` go to `LLM` (e.g. `load_format="dummy"`, `worker_extension_cls`).
    """
    for key, value in ONE_PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    return host_engine(model, dtype=dtype, seed=seed, max_model_len=max_model_len, distributed_executor_backend="uni",
                       **engine_args)


_EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")


def check_process_groups(model: str) -> None:
    """AlloyError when a one-process engine for the MoE model folder `model` cannot start in this
    process: vLLM keeps one set of parallel groups per process, made by the first one-process engine
    that is still alive, with an expert-parallel group only for a MoE model, so a MoE engine started
    beside a live dense one fails deep in vLLM. Once the dense engine is freed, the groups go with it."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return
    try:
        parallel_state.get_ep_group()
        return
    except AssertionError:  # the groups of a dense model
        pass
    config_file = Path(model) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if any(config.get(key) for key in _EXPERT_COUNT_KEYS):
        raise AlloyError(f"{model} is a mixture-of-experts model, and a one-process vLLM engine for a dense model "
                         "is still alive in this process: vLLM keeps one set of parallel groups per process, "
                         "without the expert-parallel group this model needs. Delete that engine first (and "
                         "gc.collect()), or start this one in another process")


@contextmanager
def cpu_ranks_env(ranks: int) -> Iterator[None]:
    """While an engine of `ranks` CPU worker processes starts on this host (they inherit it), the
    environment it needs, where the environment does not say otherwise: `HOST_ENGINE_ENV`, and each
    rank's own share of this process's CPUs (`VLLM_CPU_OMP_THREADS_BIND`, e.g. "0|1"), since vLLM's
    automatic binding wants a NUMA node per rank. Restored afterwards, so that no later one-process
    engine binds this process to one rank's CPUs. AlloyError when there are fewer CPUs than ranks."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < ranks and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        raise AlloyError(f"{ranks} vLLM ranks on this CPU host need at least {ranks} CPUs, but this process may use "
                         f"{len(cpus)}; ask for fewer ranks, or set VLLM_CPU_OMP_THREADS_BIND")
    share = len(cpus) // ranks
    binding = "|".join(",".join(str(c) for c in cpus[r * share:(r + 1) * share]) for r in range(ranks))
    settings = {**HOST_ENGINE_ENV, "VLLM_CPU_OMP_THREADS_BIND": binding}
    added = [key for key in settings if key not in os.environ]
    os.environ.update({key: settings[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def cpu_dtype(config: Mapping[str, Any]) -> str:
    """The dtype a CPU engine computes in: float32, except bfloat16 for multi-head latent attention
    (DeepSeek-V3), whose CPU kernels take no float32 weights."""
    return "bfloat16" if config.get("kv_lora_rank") else "float32"


def cpu_engine_args() -> dict[str, Any]:
    """Engine settings vLLM 0.32's CPU build needs: no chunked prefill, because a seeded (sampled)
    request whose prompt is split over steps fails there ("CPU Generator does not use offset").
    Empty where CUDA is present."""
    import torch

    return {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}


@dataclass
class _Continuation:
    """One request being generated in rounds."""

    context: str
    prompt_ids: list[int]
    until: list[str]
    max_gen_toks: int
    sampling: Sampling
    seed: int
    tracker: ThinkingTracker
    waits: int = 0
    capped: bool = False
    finish: str | None = None
    rounds: int = 0


class ThinkingVLLM(VLLM):
    """lm-eval's VLLM over the running engine `llm`; `records` as in `ThinkingHFLM`.

    `budget` is the s1 budget forcing (see the module docstring); `seed` and `repeat` enter every
    request's sampling seed.
    """

    def __init__(self, llm: LLM, *, max_gen_toks: int = 256, seed: int = 0, budget: BudgetForcing | None = None,
                 think_start: str | None = None, think_end: str | None = None):
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise AlloyError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
        budget = budget or BudgetForcing()
        budget.check_generation_budget(max_gen_toks)
        TemplateLM.__init__(self)
        self.model = llm
        self.tokenizer = llm.get_tokenizer()
        model_config = llm.llm_engine.model_config
        self._config = model_config.hf_config
        self._max_length = None
        self._max_gen_toks = max_gen_toks
        self.tensor_parallel_size = llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size
        self.data_parallel_size = 1
        self.batch_size = "auto"
        self.truncation_side = "left"
        self.add_bos_token = None
        self.custom_prefix_token_id = None
        self.lora_request = None
        self.hf_chat_template = None
        self.chat_template_args = {}
        self.enable_thinking = None
        self.model_args = {"model": model_config.model, "tensor_parallel_size": self.tensor_parallel_size}
        self.budget = budget
        self.delimiters = ThinkingDelimiters.from_tokenizer(self.tokenizer, think_start, think_end)
        if budget.active and self.delimiters is None:
            raise AlloyError(f"budget forcing needs thinking delimiters, but the engine's tokenizer has no "
                             f"single-token {DEFAULT_THINK_START!r}/{DEFAULT_THINK_END!r}; pass think_start/think_end")
        self.think_end_token = self.delimiters.end if self.delimiters else None
        self.wait_ids = self.tokenizer.encode(budget.wait_text, add_special_tokens=False) if budget.wait_extensions else []
        self.answer_ids = self.tokenizer.encode(budget.answer_prompt, add_special_tokens=False)
        self.eos_ids = self._eos_ids()
        self.seed = seed
        self.repeat = 0
        self.records: dict[tuple[str, int], list[GenerationRecord]] = defaultdict(list)

    def clear_records(self) -> None:
        """Forget the records of earlier requests."""
        self.records = defaultdict(list)

    def get_model_info(self) -> dict:
        """The engine's model folder and dtype (no Hub lookups)."""
        config = self.model.llm_engine.model_config
        return {"model_name": config.model, "model_dtype": str(config.dtype)}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        occurrences: Counter[int] = Counter()
        rows = []
        for req in requests:
            context, gen_kwargs = req.args
            rows.append(self._continuation(context, gen_kwargs, req.task_name,
                                           request_seed(self.seed, self.repeat, occurrences[id(req)],
                                                        req.task_name, context)))
            occurrences[id(req)] += 1
        while pending := [row for row in rows if row.finish is None]:
            params = [self._round_params(row) for row in pending]
            prompts = [TokensPrompt(prompt_token_ids=row.prompt_ids + row.tracker.tokens) for row in pending]
            outputs = self.model.generate(prompts, params, use_tqdm=False)
            for row, output in zip(pending, outputs, strict=True):
                self._advance(row, output.outputs[0])
        responses = []
        for req, row in zip(requests, rows, strict=True):
            response = response_text(self.tokenizer, row.tracker, row.until)
            self.records[(req.task_name, req.doc_id)].append(
                generation_record(self.tokenizer, row.tracker, row.finish, row.waits, row.capped))
            self.cache_hook.add_partial("generate_until", req.args, response)
            responses.append(response)
        return responses

    # ----------------------------------------------------------------------------------------------
    def _continuation(self, context: str, gen_kwargs: dict, task: str, seed: int) -> _Continuation:
        request = GenerationRequest.parse(gen_kwargs, self.max_gen_toks, self.max_length, self.budget, task)
        prompt_ids = self.tok_encode(context)[-request.prompt_room:]
        tracker = ThinkingTracker.for_prompt(context, self.delimiters, self.eos_ids)
        row = _Continuation(context, prompt_ids, request.until, request.max_gen_toks, request.sampling, seed, tracker)
        self._apply_cap(row)
        return row

    def _round_params(self, row: _Continuation) -> SamplingParams:
        """The next round of `row`: one token while it may still open thinking, thinking up to the
        cap with the delimiter as a stop, or the answer up to the task's stop sequences."""
        tracker, s = row.tracker, row.sampling
        left = row.max_gen_toks - len(tracker.tokens)
        stops: dict[str, Any] = {"stop_token_ids": sorted(self.eos_ids)}
        if tracker.phase == "pending":
            left = 1
        elif tracker.phase == "thinking":
            stops["stop_token_ids"] = sorted(self.eos_ids | {tracker.delimiters.end_id})
            if self.budget.max_thinking_tokens is not None:
                left = min(left, self.budget.max_thinking_tokens - tracker.thinking_tokens)
        elif row.until:
            stops["stop"] = row.until
        row.rounds += 1
        return SamplingParams(max_tokens=left, seed=(row.seed + row.rounds) % 2**63 if s.do_sample else None,
                              temperature=s.temperature if s.do_sample else 0.0,
                              top_p=1.0 if s.top_p is None else float(s.top_p), top_k=int(s.top_k or 0),
                              min_p=float(s.min_p or 0.0),
                              repetition_penalty=1.0 if s.repetition_penalty is None else float(s.repetition_penalty),
                              skip_special_tokens=False, **stops)

    def _advance(self, row: _Continuation, completion) -> None:
        tracker = row.tracker
        tokens = list(completion.token_ids)
        stopped_by_token = completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str)
        stop = tokens.pop() if stopped_by_token and tokens and tokens[-1] in self._stop_ids(tracker) else None
        phase = tracker.phase
        for token in tokens:
            tracker.advance(token)
        if phase == "answer":
            row.finish = ("stop" if isinstance(completion.stop_reason, str) else
                          "length" if completion.finish_reason == "length" else "eos")
            if stop is not None:
                tracker.advance(stop)
            return
        if phase == "pending":
            self._settle(row, stop)
            self._apply_cap(row)
            return
        # a thinking round ended: by a stop token, by the length of the answer, or at the cap
        if stop is not None:
            if self.budget.may_extend(row.waits, tracker.thinking_tokens, len(self.wait_ids)):
                row.waits += 1
                self._force(row, self.wait_ids)
            else:
                self._settle(row, stop)
        elif len(tracker.tokens) >= row.max_gen_toks:
            row.finish = "length"
        self._apply_cap(row)

    def _apply_cap(self, row: _Continuation) -> None:
        """At the thinking cap, append the end-of-thinking delimiter and the answer prompt."""
        cap, tracker = self.budget.max_thinking_tokens, row.tracker
        if row.finish is None and cap is not None and tracker.phase == "thinking" and tracker.thinking_tokens >= cap:
            row.capped = True
            self._force(row, [tracker.delimiters.end_id, *self.answer_ids])

    def _settle(self, row: _Continuation, stop: int | None) -> None:
        """Take the stop token a round ended with (or check the one-token round) and see if row is done."""
        if stop is not None:
            row.tracker.advance(stop)
        last = row.tracker.tokens[-1] if row.tracker.tokens else None
        if last in self.eos_ids:
            row.finish = "eos"
        elif len(row.tracker.tokens) >= row.max_gen_toks:
            row.finish = "length"

    def _force(self, row: _Continuation, ids: list[int]) -> None:
        """Append forced tokens, as many as the generation budget allows."""
        for token in ids:
            if len(row.tracker.tokens) >= row.max_gen_toks:
                break
            row.tracker.advance(token)
        if len(row.tracker.tokens) >= row.max_gen_toks:
            row.finish = "length"

    def _stop_ids(self, tracker: ThinkingTracker) -> frozenset[int]:
        return self.eos_ids | {tracker.delimiters.end_id} if tracker.phase == "thinking" else self.eos_ids

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self._config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.discard(None)
        if self.delimiters is not None:
            ids -= {self.delimiters.start_id, self.delimiters.end_id}
        return frozenset(ids)
