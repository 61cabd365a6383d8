"""What the vLLM swap tests (CPU and GPU) share: the children's recipes over three parents, the
prompts and their greedy ids, and swapping each child into an engine in turn."""
from __future__ import annotations

PROMPTS = [list(range(10, 40)), [1, 7, 9, 11], list(range(100, 430))]  # the last is longer than a cache block


def recipes(paths) -> list[dict]:
    """Two children of the parents (v3, r1, r2): a linear mix, and one that merges each group its own way."""
    v3, r1, r2 = (str(p) for p in paths)
    return [
        {"merge_method": "linear", "models": [{"model": v3, "parameters": {"weight": 0.2}},
                                              {"model": r1, "parameters": {"weight": 0.5}},
                                              {"model": r2, "parameters": {"weight": 0.3}}]},
        {"merge_method": "linear", "base_model": v3, "dtype": "bfloat16",
         "models": [{"model": v3, "parameters": {"weight": 1.0}}, {"model": r1, "parameters": {"weight": 0.0}},
                    {"model": r2, "parameters": {"weight": 0.0}}],
         "groups": {"routed_experts": {"merge_method": "aoe", "parameters": {"threshold": 0.01},
                                       "model_parameters": {v3: {"weight": 0.0}, r1: {"weight": 0.6},
                                                            r2: {"weight": 0.4}}},
                    "attention": {"model_parameters": {v3: {"weight": 0.0}, r1: {"weight": 0.0},
                                                       r2: {"weight": 1.0}}}}},
    ]


def greedy(llm) -> list[list[int]]:
    """The engine's greedy token ids for PROMPTS (12 new tokens each)."""
    from vllm import SamplingParams

    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(max_tokens=12, temperature=0),
                           use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def swap_each(engine, children: list[dict], measure=greedy) -> list:
    """`measure(engine.llm)` after swapping in each child in turn, and then the first child again."""
    outputs = []
    for recipe in (*children, children[0]):
        engine.swap(recipe)
        outputs.append(measure(engine.llm))
    return outputs
