"""Answer extraction and normalization for the math and multiple-choice tasks.

The answer after the end-of-thinking delimiter (`</think>`) wins: a `\\boxed{}` inside the thinking
never overrides what the response states after it. The thinking is only a fallback, searched for a
`\\boxed{}` when nothing is stated after the delimiter (a response cut off in its thinking, or
closed by budget forcing). A response without the delimiter is all final text.

- AIME: the last `\\boxed{}` (nested braces handled), else "the answer is N", else the last integer;
  normalized to an integer 0-999 and compared exactly.
- GPQA: a choice letter A-D from "The answer is (C)", `\\boxed{C}`, "**C**", or a last "(C)".
- MATH-500: the last `\\boxed{}`, else "the answer is ..."; normalized LaTeX compared as strings,
  as exact fractions where both sides are numbers, and element-wise for comma-separated answers.

All scorers take one or several responses per document (lm-eval `repeats`) through
`response_texts` and return the mean score over them; `repeat_scores` adds pass@k.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Callable, Iterable

# ---------------------------------------------------------------------------- shared helpers


def response_texts(results: Iterable[Any]) -> list[str]:
    """Flatten lm-eval's `results` (one entry per request, each a string or a list of strings
    when all repeats are kept) into the list of response strings."""
    texts: list[str] = []
    for item in results:
        if isinstance(item, (list, tuple)):
            texts.extend(response_texts(item))
        else:
            texts.append("" if item is None else str(item))
    return texts


def keep_all_responses(resps: list, docs: list) -> list:
    """An lm-eval filter function (`function: custom`) that keeps every repeat of every request,
    where lm-eval's default filter would keep only the first."""
    return list(resps)


def mean_score(results: Iterable[Any], score: Callable[[str], float]) -> float:
    """Mean of `score(response)` over every response in `results` (0.0 when there is none)."""
    texts = response_texts(results)
    if not texts:
        return 0.0
    return sum(float(score(text)) for text in texts) / len(texts)


THINK_END = "</think>"


def split_thinking(response: str) -> tuple[str | None, str]:
    """(thinking, final): the text before and after the last `</think>`; (None, response) when
    the thinking was never closed."""
    head, sep, tail = response.rpartition(THINK_END)
    return (head, tail) if sep else (None, response)


def repeat_scores(results: Iterable[Any], score: Callable[[str], float]) -> dict[str, float]:
    """`exact_match` (the mean of `score` over the doc's n responses: its avg@n) and the unbiased
    `pass@k` for k in (1, 5, 10) up to n, a response counting as correct when its score is 1."""
    from alloy.evaluation.passk import pass_at_k_scores

    values = [float(score(text)) for text in response_texts(results)]
    mean = sum(values) / len(values) if values else 0.0
    return {"exact_match": mean, **pass_at_k_scores([value >= 1.0 for value in values])}


def final_segment(response: str) -> str:
    """The part after the last `</think>` (the whole response when thinking was not closed)."""
    return split_thinking(response)[1]


