"""Three synthetic domains for the demo, written in the benchmarks' own record formats.

Each domain yields problems as (a) evaluation records that alloy's evaluators read as
`<data_dir>/<task>.jsonl`, and (b) teacher traces `{"prompt", "response"}` for the branch phase, whose
responses look like a reasoning model's: `<think>\\n…\\n</think>\\n\\n` and then the answer.

Trace prompts are the prompts alloy's evaluators (`evaluators/`) show for the same record, so the
experts learn the format they are scored in:

- `math` → `aime24` records `{id, problem, answer}` (integer answers 0–999 as strings); the prompt is
  the aime task's `doc_to_text`; responses end with `\\boxed{N}`.
- `science` → `gpqa_diamond` records in GPQA's raw format (`Question`, `Correct Answer`,
  `Incorrect Answer 1..3`, plus `Record ID`). The evaluator shuffles the choices itself (lm-eval's
  seeded shuffle over the file); a trace's prompt is the gpqa task's `doc_to_text` over the choices
  shuffled by the same code (`alloy.evaluation.datasets.gpqa_records`) seeded per question, and its
  response ends with "The answer is (X)." (the final period also lets lm-eval's own strict
  `(?<=The answer is )(.*)(?=.)` filter capture "(X)").
- `code` → `livecodebench` records (stdin problems, LiveCodeBench's field names, tests as a JSON
  string); the prompt is the evaluator's `build_prompt`; responses end with a fenced ```python
  block. Every program is run on its tests in a subprocess (the generator's own code, so no sandbox)
  and compared as the evaluator compares, before it is used.

Generation is deterministic given the seed, and prefix-stable: the first k problems of a domain do not
depend on how many more are asked for, so the evaluation split does not move when `n_train` changes.
"""
from __future__ import annotations

import json
import math
import operator
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from alloy.io.atomic import atomic_write_text
from alloy.errors import AlloyError
from alloy.evaluation.datasets import gpqa_records
from alloy.evaluation.livecodebench import build_prompt, extract_code, stdout_matches

DOMAIN_TASKS: dict[str, str] = {"math": "aime24", "science": "gpqa_diamond", "code": "livecodebench"}
"""Domain name -> the evaluation task whose `<task>.jsonl` its records are written to."""

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia", "Kofi", "Lena")
_MAX_ATTEMPTS_PER_ITEM = 200


@dataclass(frozen=True)
class DomainItem:
    """One synthetic problem: its record in the benchmark's format and a teacher trace for it."""

    domain: str
    key: str  # identity of the problem, used to keep problems distinct
    record: dict[str, Any]
    trace: dict[str, str]


@dataclass(frozen=True)
class DomainFiles:
    """Where `write_domain_data` put its files."""

    eval_files: dict[str, Path]  # task -> <out>/eval/<task>.jsonl
    trace_files: dict[str, Path]  # domain -> <out>/traces/<domain>.jsonl


def _think(steps: Iterable[str]) -> str:
    return "<think>\n" + "\n".join(steps) + "\n</think>\n\n"


# ----------------------------------------------------------------------------------------- math


def math_prompt(problem: str) -> str:
    """The prompt of a math trace: the aime task's `doc_to_text` (evaluators/aime)."""
    return f"{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def _math_packs(rng: random.Random):
    name, thing = rng.choice(_NAMES), rng.choice(("marbles", "stickers", "apples", "cards", "stamps"))
    a, b, c = rng.randint(2, 99), rng.randint(2, 20), rng.randint(2, 40)
    ans = a + b * c
    problem = (f"{name} has {a} {thing}. {name} buys {b} packs with {c} {thing} in each pack. "
               f"How many {thing} does {name} have now?")
    steps = [f"{name} starts with {a} {thing}.", f"The packs hold {b} * {c} = {b * c} {thing}.",
             f"Together: {a} + {b * c} = {ans}.", f"Wait, let me check: {ans} - {b * c} = {a}. Correct."]
    return problem, ans, steps


