"""Teacher traces for the branch phase: read and validate JSONL, apply the chat template, tokenize.

A trace file is JSONL, one object per line with string fields `prompt` and `response` (and optionally
`id`, a string or integer that names the example; without it the example is named by its 0-based
record index). The prompt becomes a user turn rendered with the backbone's chat template and its
generation prompt; the response is what the model learns to continue with. When the generation prompt
opens a block of its own (alloy's template opens `<think>\\n`), a response that starts with that opener
is aligned with it, and a response without it gets it prepended, so training text and generation-time
text agree. The loss covers the response tokens only (labels are -100 on the prompt).

Packing (`pack_examples`, `collate_packed`) puts several short examples into one row of a fixed length
with per-example position ids, so that they share a forward pass without attending to each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from alloy.errors import AlloyError
from alloy.io.jsonl import read_jsonl_objects

IGNORE_INDEX = -100
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_SENTINEL = "\u2063alloy-assistant-content\u2063"


@dataclass(frozen=True)
class Trace:
    """One teacher trace: `key` is its `id`, or its 0-based record index when it has none."""

    key: str
    prompt: str
    response: str


@dataclass(frozen=True)
class EncodedExample:
    """A tokenized trace: prompt + response ids, labels -100 on the prompt.

    `n_response` counts the response tokens before truncation to the maximum length (the rows a
    teacher-logits entry must have); `n_kept` those that remain.
    """

    key: str
    input_ids: list[int]
    labels: list[int]
    n_response: int

    @property
    def n_kept(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def read_traces(path: str | Path) -> list[Trace]:
    """Read and validate a trace file; every problem is reported with its file and line."""
    path = Path(path)
    if not path.is_file():
        raise AlloyError(f"trace file {path} does not exist; pass JSONL of {{\"prompt\", \"response\"}} records")
    traces: list[Trace] = []
    seen: dict[str, int] = {}
    for lineno, record in read_jsonl_objects(path, 'a JSON object with "prompt" and "response"'):
        for field in ("prompt", "response"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise AlloyError(f"{path}:{lineno}: field {field!r} is missing or not a non-empty string")
        raw_id = record.get("id", len(traces))
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            raise AlloyError(f"{path}:{lineno}: field 'id' must be a string or an integer")
        key = str(raw_id)
        if key in seen:
            raise AlloyError(f"{path}:{lineno}: example id {key!r} already used on line {seen[key]}; ids must be unique")
        seen[key] = lineno
        traces.append(Trace(key, record["prompt"], record["response"]))
    if not traces:
        raise AlloyError(f"trace file {path} has no records; it needs at least one {{\"prompt\", \"response\"}} line")
    return traces


def load_chat_tokenizer(backbone: str | Path):
    """The backbone's tokenizer; it must load offline and carry a chat template."""
    from transformers import AutoTokenizer

    backbone = Path(backbone)
    if not any((backbone / name).is_file() for name in _TOKENIZER_FILES):
        raise AlloyError(f"backbone {backbone} has no loadable tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                         f"save one into the folder with tokenizer.save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise AlloyError(f"backbone {backbone} has no loadable tokenizer ({exc}); save one into the folder "
                         f"with tokenizer.save_pretrained") from None
    if not getattr(tokenizer, "chat_template", None):
        raise AlloyError(f"the tokenizer of backbone {backbone} has no chat template; set tokenizer.chat_template "
                         f"and save it again")
    return tokenizer


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise AlloyError(f"the backbone's chat template fails on a user/assistant conversation ({exc}); use a "
                         f"template that accepts one") from None


def generation_opener(tokenizer) -> str:
    """The text the generation prompt adds after the assistant header (`<think>\\n` for alloy's template)."""
    user = [{"role": "user", "content": "q"}]
    before = _render(tokenizer, user, False)
    with_prompt = _render(tokenizer, user, True)
    turn = _render(tokenizer, user + [{"role": "assistant", "content": _SENTINEL}], False)
    if not (with_prompt.startswith(before) and turn.startswith(before) and _SENTINEL in turn):
        return ""
    header = turn[len(before):turn.index(_SENTINEL)]
    rest = with_prompt[len(before):]
    return rest[len(header):] if rest.startswith(header) else ""


def format_trace(tokenizer, prompt: str, response: str, opener: str | None = None) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, response text the model learns to continue with)."""
    opener = generation_opener(tokenizer) if opener is None else opener
    if opener and not response.startswith(opener):
        head = opener.strip()
        if head and response.startswith(head):  # e.g. "<think>text" against the opener "<think>\n"
            response = response[len(head):].lstrip("\n")
        response = opener + response
    user = [{"role": "user", "content": prompt}]
    prompt_text = _render(tokenizer, user, True)
    full = _render(tokenizer, user + [{"role": "assistant", "content": response}], False)
    if not full.startswith(prompt_text):
        raise AlloyError("the backbone's chat template renders an assistant turn that does not begin with its own "
                         "generation prompt, so response tokens cannot be separated from the prompt; use a template "
                         "whose assistant turn extends the generation prompt")
    return prompt_text, full[len(prompt_text):]


def encode_trace(tokenizer, trace: Trace, max_length: int, opener: str | None = None) -> EncodedExample | None:
    """Tokenize one trace; None when the prompt leaves no room for a response token within `max_length`."""
    prompt_text, target_text = format_trace(tokenizer, trace.prompt, trace.response, opener)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    room = max_length - len(prompt_ids)
    if room <= 0:
        return None
    kept = target_ids[:room]
    return EncodedExample(trace.key, prompt_ids + kept, [IGNORE_INDEX] * len(prompt_ids) + kept, len(target_ids))


def encode_traces(tokenizer, traces: Sequence[Trace], max_length: int, source: str) -> list[EncodedExample]:
    """Tokenize every trace of `source`; examples whose prompt alone fills `max_length` are left out."""
    opener = generation_opener(tokenizer)
    encoded = [e for e in (encode_trace(tokenizer, t, max_length, opener) for t in traces) if e is not None]
    if not encoded:
        raise AlloyError(f"every prompt in {source} is at least --max-length={max_length} tokens long, leaving no "
                         f"response tokens to learn; raise --max-length")
    return encoded


def pad_id(tokenizer) -> int:
    """The id used for padding (masked out of attention and loss)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `attention_mask` and `labels` tensors of one batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_examples(examples: Sequence[EncodedExample], pack_length: int, source: str) -> list[list[int]]:
    """Group example indices into rows of at most `pack_length` tokens (first fit, longest first).

    Every example must fit a row by itself: a longer one is an AlloyError naming it.
    """
    too_long = next((e for e in examples if len(e.input_ids) > pack_length), None)
    if too_long is not None:
        raise AlloyError(f"--pack-length {pack_length} is shorter than example {too_long.key!r} of {source} "
                         f"({len(too_long.input_ids)} tokens); raise --pack-length to at least the longest example, "
                         f"or lower --max-length to cut examples to it")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i)):
        size = len(examples[index].input_ids)
        row = next((r for r, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([index])
            room.append(pack_length - size)
        else:
            rows[row].append(index)
            room[row] -= size
    return rows


def collate_packed(rows: Sequence[Sequence[EncodedExample]], pad_token_id: int) -> dict[str, Any]:
    """`input_ids`, `position_ids` and `labels` of packed rows, without an attention mask.

    Position ids restart at 0 for every example, which makes transformers build a block-diagonal causal
    mask (`find_packed_sequence_indices`): no example attends to another. transformers does this only
    when the forward pass runs without a KV cache: call the model with `use_cache=False`, or a
    continuation sees the examples before it. The padding at a row's end is
    a segment of its own, with labels -100; so is every example's first token (no target crosses a
    boundary).
    """
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.input_ids)
            ids[r, at:at + n] = torch.tensor(example.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(example.labels[1:])
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}
