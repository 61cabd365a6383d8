"""Answer extraction and normalization on real AIME / MATH-500 text and synthetic GPQA."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alloy.evaluation.answers import (
    aime_score,
    extract_aime_answer,
    extract_choice_letter,
    extract_math_answer,
    gpqa_score,
    keep_all_responses,
    last_boxed,
    math_equal,
    math_score,
    mean_score,
    normalize_math_answer,
    response_texts,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def aime() -> list[dict]:
    return read_jsonl("aime24.jsonl")


@pytest.fixture(scope="module")
def math500() -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl("math500_50.jsonl")}


def reasoning(problem: str, ending: str) -> str:
    return f"<think>\nThe problem says: {problem}\nLet me work through it: 2 + 3 = 5, then 17.\n</think>\n{ending}"


# ---------------------------------------------------------------------------- AIME


def test_aime_correct_and_wrong_boxed_answers_on_real_problems(aime):
    assert len(aime) == 30
    for row in aime:
        target = int(row["answer"])
        assert aime_score(reasoning(row["problem"], f"The final answer is $\\boxed{{{target}}}$."), row["answer"]) == 1.0
        wrong = (target + 1) % 1000
        assert aime_score(reasoning(row["problem"], f"So the answer is \\boxed{{{wrong}}}."), row["answer"]) == 0.0


def test_aime_last_boxed_wins_and_nested_braces(aime):
    row = aime[0]  # 2024-I-1, answer 204
    assert row["answer"] == "204"
    response = reasoning(row["problem"], "First I thought \\boxed{200}, but correcting: \\boxed{\\mathbf{204}}")
    assert extract_aime_answer(response) == 204
    assert extract_aime_answer("\\boxed{{204}}") == 204
    assert extract_aime_answer("\\boxed{\\text{204 minutes}}") == 204
    assert extract_aime_answer("\\boxed{204 \\text{ minutes}}") == 204
    assert extract_aime_answer("\\boxed{\\frac{1}{2}}") is None
    assert extract_aime_answer("cut off at \\boxed{204") == 204  # unclosed: falls back to the last number


def test_aime_fallbacks(aime):
    row = next(r for r in aime if r["id"] == "2024-I-2")  # answer 25
    assert aime_score(reasoning(row["problem"], "Therefore the answer is 25."), row["answer"]) == 1.0
    assert aime_score(reasoning(row["problem"], "Final answer: **25**"), row["answer"]) == 1.0
    assert aime_score(reasoning(row["problem"], "Multiplying, xy comes out as 25"), row["answer"]) == 1.0
    # the thinking part's numbers do not count when the final part states nothing else
    assert extract_aime_answer(reasoning(row["problem"], "I am not sure.")) is None


def test_aime_leading_zeros_and_range(aime):
    row = next(r for r in aime if r["answer"] == "33")  # 2024-I-4, answer 33 (officially 033)
    assert aime_score("\\boxed{033}", row["answer"]) == 1.0
    assert aime_score("\\boxed{33}", "033") == 1.0
    assert extract_aime_answer("\\boxed{1000}") is None
    assert extract_aime_answer("\\boxed{-5}") is None
    assert extract_aime_answer("\\boxed{12.5}") is None
    assert extract_aime_answer("the answer is 1,234") is None
    assert extract_aime_answer("\\boxed{999}") == 999
    assert extract_aime_answer("\\boxed{0}") == 0


def test_last_boxed_helper():
    assert last_boxed("a \\boxed{x^{2}} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed 7 is it") == "7"
    assert last_boxed("\\fbox{3}") == "3"
    assert last_boxed("no box") is None


def test_mean_over_repeats(aime):
    row = aime[0]
    results = [["\\boxed{204}", "\\boxed{205}", "answer is 204", "nothing"]]
    assert mean_score(results, lambda r: aime_score(r, row["answer"])) == 0.5
    assert mean_score(["\\boxed{204}"], lambda r: aime_score(r, row["answer"])) == 1.0
    assert response_texts([["a", "b"], "c"]) == ["a", "b", "c"]
    assert keep_all_responses([["a", "b"]], [{}]) == [["a", "b"]]


# ---------------------------------------------------------------------------- GPQA


@pytest.mark.parametrize(
    "response, letter",
    [
        ("Reasoning... The answer is (C)", "C"),
        ("Reasoning... the answer is C.", "C"),
        ("**Answer: B**", "B"),
        ("Final answer: **D**", "D"),
        ("After all this, **A** is right.", "A"),
        ("So we get $\\boxed{C}$", "C"),
        ("So we get \\boxed{(B)}", "B"),
        ("So we get \\boxed{\\text{D}}", "D"),
        ("(A) looks tempting but (D) is consistent with the data.", "D"),
        ("<think>maybe (A)</think>The answer is (B).", "B"),
        ("The answer is a subtle one; I pick (C)", "C"),
        ("I cannot decide.", None),
    ],
)
def test_gpqa_letter_extraction(response, letter):
    assert extract_choice_letter(response) == letter


def test_gpqa_score():
    assert gpqa_score("The answer is (C)", "(C)") == 1.0
    assert gpqa_score("The answer is (C)", "(B)") == 0.0
    assert gpqa_score("nothing", "(A)") == 0.0


# ---------------------------------------------------------------------------- MATH-500


def test_math500_real_answers_match_equivalent_forms(math500):
    assert math_equal("(3, \\frac{\\pi}{2})", math500["test/precalculus/807.json"]["answer"])
    assert math_equal("\\dfrac{14}{3}", math500["test/algebra/2584.json"]["answer"])
    by_answer = {row["answer"]: row for row in math500.values()}
    equivalents = {
        "\\frac{14}{3}": ["14/3", "\\tfrac{14}{3}", "\\frac{14}{3}."],
        "90^\\circ": ["90", "90^{\\circ}", "90°", "90 degrees"],
        "\\text{Evelyn}": ["Evelyn", "\\textbf{Evelyn}"],
        "x=5": ["5", "x = 5"],
        "1,-2": ["-2, 1", "1, -2"],
        "3, 5, 7": ["7,5,3", "3,5,7"],
        "11\\sqrt2": ["11\\sqrt{2}", "11 \\sqrt{2}"],
        "1.25": ["\\frac{5}{4}", "5/4", "1.250"],
        "\\frac{3}{2}": ["1.5", "3/2", "\\dfrac32"],
        "6 - 5i": ["6-5i"],
        "\\left( 3, \\frac{\\pi}{2} \\right)": ["(3,\\frac{\\pi}{2})", "\\left(3, \\dfrac{\\pi}{2}\\right)"],
        "2000": ["2,000", "\\$2000", "2000.0"],
        "52_8": ["52_8"],
        "p - q": ["p-q"],
    }
    for answer, forms_of in equivalents.items():
        assert answer in by_answer, answer
        for form in forms_of:
            assert math_equal(form, answer), (form, answer)


def test_math500_non_equivalent_forms(math500):
    assert not math_equal("\\frac{14}{5}", "\\frac{14}{3}")
    assert not math_equal("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert not math_equal("1,-3", "1,-2")
    assert not math_equal("6+5i", "6 - 5i")
    assert not math_equal(None, "5")
    assert not math_equal("52", "52_8")


def test_math500_scoring_real_rows(math500):
    for row in math500.values():
        response = reasoning(row["problem"], f"Hence the result is $\\boxed{{{row['answer']}}}$.")
        assert math_score(response, row["answer"]) == 1.0, row["id"]
        assert math_score(reasoning(row["problem"], "\\boxed{\\text{unknown}}"), row["answer"]) == 0.0
    assert extract_math_answer("so the answer is $\\frac{3}{56}$.") == "\\frac{3}{56}"
    assert normalize_math_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"


# ---------------------------------------------------------------------------- answer after thinking wins


def test_aime_answer_after_thinking_beats_a_box_inside_it():
    assert extract_aime_answer("<think>\nso \\boxed{77}\n</think>\nThe answer is 78.") == 78
    # the mirror: the box after the delimiter beats a stated answer inside the thinking
    assert extract_aime_answer("<think>\nThe answer is 78.\n</think>\nso \\boxed{77}") == 77
    # an out-of-range answer stated after thinking is wrong, not replaced by the thinking's box
    assert extract_aime_answer("<think>\\boxed{77}</think>\n\\boxed{1000}") is None


def test_aime_thinking_is_the_fallback_when_nothing_follows():
    assert extract_aime_answer("<think>\nso \\boxed{77}\n</think>\n") == 77
    assert extract_aime_answer("<think>\nso \\boxed{77}\n</think>\nI cannot say more.") == 77
    assert extract_aime_answer("<think>\nmaybe 77\n</think>\nI cannot say more.") is None
    assert aime_score("<think>\nso \\boxed{77}\n</think>\nThe answer is 78.", "78") == 1.0
    assert aime_score("<think>\nso \\boxed{77}\n</think>\nThe answer is 78.", "77") == 0.0


def test_math_answer_after_thinking_beats_a_box_inside_it(math500):
    assert extract_math_answer("<think>\nso \\boxed{\\frac{1}{2}}\n</think>\nThe answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert extract_math_answer("<think>\nThe answer is $\\frac{3}{4}$.\n</think>\nso \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_math_answer("<think>\nso \\boxed{\\frac{1}{2}}\n</think>\n") == "\\frac{1}{2}"
    row = next(iter(math500.values()))
    right_inside = "\\boxed{" + row["answer"] + "}"  # the right answer, but only inside the thinking
    assert math_score(f"<think>{right_inside}</think>\nThe answer is $\\pi^{{17}}+1$.", row["answer"]) == 0.0
    assert math_score(f"<think>so \\boxed{{\\pi^{{17}}}}</think>\nThe final answer is \\boxed{{{row['answer']}}}", row["answer"]) == 1.0
