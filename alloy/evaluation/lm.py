"""An lm-eval LM over a resident transformers model, with token counts and s1 budget forcing.

`ThinkingHFLM` wraps a model object that stays in memory (its weights may be overwritten in place
between evaluations; nothing is cached across calls) and replaces lm-eval's `generate_until` with a
decoder that follows every continuation token by token:

- it records, per request, the number of output tokens and, for a thinking continuation, the
  thinking tokens before the end-of-thinking delimiter (`GenerationRecord`);
- it applies budget forcing (s1, arXiv 2501.19393): at `max_thinking_tokens` the end-of-thinking
  delimiter and an answer prompt are appended and the model answers; while thinking would end
  before `min_thinking_tokens` (or, without a minimum, the first `wait_extensions` times it would
  end) the delimiter is replaced by "Wait";
- it samples each request with its own seeded generator, so repeated runs give the same outputs.

A continuation is a thinking one when its prompt opens a thinking block that it does not close (a
chat template whose generation prompt ends with `<think>`), or when its first generated token is
the thinking-start delimiter. Thinking tokens exclude both delimiters and include inserted "Wait"
tokens; output tokens count everything in the continuation, forced tokens included. The response
handed to the task is the text after the end-of-thinking delimiter (the whole text if thinking
never ended), cut at the task's stop sequences, as lm-eval does with `think_end_token`.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, normalize_gen_kwargs, postprocess_generated_text
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from alloy.errors import AlloyError
from alloy.logs import progress_bar

DEFAULT_THINK_START = "<think>"
DEFAULT_THINK_END = "</think>"
DEFAULT_ANSWER_PROMPT = "\nFinal Answer:"
DEFAULT_WAIT_TEXT = "Wait"

# generation keys the decoder understands besides lm-eval's `until` and `max_gen_toks` (and aliases)
SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")
_MAX_TOKEN_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class BudgetForcing:
    """Test-time control of the thinking length (s1 budget forcing).

    max_thinking_tokens: thinking tokens after which the end-of-thinking delimiter and
        `answer_prompt` are forced (None: no cap).
    min_thinking_tokens: while thinking would end before this many tokens, the delimiter is
        replaced by `wait_text`, at most `wait_extensions` times (None: every attempt to end
        thinking is replaced, for the first `wait_extensions` attempts).
    """

    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    wait_extensions: int = 0
    answer_prompt: str = DEFAULT_ANSWER_PROMPT
    wait_text: str = DEFAULT_WAIT_TEXT

    def __post_init__(self) -> None:
        for name in ("max_thinking_tokens", "min_thinking_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise AlloyError(f"budget forcing: {name} must be a non-negative integer or None, got {value!r}")
        if not isinstance(self.wait_extensions, int) or self.wait_extensions < 0:
            raise AlloyError(f"budget forcing: wait_extensions must be a non-negative integer, got "
                             f"{self.wait_extensions!r}")
        if (self.min_thinking_tokens is not None and self.max_thinking_tokens is not None
                and self.min_thinking_tokens > self.max_thinking_tokens):
            raise AlloyError(f"budget forcing: min_thinking_tokens ({self.min_thinking_tokens}) exceeds "
                             f"max_thinking_tokens ({self.max_thinking_tokens}); lower the minimum or raise the cap")
        if self.min_thinking_tokens is not None and self.wait_extensions == 0:
            raise AlloyError("budget forcing: min_thinking_tokens extends thinking by inserting 'Wait', which "
                             "needs wait_extensions >= 1; set wait_extensions (e.g. 1 or 2)")
        if self.wait_extensions and not self.wait_text:
            raise AlloyError("budget forcing: wait_text is empty; give the text inserted to extend thinking")

    @property
    def active(self) -> bool:
        """Whether any forcing applies (otherwise the decoder only counts tokens)."""
        return self.max_thinking_tokens is not None or self.wait_extensions > 0

    def may_extend(self, waits: int, thinking_tokens: int, wait_tokens: int) -> bool:
        """Whether an end of thinking after `thinking_tokens` (and `waits` extensions so far) is
        replaced by the `wait_tokens` tokens of `wait_text`."""
        if waits >= self.wait_extensions:
            return False
        if self.min_thinking_tokens is not None and thinking_tokens >= self.min_thinking_tokens:
            return False
        cap = self.max_thinking_tokens
        return cap is None or thinking_tokens + wait_tokens <= cap

    def check_generation_budget(self, max_gen_toks: int) -> None:
        """Fail unless a capped thinking part leaves room for an answer within `max_gen_toks`."""
        if self.max_thinking_tokens is not None and self.max_thinking_tokens >= max_gen_toks:
            raise AlloyError(f"max_thinking_tokens ({self.max_thinking_tokens}) must be below max_gen_toks "
                             f"({max_gen_toks}) so that the answer fits after thinking; raise max_gen_toks")


@dataclass(frozen=True)
class ThinkingDelimiters:
    """The thinking-start and end-of-thinking delimiters, each one token of the tokenizer."""

    start: str
    end: str
    start_id: int
    end_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer, start: str | None = None,
                       end: str | None = None) -> "ThinkingDelimiters | None":
        """The delimiters of `tokenizer`: `start`/`end` if given (they must be single tokens), else
        `<think>`/`</think>` when the tokenizer has both as single tokens, else None (no thinking)."""
        explicit = start is not None or end is not None
        start = DEFAULT_THINK_START if start is None else start
        end = DEFAULT_THINK_END if end is None else end
        ids = {}
        for text in (start, end):
            encoded = tokenizer.encode(text, add_special_tokens=False) if text else []
            if len(encoded) != 1:
                if explicit:
                    raise AlloyError(f"thinking delimiter {text!r} is {len(encoded)} tokens in the tokenizer "
                                     f"{getattr(tokenizer, 'name_or_path', '')!r}; budget forcing needs a "
                                     "delimiter that is one token (an added/special token of the tokenizer)")
                return None
            ids[text] = encoded[0]
        return cls(start=start, end=end, start_id=ids[start], end_id=ids[end])

    def opened_by(self, prompt: str) -> bool:
        """Whether `prompt` opens a thinking block that it does not close."""
        at = prompt.rfind(self.start)
        return at >= 0 and prompt.find(self.end, at + len(self.start)) < 0


@dataclass
class GenerationRecord:
    """What one continuation cost: tokens in total, thinking tokens, and what budget forcing did.

    finish: "eos" (end-of-sequence token), "stop" (a stop sequence of the task) or "length"
    (max_gen_toks reached). `completion` is the whole continuation with its special tokens.
    """

    output_tokens: int
    thinking_tokens: int
    thinking: bool
    thinking_ended: bool
    waits: int
    thinking_capped: bool
    finish: str
    completion: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy."""
        return asdict(self)