def _math_distance(rng: random.Random):
    speed, hours = rng.randint(10, 99), rng.randint(2, 9)
    ans = speed * hours
    problem = f"A train travels at {speed} kilometers per hour for {hours} hours. How many kilometers does it travel?"
    steps = ["Distance is speed times time.", f"{speed} * {hours} = {ans}.",
             f"Wait, let me check: {ans} / {hours} = {speed}. Correct."]
    return problem, ans, steps


def _math_leftover(rng: random.Random):
    total, box = rng.randint(100, 999), rng.randint(3, 30)
    full, ans = divmod(total, box)
    problem = (f"A baker makes {total} cookies and packs them into boxes of {box}. How many cookies are "
               f"left over after filling as many boxes as possible?")
    steps = [f"{total} divided by {box} is {full} full boxes.", f"They hold {full} * {box} = {full * box} cookies.",
             f"Left over: {total} - {full * box} = {ans}.", f"Wait, {ans} < {box}, so no more boxes fit. Correct."]
    return problem, ans, steps


def _math_spending(rng: random.Random):
    name = rng.choice(_NAMES)
    have = rng.randint(200, 999)
    book = rng.randint(10, have // 2)
    lunch = rng.randint(5, have - book)
    ans = have - book - lunch
    problem = (f"{name} has {have} dollars, spends {book} dollars on a book and {lunch} dollars on lunch. "
               f"How many dollars are left?")
    steps = [f"Spent in total: {book} + {lunch} = {book + lunch}.", f"Left: {have} - {book + lunch} = {ans}.",
             f"Wait, let me check: {ans} + {book + lunch} = {have}. Correct."]
    return problem, ans, steps


def _math_triangular(rng: random.Random):
    n = rng.randint(5, 44)
    ans = n * (n + 1) // 2
    problem = f"What is the sum of all integers from 1 to {n}?"
    steps = [f"Pair the terms: the sum is n(n+1)/2 with n = {n}.", f"{n} * {n + 1} = {n * (n + 1)}.",
             f"Half of it is {ans}.", f"Wait, the average term is {(n + 1) / 2} and there are {n} terms: {ans}. Correct."]
    return problem, ans, steps


def _math_perimeter(rng: random.Random):
    length, width = rng.randint(3, 200), rng.randint(3, 200)
    ans = 2 * (length + width)
    problem = f"A rectangle has length {length} and width {width}. What is its perimeter?"
    steps = ["The perimeter is 2 * (length + width).", f"{length} + {width} = {length + width}.",
             f"2 * {length + width} = {ans}."]
    return problem, ans, steps


def _math_modpow(rng: random.Random):
    base, exp, mod = rng.randint(2, 20), rng.randint(2, 8), rng.randint(7, 997)
    ans = pow(base, exp, mod)
    problem = f"Find the remainder when ${base}^{{{exp}}}$ is divided by ${mod}$."
    steps, value = [f"Work modulo {mod}, one power at a time."], base % mod
    steps.append(f"{base}^1 = {value} (mod {mod}).")
    for k in range(2, exp + 1):
        nxt = value * base % mod
        steps.append(f"{base}^{k} = {value} * {base} = {value * base} = {nxt} (mod {mod}).")
        value = nxt
    steps.append(f"So the remainder is {ans}.")
    return problem, ans, steps


def _math_divisors(rng: random.Random):
    n = rng.randint(2, 999)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    problem = f"How many positive divisors does {n} have?"
    steps = [f"List the divisors of {n}: {', '.join(map(str, divisors))}.", f"That is {len(divisors)} divisors.",
             "Wait, let me check the pairs d and n/d: each divisor appears with its partner. Correct."]
    return problem, len(divisors), steps


_MATH_TEMPLATES = (_math_packs, _math_distance, _math_leftover, _math_spending, _math_triangular,
                   _math_perimeter, _math_modpow, _math_divisors)


def _math_item(rng: random.Random, index: int) -> DomainItem:
    problem, ans, steps = rng.choice(_MATH_TEMPLATES)(rng)
    assert 0 <= ans <= 999, (problem, ans)
    response = _think(steps + [f"So the answer is {ans}."]) + f"The answer is \\boxed{{{ans}}}"
    record = {"id": f"demo-math-{index:04d}", "problem": problem, "answer": str(ans)}
    return DomainItem("math", problem, record, {"prompt": math_prompt(problem), "response": response})


# -------------------------------------------------------------------------------------- science

_ELEMENTS = (("hydrogen", 1), ("helium", 2), ("lithium", 3), ("beryllium", 4), ("boron", 5), ("carbon", 6),
             ("nitrogen", 7), ("oxygen", 8), ("fluorine", 9), ("neon", 10), ("sodium", 11), ("magnesium", 12),
             ("aluminium", 13), ("silicon", 14), ("phosphorus", 15), ("sulfur", 16), ("chlorine", 17),
             ("argon", 18), ("potassium", 19), ("calcium", 20), ("iron", 26), ("copper", 29), ("zinc", 30))
_COMPOUNDS = (("water", 18), ("carbon dioxide", 44), ("sodium chloride", 58), ("methane", 16),
              ("ammonia", 17), ("glucose", 180), ("oxygen gas", 32), ("nitrogen gas", 28))
_FACTS = (
    ("Which organelle produces most of a eukaryotic cell's ATP?", "Mitochondrion",
     ("Ribosome", "Golgi apparatus", "Lysosome")),
    ("Which molecule carries amino acids to the ribosome during translation?", "Transfer RNA",
     ("Messenger RNA", "DNA polymerase", "Ribosomal RNA")),
    ("Which gas is the main product of photosynthesis released into the air?", "Oxygen",
     ("Carbon dioxide", "Nitrogen", "Methane")),
    ("Which particle has no electric charge?", "Neutron", ("Proton", "Electron", "Positron")),
    ("Which type of bond shares electron pairs between atoms?", "Covalent bond",
     ("Ionic bond", "Hydrogen bond", "Metallic bond")),
    ("Which planet is closest to the Sun?", "Mercury", ("Venus", "Mars", "Earth")),
)


def gpqa_prompt(question: str, choices: list[str]) -> str:
    """The prompt of a science trace: the gpqa_diamond task's `doc_to_text` (evaluators/gpqa)."""
    a, b, c, d = choices
    return ("Answer the following multiple-choice question. Think step by step, then finish your response with "
            "\"The answer is (X)\" where X is A, B, C or D.\n\n"
            f"{question}\n\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}")


def _distractors(rng: random.Random, correct: int, candidates: Iterable[int]) -> list[int]:
    """Three distinct positive wrong values, taken from `candidates` and then from nearby numbers."""
    out: list[int] = []
    for value in list(candidates) + [correct + k for k in (1, -1, 2, -2, 3, 5, 7, 10)]:
        if value > 0 and value != correct and value not in out:
            out.append(value)
    return rng.sample(out[:6], 3)


def _sci_force(rng: random.Random):
    m, a = rng.randint(2, 50), rng.randint(2, 20)
    f = m * a
    q = f"An object of mass {m} kg accelerates at {a} m/s^2. What is the net force acting on it?"
    wrong = _distractors(rng, f, [m + a, 2 * f, m * (a + 1), (m - 1) * a])
    steps = [f"Newton's second law: F = m a = {m} kg * {a} m/s^2 = {f} N.",
             f"Wait, let me check: {f} N / {m} kg = {a} m/s^2. Correct."]
    return q, f"{f} N", [f"{w} N" for w in wrong], steps


def _sci_wave(rng: random.Random):
    freq, wavelength = rng.randint(2, 99), rng.randint(2, 30)
    v = freq * wavelength
    q = f"A wave has a frequency of {freq} Hz and a wavelength of {wavelength} m. What is its speed?"
    wrong = _distractors(rng, v, [freq + wavelength, 2 * v, freq * (wavelength - 1), freq * (wavelength + 2)])
    steps = [f"Wave speed is frequency times wavelength: v = {freq} Hz * {wavelength} m = {v} m/s."]
    return q, f"{v} m/s", [f"{w} m/s" for w in wrong], steps


def _sci_kinetic(rng: random.Random):
    m, v = 2 * rng.randint(1, 10), rng.randint(1, 20)
    e = m * v * v // 2
    q = f"What is the kinetic energy of a {m} kg object moving at {v} m/s?"
    wrong = _distractors(rng, e, [m * v * v, m * v // 2, m * v, e + m])
    steps = [f"Kinetic energy is (1/2) m v^2 = 0.5 * {m} * {v}^2.", f"{v}^2 = {v * v}; 0.5 * {m} * {v * v} = {e} J.",
             f"Wait, forgetting the 1/2 would give {m * v * v} J, which is a trap. The result is {e} J."]
    return q, f"{e} J", [f"{w} J" for w in wrong], steps


def _sci_ohm(rng: random.Random):
    current, resistance = rng.randint(2, 20), rng.randint(2, 60)
    volts = current * resistance
    q = f"A current of {current} A flows through a {resistance} ohm resistor. What is the voltage across it?"
    wrong = _distractors(rng, volts, [current + resistance, 2 * volts, (current + 1) * resistance])
    steps = [f"Ohm's law: V = I R = {current} A * {resistance} ohm = {volts} V."]
    return q, f"{volts} V", [f"{w} V" for w in wrong], steps


def _sci_protons(rng: random.Random):
    element, z = rng.choice(_ELEMENTS)
    q = f"How many protons are in the nucleus of a neutral {element} atom?"
    wrong = _distractors(rng, z, [z + 1, z - 1, 2 * z, z + 2])
    steps = [f"The number of protons equals the atomic number of {element}, which is {z}."]
    return q, str(z), [str(w) for w in wrong], steps


def _sci_moles(rng: random.Random):
    compound, molar = rng.choice(_COMPOUNDS)
    moles = rng.randint(2, 12)
    grams = moles * molar
    q = f"How many moles are in {grams} g of {compound} (molar mass {molar} g/mol)?"
    wrong = _distractors(rng, moles, [moles + 1, moles * 2, moles - 1, moles + 3])
    steps = [f"Moles = mass / molar mass = {grams} g / {molar} g/mol = {moles} mol.",
             f"Wait, let me check: {moles} * {molar} = {grams}. Correct."]
    return q, f"{moles} mol", [f"{w} mol" for w in wrong], steps


def _sci_fact(rng: random.Random):
    q, correct, wrong = rng.choice(_FACTS)
    return q, correct, list(wrong), [f"This is a standard fact: the answer is {correct}."]


_SCIENCE_TEMPLATES = (_sci_force, _sci_wave, _sci_kinetic, _sci_ohm, _sci_protons, _sci_moles, _sci_fact)


def _science_item(rng: random.Random, index: int) -> DomainItem:
    question, correct, wrong, steps = rng.choice(_SCIENCE_TEMPLATES)(rng)
    assert len({correct, *wrong}) == 4, (question, correct, wrong)
    record = {"Record ID": f"demo-science-{index:04d}", "Question": question, "Correct Answer": correct,
              "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1], "Incorrect Answer 3": wrong[2]}
    doc = gpqa_records([record], seed=rng.randrange(2**32))[0]  # the evaluator's shuffle, seeded per question
    letter = doc["answer"].strip("()")
    response = (_think(steps + [f"Among the choices, {correct} is option ({letter})."])
                + f"{correct} is correct. The answer is ({letter}).")
    return DomainItem("science", question, record, {"prompt": gpqa_prompt(doc["question"], doc["choices"]),
                                                    "response": response})


# ----------------------------------------------------------------------------------------- code


@dataclass(frozen=True)
class _CodeTask:
    title: str
    statement: str
    input_format: str
    program: str
    solve: Callable[[str], str]  # reference: stdin text -> expected stdout text
    make_input: Callable[[random.Random], str]
    idea: str  # one sentence of the trace's reasoning


def _ints_line(rng: random.Random, n: int, lo: int, hi: int) -> str:
    return " ".join(str(rng.randint(lo, hi)) for _ in range(n))


def _list_input(rng: random.Random) -> str:
    n = rng.randint(1, 8)
    return f"{n}\n{_ints_line(rng, n, -50, 50)}\n"


def _code_arith(rng: random.Random) -> _CodeTask:
    op, word, apply = rng.choice((("+", "A + B", operator.add), ("-", "A - B", operator.sub),
                                  ("*", "A * B", operator.mul)))
    k, c = rng.randint(1, 9), rng.randint(0, 9)
    return _CodeTask(
        f"Scaled {word} ({k}, {c})", f"You are given two integers A and B. Print ({word}) * {k} + {c}.",
        "A B", f"a, b = map(int, input().split())\nprint((a {op} b) * {k} + {c})",
        lambda s: f"{apply(*map(int, s.split())) * k + c}\n",
        lambda r: f"{_ints_line(r, 2, -100, 100)}\n", f"I read A and B, compute (A {op} B) * {k} + {c} and print it.")


def _code_count(rng: random.Random) -> _CodeTask:
    k = rng.randint(-50, 50)
    above = rng.random() < 0.5
    rel, cmp = ("greater than", ">") if above else ("less than", "<")
    return _CodeTask(
        f"Count {rel.split()[0].title()} {k}", f"You are given N integers. Print how many of them are {rel} {k}.",
        "N\nA_1 A_2 ... A_N",
        f"n = int(input())\nvalues = list(map(int, input().split()))\nprint(sum(1 for v in values if v {cmp} {k}))",
        lambda s: f"{sum(1 for v in map(int, s.split()[1:]) if (v > k if above else v < k))}\n",
        _list_input, f"I read the N values and count those {rel} {k}.")


def _code_replace(rng: random.Random) -> _CodeTask:
    x, y = rng.sample("abcdefghijklmnopqrstuvwxyz", 2)
    return _CodeTask(
        f"Replace {x} With {y}", f"You are given a string S of lowercase letters. Print S with every '{x}' replaced by '{y}'.",
        "S", f"s = input().strip()\nprint(s.replace({x!r}, {y!r}))",
        lambda s: s.strip().replace(x, y) + "\n",
        lambda r: "".join(r.choice("abcdefghij" + x * 3) for _ in range(r.randint(1, 12))) + "\n",
        f"I read S and replace each '{x}' with '{y}'.")


def _code_count_char(rng: random.Random) -> _CodeTask:
    ch = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return _CodeTask(
        f"Count The Letter {ch}", f"You are given a string S of lowercase letters. Print how many times '{ch}' occurs in S.",
        "S", f"s = input().strip()\nprint(s.count({ch!r}))",
        lambda s: f"{s.strip().count(ch)}\n",
        lambda r: "".join(r.choice("abcdefgh" + ch * 2) for _ in range(r.randint(1, 15))) + "\n",
        f"I read S and count the occurrences of '{ch}'.")


def _code_multiples(rng: random.Random) -> _CodeTask:
    k = rng.randint(2, 60)
    return _CodeTask(
        f"Sum Of Multiples Of {k}", f"You are given an integer N. Print the sum of the first N positive multiples of {k}.",
        "N", f"n = int(input())\nprint({k} * n * (n + 1) // 2)",
        lambda s: f"{k * int(s) * (int(s) + 1) // 2}\n",
        lambda r: f"{r.randint(1, 1000)}\n", f"The sum is {k} * (1 + 2 + ... + N) = {k} * N * (N + 1) / 2.")


def _code_divisible(rng: random.Random) -> _CodeTask:
    k = rng.randint(2, 50)
    yes, no = rng.choice((("Yes", "No"), ("YES", "NO")))
    return _CodeTask(
        f"Divisible By {k} ({yes})", f"You are given an integer N. Print {yes} if N is divisible by {k}, otherwise print {no}.",
        "N", f"n = int(input())\nprint({yes!r} if n % {k} == 0 else {no!r})",
        lambda s: f"{yes if int(s) % k == 0 else no}\n",
        lambda r: f"{r.randint(1, 100) * (k if r.random() < 0.5 else 1)}\n", f"I check whether N % {k} == 0.")


def _code_product_mod(rng: random.Random) -> _CodeTask:
    m = rng.randint(2, 1000)
    return _CodeTask(
        f"Product Modulo {m}", f"You are given N integers. Print their product modulo {m} (a value between 0 and {m - 1}).",
        "N\nA_1 A_2 ... A_N",
        f"n = int(input())\nresult = 1\nfor v in map(int, input().split()):\n    result = result * v % {m}\nprint(result)",
        lambda s: f"{math.prod(map(int, s.split()[1:])) % m}\n",
        _list_input, f"I multiply the values, reducing modulo {m} after each step.")


def _code_fizz(rng: random.Random) -> _CodeTask:
    k, word = rng.randint(2, 9), rng.choice(("Fizz", "Buzz", "Bang", "Ping", "Pong", "Zap", "Boom", "Tick"))
    return _CodeTask(
        f"{word} Every {k}", f"You are given an integer N. Print the numbers 1 to N, one per line, writing {word} "
                              f"instead of every multiple of {k}.",
        "N", f"n = int(input())\nfor i in range(1, n + 1):\n    print({word!r} if i % {k} == 0 else i)",
        lambda s: "".join(f"{word if i % k == 0 else i}\n" for i in range(1, int(s) + 1)),
        lambda r: f"{r.randint(1, 20)}\n", f"I loop from 1 to N and print {word} for multiples of {k}.")


def _code_digits(rng: random.Random) -> _CodeTask:
    k = rng.randint(1, 30)
    return _CodeTask(
        f"Digit Sum Times {k}", f"You are given a positive integer N. Print the sum of its decimal digits multiplied by {k}.",
        "N", f"n = input().strip()\nprint(sum(int(d) for d in n) * {k})",
        lambda s: f"{sum(int(d) for d in s.strip()) * k}\n",
        lambda r: f"{r.randint(1, 10 ** 9)}\n", f"I add the digits of N and multiply by {k}.")


_CODE_TEMPLATES = (_code_arith, _code_count, _code_replace, _code_count_char, _code_multiples, _code_divisible,
                   _code_product_mod, _code_fizz, _code_digits)


def _statement(task: _CodeTask, sample_in: str, sample_out: str) -> str:
    return (f"{task.statement}\n\nInput\n\nThe input is given from Standard Input in the following format:\n"
            f"{task.input_format}\n\nOutput\n\nPrint the answer.\n\n"
            f"Sample Input 1\n\n{sample_in}\nSample Output 1\n\n{sample_out}")


def _code_item(rng: random.Random, index: int) -> DomainItem:
    task = rng.choice(_CODE_TEMPLATES)(rng)
    inputs: list[str] = []
    for _ in range(20):
        if len(inputs) == 3:
            break
        candidate = task.make_input(rng)
        if candidate not in inputs:
            inputs.append(candidate)
    tests = [{"input": s, "output": task.solve(s), "testtype": "stdin"} for s in inputs]
    content = _statement(task, tests[0]["input"], tests[0]["output"])
    record = {"question_title": task.title, "question_content": content, "platform": "atcoder",
              "question_id": f"demo-code-{index:04d}", "contest_id": "demo",
              "contest_date": "2024-01-01T00:00:00", "starter_code": "", "difficulty": "easy",
              "public_test_cases": json.dumps(tests), "private_test_cases": "[]", "metadata": "{}"}
    sample_in, sample_out = tests[0]["input"].strip(), tests[0]["output"].strip()
    steps = [task.idea, f"Check with the sample: input {sample_in!r} should print {sample_out!r}.",
             "Wait, the input is read from stdin and the result printed to stdout. Good."]
    response = _think(steps) + f"```python\n{task.program}\n```"
    return DomainItem("code", task.program, record, {"prompt": build_prompt(record), "response": response})


def run_stdin_program(code: str, stdin: str, timeout: float = 10.0) -> str:
    """Run a Python program (the generator's own, never model-written) on `stdin`; return its stdout."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"program exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def check_program(code: str, tests: list[dict[str, str]]) -> list[str]:
    """Run `code` on every stdin test; return one message per failed test (empty when all pass)."""
    failures = []
    for i, test in enumerate(tests):
        try:
            actual = run_stdin_program(code, test["input"])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures.append(f"test {i}: {exc}")
            continue
        if not stdout_matches(actual, test["output"]):
            failures.append(f"test {i}: expected {test['output']!r}, got {actual!r}")
    return failures


def _verify_code_items(items: list[DomainItem]) -> None:
    def failures(item: DomainItem) -> list[str]:
        return check_program(extract_code(item.trace["response"]) or "", json.loads(item.record["public_test_cases"]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for item, failed in zip(items, pool.map(failures, items)):
            if failed:
                raise RuntimeError(f"generated program {item.record['question_id']} fails its own tests: {failed}")


# ---------------------------------------------------------------------------------- generation

_ITEM_MAKERS: dict[str, Callable[[random.Random, int], DomainItem]] = {
    "math": _math_item, "science": _science_item, "code": _code_item}


def generate_domain(domain: str, n: int, seed: int) -> list[DomainItem]:
    """`n` distinct problems of `domain` (one of DOMAIN_TASKS), deterministic given `seed`.

    Code items are verified: each program is run on its tests in a subprocess, and a failure raises.
    """
    if domain not in _ITEM_MAKERS:
        raise AlloyError(f"unknown demo domain {domain!r}; choose one of {sorted(_ITEM_MAKERS)}")
    if not isinstance(n, int) or n < 0:
        raise AlloyError(f"number of {domain} problems must be a non-negative integer, got {n!r}")
    rng = random.Random(f"alloy-demo:{domain}:{seed}")
    items: list[DomainItem] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > _MAX_ATTEMPTS_PER_ITEM * (n + 1):
            raise AlloyError(f"could only make {len(items)} distinct {domain} problems; ask for fewer than {n}")
        item = _ITEM_MAKERS[domain](rng, len(items))
        if item.key not in seen:
            seen.add(item.key)
            items.append(item)
    if domain == "code":
        _verify_code_items(items)
    return items


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_domain_data(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0) -> DomainFiles:
    """Write `out_dir/eval/<task>.jsonl` (n_eval records per domain) and `out_dir/traces/<domain>.jsonl`.

    Per domain the first `n_eval` problems are the evaluation records and the next `n_train` give the
    training traces, so no trace is about an evaluation problem.
    """
    for name, value in (("n_train", n_train), ("n_eval", n_eval)):
        if not isinstance(value, int) or value < 0:
            raise AlloyError(f"{name} must be a non-negative integer, got {value!r}")
    out = Path(out_dir)
    files = DomainFiles(eval_files={}, trace_files={})
    for domain, task in DOMAIN_TASKS.items():
        items = generate_domain(domain, n_eval + n_train, seed)
        files.eval_files[task] = out / "eval" / f"{task}.jsonl"
        files.trace_files[domain] = out / "traces" / f"{domain}.jsonl"
        _write_jsonl(files.eval_files[task], (item.record for item in items[:n_eval]))
        _write_jsonl(files.trace_files[domain], (item.trace for item in items[n_eval:]))
    return files
