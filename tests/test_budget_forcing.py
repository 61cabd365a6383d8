"""Budget forcing and token counting of ThinkingHFLM on real tiny transformers models.

Exact expectations come from scripted models: real tiny Llama models whose weights make the next
token a fixed function of the current one, so every generated token is known in advance and the
effect of each forced token (end of thinking, answer prompt, "Wait") is visible in the output.
"""
from __future__ import annotations

import pytest
import torch

from alloy.errors import AlloyError
from alloy.evaluation.lm import BudgetForcing, ThinkingDelimiters, ThinkingHFLM
from alloy.tiny import make_tiny_model
from tests.scripted_models import EOS, THINK_END, THINK_START, chat_prompt, encode, generate, script, scripted_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pieces(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = chat_prompt(tok)
    return dict(tok=tok, prompt=prompt, last=encode(tok, prompt)[-1], thought=encode(tok, " the answer is"),
                answer=encode(tok, " \\boxed{42}"), wait=encode(tok, "Wait"),
                answer_prompt=encode(tok, "\nFinal Answer:"))


def test_thinking_cap_is_exact_and_forces_an_answer(pieces):
    tok, thought, answer = pieces["tok"], pieces["thought"], pieces["answer"]
    # thinking that never ends: a loop over the thought tokens; after the forced answer prompt the
    # model writes its answer and stops
    loop = [pieces["last"], *thought, thought[0]]
    model = scripted_model(script(loop, [pieces["answer_prompt"][-1], *answer, EOS]))
    for cap in (0, 1, 5, 7):
        lm = ThinkingHFLM(model, tok, max_gen_toks=60, budget=BudgetForcing(max_thinking_tokens=cap))
        (response,), (record,) = generate(lm, [pieces["prompt"]])
        thinking = [thought[i % len(thought)] for i in range(cap)]
        expected = [*thinking, THINK_END, *pieces["answer_prompt"], *answer, EOS]
        assert record.completion == tok.decode(expected, skip_special_tokens=False)
        assert record.thinking_tokens == cap
        assert record.output_tokens == len(expected)
        assert record.thinking_capped and record.thinking and record.thinking_ended
        assert record.finish == "eos"
        assert response == "Final Answer: \\boxed{42}"


def test_natural_end_of_thinking_is_kept(pieces):
    tok, thought, answer = pieces["tok"], pieces["thought"], pieces["answer"]
    model = scripted_model(script([pieces["last"], *thought, THINK_END, *answer, EOS]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=60, budget=BudgetForcing(max_thinking_tokens=10))
    (response,), (record,) = generate(lm, [pieces["prompt"]])
    assert record.thinking_tokens == len(thought)
    assert not record.thinking_capped and record.waits == 0
    assert record.output_tokens == len(thought) + 1 + len(answer) + 1
    assert response == "\\boxed{42}"


@pytest.fixture(scope="module")
def early_stopper(pieces):
    """Thinks len(thought) tokens, then ends thinking; after an inserted "Wait" it thinks again."""
    thought, answer = pieces["thought"], pieces["answer"]
    return scripted_model(script([pieces["last"], *thought, THINK_END, *answer, EOS],
                                 [pieces["wait"][-1], thought[0]]))


@pytest.mark.parametrize("budget, waits", [
    (BudgetForcing(), 0),
    (BudgetForcing(wait_extensions=2), 2),  # no minimum: the first two ends become "Wait"
    (BudgetForcing(min_thinking_tokens=5, wait_extensions=3), 1),  # 3 < 5 -> Wait; then 3+2+3 >= 5
    (BudgetForcing(min_thinking_tokens=100, wait_extensions=2), 2),  # at most wait_extensions
])
def test_wait_replaces_an_early_end_of_thinking(pieces, early_stopper, budget, waits):
    tok, thought = pieces["tok"], pieces["thought"]
    lm = ThinkingHFLM(early_stopper, tok, max_gen_toks=80, budget=budget)
    (response,), (record,) = generate(lm, [pieces["prompt"]])
    expected_thinking = thought + (pieces["wait"] + thought) * waits
    expected = [*expected_thinking, THINK_END, *pieces["answer"], EOS]
    assert record.completion == tok.decode(expected, skip_special_tokens=False)
    assert record.completion.count("Wait") == record.waits == waits
    assert record.thinking_tokens == len(expected_thinking)
    assert response == "\\boxed{42}"


def test_wait_never_pushes_thinking_past_the_cap(pieces, early_stopper):
    tok, thought, wait = pieces["tok"], pieces["thought"], pieces["wait"]
    # the first Wait fits under the cap; one more thought token after it reaches the cap, which
    # forces the end of thinking and the answer prompt
    cap = len(thought) + len(wait) + 1
    model = scripted_model(script([pieces["last"], *thought, THINK_END, *pieces["answer"], EOS],
                                  [wait[-1], thought[0]], [pieces["answer_prompt"][-1], *pieces["answer"]]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=80, budget=BudgetForcing(max_thinking_tokens=cap, wait_extensions=5))
    _, (record,) = generate(lm, [pieces["prompt"]])
    assert record.thinking_tokens == cap
    assert record.waits == 1 and record.thinking_capped
    # a cap with no room for a Wait: the model's own end of thinking stands
    lm = ThinkingHFLM(early_stopper, tok, max_gen_toks=80,
                      budget=BudgetForcing(max_thinking_tokens=len(thought) + 1, wait_extensions=5))
    _, (record,) = generate(lm, [pieces["prompt"]])
    assert record.waits == 0 and not record.thinking_capped and record.thinking_tokens == len(thought)


def test_end_of_sequence_inside_thinking_counts_as_ending_it(pieces):
    tok, thought = pieces["tok"], pieces["thought"]
    model = scripted_model(script([pieces["last"], *thought, EOS], [pieces["wait"][-1], thought[0]]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=40, budget=BudgetForcing(wait_extensions=1))
    _, (record,) = generate(lm, [pieces["prompt"]])
    assert record.waits == 1 and record.finish == "eos"
    assert record.thinking_tokens == 2 * len(thought) + len(pieces["wait"])
    assert record.thinking and not record.thinking_ended


def test_thinking_opened_by_the_model_is_counted_and_capped(pieces):
    tok, thought, answer = pieces["tok"], pieces["thought"], pieces["answer"]
    prompt = "Question: what is 6*7?"
    model = scripted_model(script([encode(tok, prompt)[-1], THINK_START, *thought, THINK_END, *answer, EOS],
                                  [pieces["answer_prompt"][-1], *answer]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=40)
    (response,), (record,) = generate(lm, [prompt])
    assert record.thinking and record.thinking_tokens == len(thought)
    assert record.output_tokens == 1 + len(thought) + 1 + len(answer) + 1
    assert response == "\\boxed{42}"
    lm = ThinkingHFLM(model, tok, max_gen_toks=40, budget=BudgetForcing(max_thinking_tokens=1))
    _, (record,) = generate(lm, [prompt])
    assert record.thinking_tokens == 1 and record.thinking_capped


def test_stop_sequences_apply_to_the_answer_only(pieces):
    tok, thought = pieces["tok"], pieces["thought"]
    stop_after = encode(tok, " so")
    model = scripted_model(script([pieces["last"], *thought, THINK_END, *stop_after, *pieces["answer"], EOS]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=40)
    # "answer" occurs inside thinking, which stop sequences do not cut; "so" ends the answer
    (response,), (record,) = generate(lm, [pieces["prompt"]], until=["answer", "so"])
    assert record.finish == "stop"
    assert record.thinking_tokens == len(thought)
    assert record.output_tokens == len(thought) + 1 + len(stop_after)
    assert response == ""


def test_random_model_batches_respect_caps_with_seeded_sampling(tiny_tokenizer):
    tok = tiny_tokenizer
    model = make_tiny_model("qwen3", seed=3)
    prompts = [chat_prompt(tok, f"Question {i}: how many primes below {10 * i}?") for i in range(5)]
    budget = BudgetForcing(max_thinking_tokens=6, min_thinking_tokens=3, wait_extensions=1)
    lm = ThinkingHFLM(model, tok, max_gen_toks=20, batch_size=2, budget=budget, seed=11)
    first, records = generate(lm, prompts, do_sample=True, temperature=1.0)
    for record in records:
        assert record.thinking and record.thinking_tokens <= 6
        assert record.output_tokens <= 20
        assert record.waits <= 1
        if not record.thinking_ended:  # the model stopped inside thinking
            assert record.finish == "eos" and record.output_tokens == record.thinking_tokens + 1
        if record.thinking_capped:
            assert record.thinking_tokens == 6 and "</think>\nFinal Answer:" in record.completion
    assert any(r.thinking_capped for r in records)
    again, _ = generate(lm, prompts, do_sample=True, temperature=1.0)
    assert again == first  # every request has its own seeded generator
    lm.repeat = 1
    other, _ = generate(lm, prompts, do_sample=True, temperature=1.0)
    assert other != first


def test_weights_changed_in_place_are_seen(pieces):
    tok, thought = pieces["tok"], pieces["thought"]
    model = scripted_model(script([pieces["last"], *thought, THINK_END, *pieces["answer"], EOS]))
    other = scripted_model(script([pieces["last"], THINK_END, *encode(tok, " \\boxed{7}"), EOS]))
    lm = ThinkingHFLM(model, tok, max_gen_toks=40)
    (before,), _ = generate(lm, [pieces["prompt"]])
    with torch.no_grad():
        for target, source in zip(model.parameters(), other.parameters()):
            target.copy_(source)
    (after,), (record,) = generate(lm, [pieces["prompt"]])
    assert (before, after) == ("\\boxed{42}", "\\boxed{7}")
    assert record.thinking_tokens == 0


def test_budget_settings_are_validated(tiny_tokenizer):
    with pytest.raises(AlloyError, match="wait_extensions"):
        BudgetForcing(min_thinking_tokens=10)
    with pytest.raises(AlloyError, match="exceeds"):
        BudgetForcing(max_thinking_tokens=5, min_thinking_tokens=10, wait_extensions=1)
    with pytest.raises(AlloyError, match="non-negative"):
        BudgetForcing(max_thinking_tokens=-1)
    with pytest.raises(AlloyError, match="below max_gen_toks"):
        BudgetForcing(max_thinking_tokens=32).check_generation_budget(32)
    model = make_tiny_model("llama")
    with pytest.raises(AlloyError, match="below max_gen_toks"):
        ThinkingHFLM(model, tiny_tokenizer, max_gen_toks=8, budget=BudgetForcing(max_thinking_tokens=8))
    with pytest.raises(AlloyError, match="one token"):
        ThinkingDelimiters.from_tokenizer(tiny_tokenizer, start="<reasoning>", end="</reasoning>")


def test_a_task_cap_that_fills_the_context_is_refused(tiny_tokenizer):
    lm = ThinkingHFLM(make_tiny_model("llama"), tiny_tokenizer, max_gen_toks=8)
    with pytest.raises(AlloyError, match=rf"max_gen_toks \({lm.max_length}\) of task 'probe' leaves no room"):
        generate(lm, [chat_prompt(tiny_tokenizer)], max_gen_toks=lm.max_length)
    with pytest.raises(AlloyError, match="unsupported generation keys"):
        generate(lm, [chat_prompt(tiny_tokenizer)], beams=2)


def plain_tokenizer():
    """A byte-level BPE tokenizer without thinking delimiters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["plain text without any thinking markers 0123456789"] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_tokenizer_without_delimiters(tiny_tokenizer):
    plain = plain_tokenizer()
    assert ThinkingDelimiters.from_tokenizer(plain) is None
    assert ThinkingDelimiters.from_tokenizer(tiny_tokenizer).end_id == THINK_END
    model = make_tiny_model("llama", vocab_size=len(plain))
    with pytest.raises(AlloyError, match="thinking delimiters"):
        ThinkingHFLM(model, plain, max_gen_toks=16, budget=BudgetForcing(max_thinking_tokens=4))
    lm = ThinkingHFLM(model, plain, max_gen_toks=6)
    _, (record,) = generate(lm, ["plain text"])
    assert not record.thinking and record.thinking_tokens == 0 and record.output_tokens <= 6
