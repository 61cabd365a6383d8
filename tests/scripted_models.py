"""Scripted models: real tiny transformers models whose weights make the next token a fixed function of
the current one, so every generated token is known in advance; and the helpers that drive them."""
from __future__ import annotations

import torch
from lm_eval.api.instance import Instance

from alloy.evaluation.lm import ThinkingHFLM
from alloy.tiny import make_tiny_model

EOS = 2  # <|im_end|> in alloy's tiny tokenizer
THINK_START, THINK_END = 3, 4


def scripted_model(transitions: dict[int, int], arch: str = "llama", scale: float = 30.0, **config):
    """A tiny model of `arch` that, after token a, emits transitions[a] (greedy, or sampled: the
    successor's logit leads by 8*scale). Attention and MLP outputs are zeroed, so the residual stream
    is the current token's embedding: a one-hot direction per scripted token, mapped by the LM head
    to its successor. Unscripted tokens get a zero embedding (all logits equal). `config` goes to
    `make_tiny_model` (e.g. vllm=True)."""
    model = make_tiny_model(arch, seed=0, **config)
    if len(transitions) > model.config.hidden_size:
        raise ValueError("more scripted tokens than hidden dimensions")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        embed.zero_()
        head.zero_()
        for slot, (current, successor) in enumerate(transitions.items()):
            embed[current, slot] = 1.0
            head[successor, slot] = scale
    return model


def script(*sequences: list[int]) -> dict[int, int]:
    """Transitions that follow each token sequence; a token may have only one successor."""
    transitions: dict[int, int] = {}
    for seq in sequences:
        for current, successor in zip(seq, seq[1:]):
            if transitions.setdefault(current, successor) != successor:
                raise ValueError(f"token {current} scripted with two successors")
    return transitions


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def chat_prompt(tokenizer, question: str = "What is 6*7?") -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def generate(lm: ThinkingHFLM, prompts: list[str], **gen_kwargs):
    """Run lm-eval requests through the LM; returns (responses, records in request order)."""
    kwargs = {"until": ["\n\n"], "do_sample": False, **gen_kwargs}
    requests = [Instance("generate_until", {}, (prompt, dict(kwargs)), 0, ("probe", i, 1))
                for i, prompt in enumerate(prompts)]
    lm.clear_records()
    responses = lm.generate_until(requests)
    return responses, [lm.records[("probe", i)][0] for i in range(len(prompts))]


def answering_model(tokenizer, answer: str, thought: str = " the answer is"):
    """A scripted tiny model that thinks `thought`, ends thinking and writes \\boxed{answer}."""
    prompt_end = encode(tokenizer, tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True))[-1]
    return scripted_model(script([prompt_end, *encode(tokenizer, thought), THINK_END,
                                  *encode(tokenizer, f" \\boxed{{{answer}}}"), EOS]))