@dataclass
class ThinkingTracker:
    """Follows one continuation token by token: where thinking starts and ends, and its length."""

    delimiters: ThinkingDelimiters | None
    phase: str  # "pending" (first token may open thinking), "thinking" or "answer"
    eos_ids: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    thinking_tokens: int = 0
    answer_start: int = 0
    thought: bool = False

    @classmethod
    def for_prompt(cls, prompt: str, delimiters: ThinkingDelimiters | None,
                   eos_ids: frozenset[int] = frozenset()) -> "ThinkingTracker":
        """A tracker for a continuation of `prompt` that ends at one of `eos_ids`."""
        if delimiters is None:
            return cls(delimiters, "answer", eos_ids)
        if delimiters.opened_by(prompt):
            return cls(delimiters, "thinking", eos_ids, thought=True)
        return cls(delimiters, "pending", eos_ids)

    def advance(self, token: int) -> None:
        """Account for the next token of the continuation."""
        self.tokens.append(token)
        if self.phase == "pending":
            if token == self.delimiters.start_id:
                self.phase, self.thought = "thinking", True
            else:
                self.phase = "answer"
        elif self.phase == "thinking":
            if token == self.delimiters.end_id:
                self.phase, self.answer_start = "answer", len(self.tokens)
            elif token not in self.eos_ids:
                self.thinking_tokens += 1