def stated_answer(response: str, last_number: bool = False) -> tuple[str, str] | None:
    """What a response states as its final answer, and how: ("boxed", content of the last
    `\\boxed{}`), ("stated", the text after the last "answer is"), or, with `last_number`,
    ("number", the last number); None when it states nothing.

    Looked for in the text after `</think>` first; only when that states nothing, the thinking's
    last `\\boxed{}` is the fallback.
    """
    thinking, final = split_thinking(response)
    boxed = last_boxed(final)
    if boxed is not None:
        return "boxed", boxed
    stated = _answer_is(final)
    if stated is not None:
        return "stated", stated
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", final) if last_number else []
    if numbers:
        return "number", numbers[-1]
    boxed = last_boxed(thinking) if thinking is not None else None
    return ("boxed", boxed) if boxed is not None else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` in `text`, with nested braces; also the
    unbraced form `\\boxed 5`. None when there is none or its braces never close."""
    match = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text):
        pass
    if match is None:
        return None
    start = match.end()
    if match.group(1) is None:
        bare = re.match(r"[^\s$]+", text[start:])
        return bare.group(0) if bare else None
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index]
    return None


_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:)?\s*[:=]?\s*\$*\s*(?:\\\(|\\\[)?\s*(?P<value>[^\n]+)",
    re.IGNORECASE,
)


def _answer_is(text: str) -> str | None:
    """The text after the last "answer is" / "answer:" in `text`, or None."""
    found = None
    for found in _ANSWER_IS.finditer(text):
        pass
    return found.group("value").strip() if found else None


# ---------------------------------------------------------------------------- AIME

def _aime_value(value: Fraction | None) -> int | None:
    if value is None or value.denominator != 1 or not 0 <= value <= 999:
        return None
    return int(value)


def _boxed_integer(content: str) -> int | None:
    """The AIME integer a boxed content states ("33", "033", "204 minutes"), else None."""
    cleaned = normalize_math_answer(content).replace("*", "")
    value = _as_number(cleaned)
    if value is None:
        with_unit = re.fullmatch(r"(\d+)[A-Za-z]*", cleaned)
        value = Fraction(with_unit.group(1)) if with_unit else None
    return _aime_value(value)


def _leading_integer(text: str) -> int | None:
    """The AIME integer at the start of an answer phrase ("$204$.", "**33**, since ...")."""
    match = re.match(r"[\s$*({]*(-?\d[\d,]*(?:\.\d+)?)", text)
    if not match:
        return None
    return _aime_value(Fraction(match.group(1).replace(",", "")))


def extract_aime_answer(response: str) -> int | None:
    """The AIME answer (integer 0-999) of a response, or None when it states none in range.

    After `</think>`: the last boxed answer, else the last "answer is N" (or "answer: N"), else
    the last number; with nothing there, the thinking's last boxed answer (`stated_answer`).
    """
    found = stated_answer(response, last_number=True)
    if found is None:
        return None
    kind, text = found
    if kind == "boxed":
        return _boxed_integer(text)
    if kind == "stated":
        return _leading_integer(text)
    return _aime_value(Fraction(text.replace(",", "")))


def aime_target(answer: Any) -> int:
    """A dataset's AIME answer ("033", "33", 33) as an integer."""
    return int(str(answer).strip())


def aime_score(response: str, answer: Any) -> float:
    """1.0 if the response's AIME answer equals the target, else 0.0."""
    return float(extract_aime_answer(response) == aime_target(answer))


# ---------------------------------------------------------------------------- GPQA

CHOICE_LETTERS = "ABCD"
_LETTER = r"\(?\s*([ABCD])\s*\)?"
_GPQA_PATTERNS = (
    re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?\s*([ABCD])\s*\)?\s*\}?\s*\}"),
    re.compile(r"(?i:answer)\s*(?:is|:)\s*[:\s]*(?:\*\*|\$)?\s*(?:(?i:option)\s*)?" + _LETTER + r"(?![A-Za-z])"),
    re.compile(r"\*\*\s*(?:option\s*)?" + _LETTER + r"\s*(?:[.:)]|\*\*)"),
    re.compile(r"\(([ABCD])\)"),
)


def extract_choice_letter(response: str) -> str | None:
    """The chosen letter A-D of a multiple-choice response, or None.

    Tried in order on the text after `</think>` (then on the whole response): `\\boxed{C}`,
    "answer is (C)" / "Answer: C", a bold "**C**", a last "(C)"; the last match of the first
    pattern that matches wins.
    """
    for text in dict.fromkeys((final_segment(response), response)):
        for pattern in _GPQA_PATTERNS:
            matches = pattern.findall(text)
            if matches:
                return matches[-1].upper()
    return None


def gpqa_score(response: str, answer: str) -> float:
    """1.0 if the response's letter equals the target ("(C)" or "C"), else 0.0."""
    target = answer.strip().strip("()").upper()
    return float(extract_choice_letter(response) == target)


# ---------------------------------------------------------------------------- MATH-500

_UNIT_WORDS = (
    "degrees", "degree", "cm", "centimeters", "meters", "meter", "inches", "inch", "feet", "foot",
    "units", "unit", "sq", "square", "dollars", "cents", "minutes", "hours", "seconds", "days",
    "mph", "km", "miles", "mile", "points", "students", "people",
)


def _strip_text_units(text: str) -> str:
    """Drop `\\text{ unit}` after a number; unwrap `\\text{word}` elsewhere."""
    text = re.sub(r"(\d)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z ]*\}", r"\1", text)
    return re.sub(r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf|bf)\{([^{}]*)\}", r"\1", text)


def _fix_fracs(text: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}, \frac{1}2 -> \frac{1}{2}."""
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", text)


def normalize_math_answer(answer: str) -> str:
    """A canonical string for a LaTeX answer: spacing, \\left/\\right, \\dfrac, degrees, units,
    `$`, `x=` prefixes and trailing periods removed; \\frac and \\sqrt arguments braced."""
    text = str(answer).strip()
    text = text.replace("\n", " ").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    text = text.replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = re.sub(r"\^\s*\{?\\circ\}?", "", text).replace("°", "").replace("\\degree", "")
    text = _strip_text_units(text)
    text = re.sub(r"\\displaystyle", "", text)
    text = text.replace("\\ ", " ").replace("~", " ")
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    words = "|".join(_UNIT_WORDS)
    text = re.sub(rf"^(-?[\d.,/]+)\s*(?:{words})(?:\^?2|\^\{{2\}})?$", r"\1", text)
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text)
    text = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", text)
    text = _fix_fracs(text)
    text = text.replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    if text.startswith("{") and text.endswith("}") and _balanced(text[1:-1]):
        text = text[1:-1]
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _as_number(text: str) -> Fraction | None:
    """An exact value for numbers written as 5, -0.25, 1/2, \\frac{1}{2}, -\\frac{3}{4}."""
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", text)
    try:
        if match:
            value = Fraction(match.group(2)) / Fraction(match.group(3))
            return -value if match.group(1) else value
        match = re.fullmatch(r"(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?)", text)
        if match:
            return Fraction(match.group(1)) / Fraction(match.group(2))
        if re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", text):
            return Fraction(text)
    except ZeroDivisionError:
        return None
    return None


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside braces/brackets/parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _same_value(left: str, right: str) -> bool:
    if left == right:
        return True
    a, b = _as_number(left), _as_number(right)
    return a is not None and a == b


def math_equal(prediction: str | None, target: str) -> bool:
    """Whether two LaTeX answers are equivalent under `normalize_math_answer` and exact numbers.

    Comma-separated answers compare element-wise: in order inside (), [] (tuples, intervals),
    as sets when bare ("3, 5, 7" equals "7,5,3").
    """
    if prediction is None:
        return False
    left, right = normalize_math_answer(prediction), normalize_math_answer(target)
    if _same_value(left, right):
        return True
    for opening, closing in ("()", "[]"):
        if left[:1] == right[:1] == opening and left[-1:] == right[-1:] == closing:
            left_parts, right_parts = _split_top_level(left[1:-1]), _split_top_level(right[1:-1])
            return len(left_parts) == len(right_parts) and all(
                _same_value(a, b) for a, b in zip(left_parts, right_parts)
            )
    left_parts, right_parts = _split_top_level(left), _split_top_level(right)
    if len(left_parts) > 1 and len(left_parts) == len(right_parts):
        unmatched = list(right_parts)
        for part in left_parts:
            hit = next((other for other in unmatched if _same_value(part, other)), None)
            if hit is None:
                return False
            unmatched.remove(hit)
        return True
    return False


def extract_math_answer(response: str) -> str | None:
    """The final answer of a MATH response after `</think>`: the last `\\boxed{}`, else
    "the answer is ..."; with nothing there, the thinking's last boxed answer (`stated_answer`)."""
    found = stated_answer(response)
    if found is None:
        return None
    kind, text = found
    return text if kind == "boxed" else text.strip().rstrip(".").strip("$ ")


def math_score(response: str, answer: str) -> float:
    """1.0 if the response's final answer is equivalent to the target, else 0.0."""
    return float(math_equal(extract_math_answer(response), answer))
