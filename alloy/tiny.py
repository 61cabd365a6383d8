"""Tiny random models of real architectures and a tiny trained tokenizer.

Used by the tests, the benchmarks and the demo: nothing can be downloaded, so every model alloy works
on offline is made here from a real transformers config at hidden size 64 (or larger, on request).
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

import torch

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "deepseek_v3")

THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", THINK_START, THINK_END, "<|pad|>")

# A Qwen-style chat template; the assistant turn opens with the thinking delimiter so that budget
# forcing has a delimiter to count from.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def tiny_config(arch: str, vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2,
                num_experts: int = 4, intermediate_size: int | None = None, vllm: bool = False):
    """A transformers config of `arch` (one of ARCHITECTURES) at a tiny size.

    MoE configs get `num_experts` routed experts; DeepSeek-V3 gets one dense first layer
    (`first_k_dense_replace=1`), one shared expert and multi-head latent attention, like the real one.
    `vllm=True` shapes the model for vLLM's CPU kernels: attention heads of size 32 (CPU attention
    needs at least 32) and, for DeepSeek-V3, the MLA sizes its CPU path supports (`kv_lora_rank` 512,
    `qk_rope_head_dim` 64) with `topk_method: noaux_tc`.
    """
    from transformers import (DeepseekV3Config, LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config,
                              Qwen3Config, Qwen3MoeConfig)

    inter = intermediate_size or hidden_size * 2
    heads = max(2, hidden_size // 16)
    head_dim = 32 if vllm else 16
    if vllm:
        heads = max(2, hidden_size // 32)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=inter,
                  num_hidden_layers=num_layers, num_attention_heads=heads, max_position_embeddings=2048,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=2, pad_token_id=5)
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=heads // 2, **common)
    if arch == "mistral":
        return MistralConfig(num_key_value_heads=heads // 2, sliding_window=None, **common)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=heads // 2, **common)
    if arch == "qwen3":
        return Qwen3Config(num_key_value_heads=heads // 2, head_dim=head_dim, **common)
    if arch == "mixtral":
        return MixtralConfig(num_key_value_heads=heads // 2, num_local_experts=num_experts,
                             num_experts_per_tok=2, **common)
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(num_key_value_heads=heads // 2, head_dim=head_dim, num_experts=num_experts,
                              num_experts_per_tok=2, moe_intermediate_size=hidden_size // 2,
                              decoder_sparse_step=1, mlp_only_layers=[], **common)
    if arch == "deepseek_v3":
        mla = (dict(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=32, v_head_dim=32, topk_method="noaux_tc")
               if vllm else dict(kv_lora_rank=hidden_size // 4, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16))
        return DeepseekV3Config(num_key_value_heads=heads, n_routed_experts=num_experts, n_shared_experts=1,
                                num_experts_per_tok=2, moe_intermediate_size=hidden_size // 2,
                                first_k_dense_replace=1, q_lora_rank=hidden_size // 2, n_group=2,
                                topk_group=1, **mla, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


def make_tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """A randomly initialized causal LM of `arch` (see `tiny_config`), in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_kwargs), dtype=dtype)
    return model.eval()


def perturbed_copy(model, scale: float = 0.02, seed: int = 1):
    """A fine-tune stand-in: a copy of `model` with every parameter moved by small seeded noise."""
    import copy

    child = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in child.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale
            p.add_((noise * p.float().abs().mean().clamp_min(1e-3)).to(p.dtype))
    return child


def _default_corpus() -> list[str]:
    words = ("the answer is what how many find sum product prime number integer triangle circle area "
             "problem solution print input def return class Solution self for in range if else while "
             "question choice correct wait so therefore let compute total each").split()
    lines = []
    for i in range(400):
        w = [words[(i * 7 + j * 13) % len(words)] for j in range(12)]
        lines.append(" ".join(w) + f" {i} + {i * 3} = {i * 4} \\boxed{{{i % 1000}}} (A) (B) (C) (D)")
    lines.append(string.printable)
    return lines


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512, split_digits: bool = False):
    """A byte-level BPE tokenizer trained on `texts` (a built-in corpus by default).

    The special tokens of SPECIAL_TOKENS take ids 0..5 (bos `<|endoftext|>` = 0, eos `<|im_end|>` = 2,
    pad `<|pad|>` = 5, matching `tiny_config`); it has a Qwen-style chat template whose generation
    prompt opens a `<think>` block, and covers every byte, so any text round-trips. With `split_digits`
    every digit is a token of its own (as in Qwen's and Llama's tokenizers).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) if texts is not None else _default_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_checkpoint(model, out_dir: str | Path, tokenizer=None, max_shard_size: str | int = "5GB") -> Path:
    """Save `model` (and `tokenizer`) as an ordinary Hugging Face folder of safetensors shards."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
