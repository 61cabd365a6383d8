"""Three learnable synthetic domains for the demo, written in the benchmarks' own record formats.

Each domain yields problems as (a) evaluation records that alloy's evaluators read as
`<data_dir>/<task>.jsonl`, and (b) teacher traces `{"prompt", "response"}` for the branch phase, whose
responses look like a reasoning model's: `<think>\\n…\\n</think>\\n\\n` and then the answer. Trace
prompts are the prompts alloy's evaluators (`evaluators/`) show for the same record, so the experts
learn the format they are scored in. The domains are sized for a tiny model on two CPU cores:

- `math` → `aime24` records `{id, problem, answer}`: a two-digit number plus a one-digit number, in a
  few phrasings. The trace adds digit by digit (units with the carry, then tens), so every step is a
  one-digit sum the model sees in training, and the response ends with `\\boxed{N}`. Evaluation uses
  new pairs of numbers.
- `science` → `gpqa_diamond` records in GPQA's raw format (`Question`, `Correct Answer`,
  `Incorrect Answer 1..3`, `Record ID`) over a fixed body of facts (chemical symbols, atomic numbers,
  planets, organelles); the wrong choices are other facts' answers of the same kind. The evaluator
  shuffles the choices itself (lm-eval's seeded shuffle over the file); a trace's prompt is the gpqa
  task's `doc_to_text` over the choices shuffled by the same code
  (`alloy.evaluation.datasets.gpqa_records`), and its response ends with "The answer is (X)." (the
  final period also lets lm-eval's strict `(?<=The answer is )(.*)(?=.)` filter capture "(X)").
  Evaluation uses new questions: a fact with a set and order of choices no trace shows.
- `code` → `livecodebench` records (stdin problems, LiveCodeBench's field names, tests as a JSON
  string) from a handful of program templates, each with a few phrasings of its statement: the model
  must pick the template's program from the statement. Evaluation problems have test inputs no
  training problem has. Every program is run on its tests in a subprocess (the generator's own code,
  so no sandbox) and compared as the evaluator compares, before it is used.

`format_traces` gives the format part of the backbone's pre-training data: the same three formats
over content that teaches none of the domains (copy a number into the box, find the option that is a
given word, echo a line). The demo adds a sample of each domain's training traces
(`alloy.demo.pipeline.DemoScale.n_backbone_domain`), and the experts learn the rest of their domain.

`split_domain` makes a domain's evaluation and training problems, deterministic given the seed and
disjoint (`overlap` says what the two sets share; `write_domain_data` refuses to write a split that
shares anything).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from alloy.errors import AlloyError
from alloy.evaluation.datasets import gpqa_records
from alloy.evaluation.livecodebench import build_prompt, extract_code, stdout_matches
from alloy.io.atomic import atomic_write_text

DOMAIN_TASKS: dict[str, str] = {"math": "aime24", "science": "gpqa_diamond", "code": "livecodebench"}
"""Domain name -> the evaluation task whose `<task>.jsonl` its records are written to."""

_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia", "Kofi", "Lena")
_MAX_ATTEMPTS_PER_ITEM = 200


@dataclass(frozen=True)
class DomainItem:
    """One synthetic problem: its record in the benchmark's format, a teacher trace for it, and what
    identifies it (`key`, the problem as the model sees it) and what it is made of (`parts`: the
    number pair, the fact, the test inputs) for the disjointness of the splits."""

    domain: str
    key: str
    parts: frozenset[str]
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


_MATH_PHRASINGS = (
    "What is {a} + {b}?",
    "Compute {a} plus {b}.",
    "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
    "A box holds {a} {thing}. {name} puts in {b} more. How many {thing} are in the box?",
)
_THINGS = ("marbles", "stickers", "apples", "cards", "stamps", "coins")


def addition_steps(a: int, b: int) -> list[str]:
    """The trace's digit-by-digit sum of a two-digit `a` and a one-digit `b`."""
    tens, units = divmod(a, 10)
    low = units + b
    carry = low // 10
    return [f"{a} + {b}", f"units: {units} + {b} = {low}, carry {carry}",
            f"tens: {tens} + {carry} = {tens + carry}", f"so {a} + {b} = {a + b}"]


def _math_item(rng: random.Random, index: int) -> DomainItem:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    problem = rng.choice(_MATH_PHRASINGS).format(a=a, b=b, name=rng.choice(_NAMES), thing=rng.choice(_THINGS))
    response = _think(addition_steps(a, b)) + f"The answer is \\boxed{{{a + b}}}"
    record = {"id": f"demo-math-{index:04d}", "problem": problem, "answer": str(a + b)}
    return DomainItem("math", problem, frozenset({f"{a}+{b}"}), record,
                      {"prompt": math_prompt(problem), "response": response})