def generation_record(tokenizer, tracker: ThinkingTracker, finish: str, waits: int, capped: bool) -> GenerationRecord:
    """The record of the continuation `tracker` followed, after `waits` extensions (capped: whether
    the thinking cap forced its end)."""
    return GenerationRecord(output_tokens=len(tracker.tokens), thinking_tokens=tracker.thinking_tokens,
                            thinking=tracker.thought, thinking_ended=tracker.thought and tracker.phase == "answer",
                            waits=waits, thinking_capped=capped, finish=finish,
                            completion=tokenizer.decode(tracker.tokens, skip_special_tokens=False))


def response_text(tokenizer, tracker: ThinkingTracker, until: list[str]) -> str:
    """The text a task scores: after the end of thinking, cut at the first stop sequence."""
    text = tokenizer.decode(tracker.tokens[tracker.answer_start:], skip_special_tokens=True)
    if tracker.thought:
        text = text.lstrip()
    return postprocess_generated_text(text, until, None)


def request_seed(seed: int, repeat: int, occurrence: int, task: str | None, prompt: str) -> int:
    """A 63-bit seed for one request, stable across processes and independent of batch composition."""
    digest = hashlib.sha256(f"{seed}\x00{repeat}\x00{occurrence}\x00{task}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request group, validated from lm-eval generation kwargs."""

    do_sample: bool
    temperature: float
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], where: str = "generation_kwargs") -> "Sampling":
        """Settings from normalized kwargs (`until` and `max_gen_toks` already removed)."""
        unknown = sorted(set(kwargs) - set(SAMPLING_KEYS))
        if unknown:
            raise AlloyError(f"{where}: unsupported generation keys {unknown}; the decoder understands "
                             f"until, max_gen_toks and {', '.join(SAMPLING_KEYS)}")
        temperature = kwargs.get("temperature")
        temperature = float((1.0 if kwargs.get("do_sample") else 0.0) if temperature is None else temperature)
        do_sample = bool(kwargs.get("do_sample", temperature > 0.0)) and temperature > 0.0
        return cls(do_sample=do_sample, temperature=temperature, top_p=kwargs.get("top_p"),
                   top_k=kwargs.get("top_k"), min_p=kwargs.get("min_p"),
                   repetition_penalty=kwargs.get("repetition_penalty"))

    def processors(self) -> LogitsProcessorList:
        """transformers' logits processors/warpers that implement these settings."""
        chain = LogitsProcessorList()
        if self.repetition_penalty not in (None, 1.0):
            chain.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty)))
        if self.do_sample:
            chain.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                chain.append(TopKLogitsWarper(int(self.top_k)))
            if self.top_p is not None and self.top_p < 1.0:
                chain.append(TopPLogitsWarper(float(self.top_p)))
            if self.min_p:
                chain.append(MinPLogitsWarper(float(self.min_p)))
        return chain


@dataclass(frozen=True)
class GenerationRequest:
    """What one group of lm-eval generation requests asks for: its stop strings, its token cap, its
    decoding, and how many prompt tokens fit beside the cap in the model's context (`prompt_room`)."""

    until: list[str]
    max_gen_toks: int
    sampling: Sampling
    prompt_room: int

    @classmethod
    def parse(cls, gen_kwargs: dict[str, Any], default_max_gen_toks: int, max_length: int, budget: BudgetForcing,
              task: str) -> "GenerationRequest":
        """Validate a task's generation kwargs against the budget and the context length (AlloyError)."""
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), default_max_gen_toks)
        until = [s for s in kwargs.pop("until") if s]
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        sampling = Sampling.from_kwargs(kwargs, f"generation_kwargs of task {task!r}")
        budget.check_generation_budget(max_gen_toks)
        if max_length - max_gen_toks <= 0:
            raise AlloyError(f"max_gen_toks ({max_gen_toks}) of task {task!r} leaves no room for the prompt in the "
                             f"model's context of {max_length} tokens; lower max_gen_toks")
        return cls(until, max_gen_toks, sampling, max_length - max_gen_toks)