# -------------------------------------------------------------------------------------- science

_SYMBOLS = (("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("carbon", "C"), ("nitrogen", "N"),
            ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"), ("sodium", "Na"), ("magnesium", "Mg"),
            ("aluminium", "Al"), ("silicon", "Si"), ("sulfur", "S"), ("chlorine", "Cl"), ("potassium", "K"),
            ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"), ("zinc", "Zn"), ("silver", "Ag"),
            ("gold", "Au"), ("lead", "Pb"))
_NUMBERS = (("hydrogen", "1"), ("helium", "2"), ("lithium", "3"), ("carbon", "6"), ("nitrogen", "7"),
            ("oxygen", "8"), ("neon", "10"), ("sodium", "11"), ("magnesium", "12"), ("silicon", "14"),
            ("sulfur", "16"), ("calcium", "20"), ("iron", "26"), ("copper", "29"))
_PLANETS = (("closest to the Sun", "Mercury"), ("largest", "Jupiter"), ("with the most famous rings", "Saturn"),
            ("known as the red planet", "Mars"), ("hottest", "Venus"), ("farthest from the Sun", "Neptune"),
            ("that rotates on its side", "Uranus"), ("we live on", "Earth"))
_ORGANELLES = (("makes most of the cell's ATP", "Mitochondrion"), ("builds proteins", "Ribosome"),
               ("holds the cell's DNA", "Nucleus"), ("captures light for photosynthesis", "Chloroplast"),
               ("packages proteins for export", "Golgi apparatus"), ("digests waste", "Lysosome"))


@dataclass(frozen=True)
class _FactKind:
    question: str  # with {subject}
    fact: str  # the trace's sentence, with {subject} and {answer}
    facts: tuple[tuple[str, str], ...]  # subject -> answer


_FACT_KINDS = (
    _FactKind("What is the chemical symbol of {subject}?", "The symbol of {subject} is {answer}.", _SYMBOLS),
    _FactKind("What is the atomic number of {subject}?", "The atomic number of {subject} is {answer}.", _NUMBERS),
    _FactKind("Which planet is the one {subject}?", "The planet {subject} is {answer}.", _PLANETS),
    _FactKind("Which organelle {subject}?", "The organelle that {subject} is the {answer}.", _ORGANELLES),
)


def gpqa_prompt(question: str, choices: list[str]) -> str:
    """The prompt of a science trace: the gpqa_diamond task's `doc_to_text` (evaluators/gpqa)."""
    a, b, c, d = choices
    return ("Answer the following multiple-choice question. Think step by step, then finish your response with "
            "\"The answer is (X)\" where X is A, B, C or D.\n\n"
            f"{question}\n\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}")


def _choice_item(domain: str, index: int, question: str, correct: str, wrong: list[str], steps: list[str],
                 rng: random.Random, parts: frozenset[str]) -> DomainItem:
    """A four-choice item: the raw GPQA record and a trace over the evaluator's own shuffle."""
    record = {"Record ID": f"demo-{domain}-{index:04d}", "Question": question, "Correct Answer": correct,
              "Incorrect Answer 1": wrong[0], "Incorrect Answer 2": wrong[1], "Incorrect Answer 3": wrong[2]}
    doc = gpqa_records([record], seed=rng.randrange(2**32))[0]
    letter = doc["answer"].strip("()")
    prompt = gpqa_prompt(doc["question"], doc["choices"])
    response = _think(steps) + f"{correct} is option ({letter}). The answer is ({letter})."
    return DomainItem(domain, prompt, parts, record, {"prompt": prompt, "response": response})


def _science_item(rng: random.Random, index: int) -> DomainItem:
    kind = rng.choice(_FACT_KINDS)
    subject, correct = rng.choice(kind.facts)
    wrong = rng.sample([answer for _, answer in kind.facts if answer != correct], 3)
    return _choice_item("science", index, kind.question.format(subject=subject), correct, wrong,
                        [kind.fact.format(subject=subject, answer=correct)], rng,
                        frozenset({kind.question.format(subject=subject)}))


# ----------------------------------------------------------------------------------------- code


@dataclass(frozen=True)
class _CodeTemplate:
    titles: tuple[str, ...]
    statements: tuple[str, ...]
    input_format: str
    program: str
    solve: Callable[[str], str]  # reference: stdin text -> expected stdout text
    make_input: Callable[[random.Random], str]
    idea: str  # the trace's reasoning


def _list_input(rng: random.Random) -> str:
    n = rng.randint(2, 8)
    return f"{n}\n" + " ".join(str(rng.randint(-99, 99)) for _ in range(n)) + "\n"


def _word_input(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) + "\n"


def _pair_input(rng: random.Random) -> str:
    return f"{rng.randint(-999, 999)} {rng.randint(-999, 999)}\n"


def _values(text: str) -> list[int]:
    return list(map(int, text.split()[1:]))


def _list_template(titles: tuple[str, ...], statements: tuple[str, ...], reduce: Callable[[list[int]], int],
                   what: str) -> _CodeTemplate:
    """A template that reads N integers and prints `reduce` of them (sum, max, min: `what` it prints)."""
    return _CodeTemplate(titles, statements, "N\nA_1 A_2 ... A_N",
                         f"n = int(input())\nprint({reduce.__name__}(map(int, input().split())))",
                         lambda s: f"{reduce(_values(s))}\n", _list_input, f"I read the N integers and print {what}.")


def _string_template(titles: tuple[str, ...], statements: tuple[str, ...], expression: str,
                     apply: Callable[[str], object], what: str) -> _CodeTemplate:
    """A template that reads a string S and prints `expression` of it (`apply` computes the same)."""
    return _CodeTemplate(titles, statements, "S", f"s = input().strip()\nprint({expression})",
                         lambda s: f"{apply(s.strip())}\n", _word_input, f"I read S and print {what}.")


def _pair_template(titles: tuple[str, ...], statements: tuple[str, ...], operator: str,
                   apply: Callable[[int, int], int], what: str) -> _CodeTemplate:
    """A template that reads integers A and B and prints `A <operator> B` (`apply` computes the same)."""
    return _CodeTemplate(titles, statements, "A B", f"a, b = map(int, input().split())\nprint(a {operator} b)",
                         lambda s: f"{apply(*map(int, s.split()))}\n", _pair_input, f"I read A and B and print {what}.")


_CODE_TEMPLATES = (
    _list_template(("Sum of Numbers", "Total"), ("You are given N integers. Print their sum.",
                                                 "Print the sum of the N given integers."), sum, "their sum"),
    _list_template(("Largest Number", "Maximum"), ("You are given N integers. Print the largest of them.",
                                                   "Print the maximum of the N given integers."), max, "the maximum"),
    _list_template(("Smallest Number", "Minimum"), ("You are given N integers. Print the smallest of them.",
                                                    "Print the minimum of the N given integers."), min, "the minimum"),
    _string_template(("Reverse", "Backwards"), ("You are given a string S. Print S reversed.",
                                                "Print the string S from its last character to its first."),
                     "s[::-1]", lambda s: s[::-1], "it reversed"),
    _string_template(("Upper Case", "Shout"), ("You are given a string S of lowercase letters. Print S in upper case.",
                                               "Print the string S with every letter made upper case."),
                     "s.upper()", str.upper, "it in upper case"),
    _string_template(("Length", "Count Letters"), ("You are given a string S. Print its length.",
                                                   "Print how many characters the string S has."),
                     "len(s)", len, "its length"),
    _pair_template(("Product", "Multiply"), ("You are given two integers A and B. Print A times B.",
                                             "Print the product of the two given integers A and B."),
                   "*", lambda a, b: a * b, "their product"),
    _pair_template(("Difference", "Subtract"), ("You are given two integers A and B. Print A minus B.",
                                                "Print the difference A - B of the two given integers."),
                   "-", lambda a, b: a - b, "A - B"),
)


def _statement(statement: str, input_format: str, sample_in: str, sample_out: str) -> str:
    return (f"{statement}\n\nInput\n\nThe input is given from Standard Input in the following format:\n"
            f"{input_format}\n\nOutput\n\nPrint the answer.\n\n"
            f"Sample Input 1\n\n{sample_in}\nSample Output 1\n\n{sample_out}")


def _program_item(domain: str, index: int, title: str, statement: str, input_format: str, program: str,
                  solve: Callable[[str], str], inputs: list[str], idea: str) -> DomainItem:
    """A stdin problem in LiveCodeBench's fields, and a trace whose response is `program`."""
    tests = [{"input": s, "output": solve(s), "testtype": "stdin"} for s in inputs]
    content = _statement(statement, input_format, tests[0]["input"], tests[0]["output"])
    record = {"question_title": title, "question_content": content, "platform": "atcoder",
              "question_id": f"demo-{domain}-{index:04d}", "contest_id": "demo",
              "contest_date": "2024-01-01T00:00:00", "starter_code": "", "difficulty": "easy",
              "public_test_cases": json.dumps(tests), "private_test_cases": "[]", "metadata": "{}"}
    response = _think([idea, "The input is read from stdin and the result printed to stdout."])
    response += f"```python\n{program}\n```"
    return DomainItem(domain, content, frozenset(f"input:{s}" for s in inputs), record,
                      {"prompt": build_prompt(record), "response": response})


def _distinct_inputs(rng: random.Random, make: Callable[[random.Random], str], k: int) -> list[str]:
    inputs: list[str] = []
    for _ in range(20 * k):
        if len(inputs) == k:
            break
        candidate = make(rng)
        if candidate not in inputs:
            inputs.append(candidate)
    return inputs


def _code_item(rng: random.Random, index: int) -> DomainItem:
    t = rng.choice(_CODE_TEMPLATES)
    return _program_item("code", index, rng.choice(t.titles), rng.choice(t.statements), t.input_format, t.program,
                         t.solve, _distinct_inputs(rng, t.make_input, 3), t.idea)


def run_stdin_program(code: str, stdin: str, timeout: float = 10.0) -> str:
    """Run a Python program (the generator's own, never model-written) on `stdin`; return its stdout."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"program exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


_BATCH_RUNNER = """import contextlib, io, json, sys
program, inputs = json.load(sys.stdin)
results = []
for text in inputs:
    sys.stdin, out = io.StringIO(text), io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(program, "program", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = f"exited with {exc.code}"
    except Exception as exc:
        error = f"raised {type(exc).__name__}: {exc}"
    results.append([out.getvalue(), error])
sys.__stdout__.write(json.dumps(results))
"""


def check_program(code: str, tests: list[dict[str, str]]) -> list[str]:
    """Run `code` on every stdin test, all in one subprocess; return one message per failed test (empty
    when all pass)."""
    try:
        results = json.loads(run_stdin_program(_BATCH_RUNNER, json.dumps([code, [t["input"] for t in tests]])))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return [f"test {i}: {exc}" for i in range(len(tests))]
    failures = []
    for i, (test, (actual, error)) in enumerate(zip(tests, results)):
        if error is not None:
            failures.append(f"test {i}: {error}")
        elif not stdout_matches(actual, test["output"]):
            failures.append(f"test {i}: expected {test['output']!r}, got {actual!r}")
    return failures


def _verify_code_items(items: list[DomainItem]) -> None:
    """Check each distinct program on all the tests it must pass (one `check_program` per program)."""
    by_program: dict[str, list[dict[str, str]]] = {}
    for item in items:
        by_program.setdefault(extract_code(item.trace["response"]) or "", []).extend(
            json.loads(item.record["public_test_cases"]))
    for program, tests in by_program.items():
        failed = check_program(program, tests)
        if failed:
            raise RuntimeError(f"generated program {program!r} fails its own tests: {failed[:3]}")


# ---------------------------------------------------------------------------------- generation

_ITEM_MAKERS: dict[str, Callable[[random.Random, int], DomainItem]] = {
    "math": _math_item, "science": _science_item, "code": _code_item}


def _check_counts(**counts: Any) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise AlloyError(f"{name} must be a non-negative integer, got {value!r}")


def _draw(make: Callable[[random.Random, int], DomainItem], rng: random.Random, n: int, what: str,
          accept: Callable[[DomainItem], bool]) -> list[DomainItem]:
    """`n` items of distinct keys that `accept` takes, from `make`, in the order drawn."""
    items: list[DomainItem] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > _MAX_ATTEMPTS_PER_ITEM * (n + 1):
            raise AlloyError(f"could only make {len(items)} distinct {what}; ask for fewer than {n}")
        item = make(rng, len(items))
        if item.key not in seen and accept(item):
            seen.add(item.key)
            items.append(item)
    return items


def split_domain(domain: str, n_train: int, n_eval: int, seed: int) -> tuple[list[DomainItem], list[DomainItem]]:
    """(training problems, evaluation problems) of `domain` (one of DOMAIN_TASKS), deterministic given
    `seed`, sharing no problem and no part (number pair, question with its choices, test input).

    The evaluation problems are drawn first, so they do not depend on `n_train`. Code items are
    verified: each program is run on its tests in a subprocess, and a failure raises.
    """
    if domain not in _ITEM_MAKERS:
        raise AlloyError(f"unknown demo domain {domain!r}; choose one of {sorted(_ITEM_MAKERS)}")
    _check_counts(n_train=n_train, n_eval=n_eval)
    make = _ITEM_MAKERS[domain]
    evaluation = _draw(make, random.Random(f"alloy-demo:{domain}:eval:{seed}"), n_eval, f"{domain} problems",
                       lambda item: True)
    held_out = {item.key for item in evaluation} | set(evaluation_prompts(domain, evaluation))
    if domain != "science":  # a science fact is asked again in training, with other choices
        held_out |= {part for item in evaluation for part in item.parts}
    train = _draw(make, random.Random(f"alloy-demo:{domain}:train:{seed}"), n_train, f"{domain} training problems",
                  lambda item: item.key not in held_out and not (item.parts & held_out))
    if domain == "code":
        _verify_code_items(train + evaluation)
    return train, evaluation


def evaluation_prompts(domain: str, evaluation: list[DomainItem]) -> list[str]:
    """The prompts the evaluator shows for these evaluation problems (for gpqa, over its own shuffle
    of the whole file)."""
    if domain == "science":
        return [gpqa_prompt(doc["question"], doc["choices"]) for doc in gpqa_records([i.record for i in evaluation])]
    return [item.trace["prompt"] for item in evaluation]


def overlap(domain: str, train: list[DomainItem], evaluation: list[DomainItem]) -> list[str]:
    """What the training problems share with the evaluation problems as the evaluator shows them:
    prompts, and for math and code the number pairs and test inputs (empty when disjoint)."""
    train_prompts = {item.trace["prompt"] for item in train}
    shared = [f"prompt {p[:60]!r}" for p in evaluation_prompts(domain, evaluation) if p in train_prompts]
    if domain != "science":
        train_parts = {part for item in train for part in item.parts}
        shared += sorted(f"part {part!r}" for item in evaluation for part in item.parts if part in train_parts)
    return shared


# ------------------------------------------------------------------------------- format traces


_WORDS = ("river", "stone", "lamp", "cloud", "garden", "pencil", "window", "tiger", "bread", "mirror", "Xo",
          "Qa", "Vu", "Tz", "Br", "Ky", "Wo", "Jip", "Zel", "Mox", "Pra", "Dun", "Lix", "Yot")


def _format_number(rng: random.Random, index: int) -> DomainItem:
    n = rng.randint(0, 999)
    problem = rng.choice(("Write the number {n}.", "Copy this number: {n}.", "The number is {n}. Give it back."))
    problem = problem.format(n=n)
    response = _think([f"The number is {n}."]) + f"The answer is \\boxed{{{n}}}"
    return DomainItem("format", problem, frozenset(), {}, {"prompt": math_prompt(problem), "response": response})


def _format_choice(rng: random.Random, index: int) -> DomainItem:
    target, *wrong = rng.sample(_WORDS, 4)
    return _choice_item("format", index, f"Which option is the word {target}?", target, wrong,
                        [f"The word is {target}."], rng, frozenset())


def _format_program(rng: random.Random, index: int) -> DomainItem:
    line = _word_input(rng) if rng.random() < 0.5 else f"{rng.randint(-999, 999)}\n"
    return _program_item("format", index, "Echo", "You are given one line. Print it unchanged.", "S",
                         "print(input())", lambda s: s, [line], "I print the line I read.")


def format_traces(n: int, seed: int) -> list[dict[str, str]]:
    """`n` traces per benchmark format whose content is none of the domains' (see the module doc)."""
    _check_counts(n=n)
    rng = random.Random(f"alloy-demo:format:{seed}")
    return [make(rng, i).trace for i in range(n) for make in (_format_number, _format_choice, _format_program)]


# ------------------------------------------------------------------------------------- writing


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_domain_data(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0) -> DomainFiles:
    """Write `out_dir/eval/<task>.jsonl` (n_eval records per domain) and `out_dir/traces/<domain>.jsonl`
    (n_train traces per domain), from `split_domain`; a split that shares anything raises."""
    _check_counts(n_train=n_train, n_eval=n_eval)
    out = Path(out_dir)
    files = DomainFiles(eval_files={}, trace_files={})
    for domain, task in DOMAIN_TASKS.items():
        train, evaluation = split_domain(domain, n_train, n_eval, seed)
        shared = overlap(domain, train, evaluation)
        if shared:
            raise RuntimeError(f"{domain}: training and evaluation problems share {shared[:3]}")
        files.eval_files[task] = out / "eval" / f"{task}.jsonl"
        files.trace_files[domain] = out / "traces" / f"{domain}.jsonl"
        _write_jsonl(files.eval_files[task], (item.record for item in evaluation))
        _write_jsonl(files.trace_files[domain], (item.trace for item in train))
    return files