def check_generation_kwargs(gen_kwargs: dict[str, Any], where: str) -> Sampling:
    """The decoding settings of `gen_kwargs` (a task's generation_kwargs); an AlloyError names any key
    the decoder would ignore."""
    rest = {k: v for k, v in gen_kwargs.items() if k != "until" and k not in _MAX_TOKEN_ALIASES}
    return Sampling.from_kwargs(rest, where)


class _Row:
    """Decoding state of one request in a batch."""

    def __init__(self, tracker: ThinkingTracker, generator: torch.Generator | None):
        self.tracker = tracker
        self.generator = generator
        self.forced: deque[int] = deque()
        self.waits = 0
        self.capped = False
        self.finish: str | None = None


class BudgetForcingDecoder(LogitsProcessor):
    """Chooses every next token of a batch itself (greedy or seeded sampling, then budget forcing) and
    hands it to `generate` as a one-hot score; `stopping` ends the rows that hit a stop sequence."""

    def __init__(self, tokenizer, rows: list[_Row], budget: BudgetForcing, sampling: Sampling,
                 eos_ids: frozenset[int], until: list[str], max_new_tokens: int):
        self.tokenizer = tokenizer
        self.rows = rows
        self.budget = budget
        self.processors = sampling.processors()
        self.do_sample = sampling.do_sample
        self.eos_ids = eos_ids
        self.until = [s for s in until if s]
        self.max_new_tokens = max_new_tokens
        self.wait_ids = tokenizer.encode(budget.wait_text, add_special_tokens=False) if budget.wait_extensions else []
        self.answer_ids = tokenizer.encode(budget.answer_prompt, add_special_tokens=False)
        self.stop_lookback = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.until),
                                 default=0) + 2
        self.stopping = _RowsFinished(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        proposals = self._propose(input_ids, scores)
        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(self.rows):
            token = self._choose(row, proposals, i) if row.finish is None else self.tokenizer.pad_token_id
            forced[i, token] = 0.0
        return forced

    def _propose(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
        scores = self.processors(input_ids, scores) if self.processors else scores
        return torch.softmax(scores.float(), dim=-1) if self.do_sample else scores.argmax(dim=-1).tolist()

    def _choose(self, row: _Row, proposals, i: int) -> int:
        tracker = row.tracker
        cap = self.budget.max_thinking_tokens
        if not row.forced and tracker.phase == "thinking" and cap is not None and tracker.thinking_tokens >= cap:
            row.forced.extend([tracker.delimiters.end_id, *self.answer_ids])
            row.capped = True
        if row.forced:
            token = row.forced.popleft()
        else:
            token = (int(torch.multinomial(proposals[i], 1, generator=row.generator)) if self.do_sample
                     else int(proposals[i]))
            if tracker.phase == "thinking" and (token == tracker.delimiters.end_id or token in self.eos_ids) \
                    and self._may_extend(row):
                row.forced.extend(self.wait_ids)
                row.waits += 1
                token = row.forced.popleft()
        tracker.advance(token)
        if token in self.eos_ids:
            row.finish = "eos"
        elif len(tracker.tokens) >= self.max_new_tokens:
            row.finish = "length"
        elif tracker.phase == "answer" and self.until and self._hit_stop(tracker):
            row.finish = "stop"
        return token

    def _may_extend(self, row: _Row) -> bool:
        return self.budget.may_extend(row.waits, row.tracker.thinking_tokens, len(self.wait_ids))

    def _hit_stop(self, tracker: ThinkingTracker) -> bool:
        tail = tracker.tokens[max(tracker.answer_start, len(tracker.tokens) - self.stop_lookback):]
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(stop in text for stop in self.until)


class _RowsFinished(StoppingCriteria):
    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor([row.finish is not None for row in self.rows], dtype=torch.bool, device=input_ids.device)


class ThinkingHFLM(HFLM):
    """lm-eval's HF LM over a model object, generating with `BudgetForcingDecoder`.

    `records[(task_name, doc_position)]` lists a `GenerationRecord` per generate request of that doc
    (doc_position is lm-eval's position within the evaluated docs); `clear_records()` empties it.
    `seed` and `repeat` enter every request's sampling seed.
    """

    def __init__(self, model, tokenizer, *, max_gen_toks: int = 256, batch_size: int = 1,
                 budget: BudgetForcing | None = None, think_start: str | None = None,
                 think_end: str | None = None, seed: int = 0, max_length: int | None = None):
        if not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise AlloyError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
        budget = budget or BudgetForcing()
        budget.check_generation_budget(max_gen_toks)
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        self.budget = budget
        self.delimiters = ThinkingDelimiters.from_tokenizer(self.tokenizer, think_start, think_end)
        if budget.active and self.delimiters is None:
            raise AlloyError(f"budget forcing needs thinking delimiters, but the tokenizer "
                             f"{getattr(tokenizer, 'name_or_path', '')!r} has no single-token "
                             f"{DEFAULT_THINK_START!r}/{DEFAULT_THINK_END!r}; pass think_start/think_end")
        self._default_max_gen_toks = max_gen_toks
        self.seed = seed
        self.repeat = 0
        self.records: dict[tuple[str, int], list[GenerationRecord]] = defaultdict(list)

    @property
    def max_gen_toks(self) -> int:
        return self._default_max_gen_toks

    def clear_records(self) -> None:
        """Forget the records of earlier requests."""
        self.records = defaultdict(list)

    def get_model_info(self) -> dict:
        """Parameter count and dtype (no Hub lookups: the model lives in memory)."""
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype)}

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        occurrences: Counter[int] = Counter()
        items = []
        for index, req in enumerate(requests):
            context, gen_kwargs = req.args
            items.append((context, gen_kwargs, index, occurrences[id(req)]))
            occurrences[id(req)] += 1
        collator = Collator(items, sort_fn=lambda item: (-len(self.tok_encode(item[0])), item[0]),
                            group_by="gen_kwargs", group_fn=lambda item: item[1])
        outputs = []
        with progress_bar(len(items), "generating", unit="answer", disable=disable_tqdm) as bar:
            for chunk in collator.get_batched(n=self.batch_size):
                outputs.extend(self._generate_batch(chunk, requests))
                bar.update(len(chunk))
        outputs = collator.get_original(outputs)
        for req, (response, record) in zip(requests, outputs, strict=True):
            self.records[(req.task_name, req.doc_id)].append(record)
            self.cache_hook.add_partial("generate_until", req.args, response)
        return [response for response, _ in outputs]

    def _generate_batch(self, chunk, requests) -> list[tuple[str, GenerationRecord]]:
        gen_kwargs = chunk[0][1]
        task = requests[chunk[0][2]].task_name
        request = GenerationRequest.parse(gen_kwargs, self.max_gen_toks, self.max_length, self.budget, task)
        until, max_gen_toks, sampling = request.until, request.max_gen_toks, request.sampling
        encoded = [self.tok_encode(context, left_truncate_len=request.prompt_room) for context, *_ in chunk]
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids):] = 1

        eos_ids = self._eos_ids()
        rows = []
        for context, _, index, occurrence in chunk:
            generator = None
            if sampling.do_sample:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(request_seed(self.seed, self.repeat, occurrence,
                                                   requests[index].task_name, context))
            rows.append(_Row(ThinkingTracker.for_prompt(context, self.delimiters, eos_ids), generator))
        decoder = BudgetForcingDecoder(self.tokenizer, rows, self.budget, sampling, eos_ids, until, max_gen_toks)
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_gen_toks,
                                  eos_token_id=sorted(eos_ids), pad_token_id=pad, repetition_penalty=1.0)
        with torch.no_grad():
            self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                generation_config=config, logits_processor=LogitsProcessorList([decoder]),
                                stopping_criteria=StoppingCriteriaList([decoder.stopping]))
        return [(response_text(self.tokenizer, row.tracker, until),
                 generation_record(self.tokenizer, row.tracker, row.finish or "length", row.waits, row.capped))
                for row in rows]

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.discard(None)
        if self.delimiters is not None:
            ids -= {self.delimiters.start_id, self.delimiters.end_id}
        return frozenset(ids)
