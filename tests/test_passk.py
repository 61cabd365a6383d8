"""pass@k (the unbiased estimator) and avg@n, per question and aggregated by the harness."""
from __future__ import annotations

import math
import random

import pytest

from alloy.evaluation.harness import SampleRecord, summarize
from alloy.evaluation.intervals import bootstrap
from alloy.evaluation.passk import pass_at_k, pass_at_k_scores, repeat_metric_error


def test_estimator_equals_the_combinatorial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(200, 0, 10) == 0.0 and pass_at_k(200, 191, 10) == 1.0
    for bad in ((5, 1, 6), (5, 6, 1), (5, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_estimator_matches_sampling_without_replacement():
    rng = random.Random(0)
    samples = [True] * 3 + [False] * 9
    hits = sum(any(rng.sample(samples, 5)) for _ in range(20000)) / 20000
    assert hits == pytest.approx(pass_at_k(12, 3, 5), abs=0.01)


def test_scores_report_only_k_up_to_n():
    assert pass_at_k_scores([True, False, False, False]) == {"pass@1": 0.25}
    scores = pass_at_k_scores([True] + [False] * 9)
    assert set(scores) == {"pass@1", "pass@5", "pass@10"} and scores["pass@10"] == 1.0
    assert scores["pass@5"] == pytest.approx(0.5)


def record(doc_id: int, repeat: int, correct: bool) -> SampleRecord:
    return SampleRecord(task="aime24", doc_id=doc_id, repeat=repeat, metrics={"exact_match": float(correct)},
                        correct=correct, prompt="", response="", extracted=None, target="", completion="",
                        output_tokens=10, thinking_tokens=5, waits=0, thinking_capped=False, finish="stop")


def test_harness_aggregates_pass_at_k_over_questions_with_bootstrap_intervals():
    correct_counts = [0, 1, 3, 10, 5, 2]  # of 10 answers per question
    rows = [record(doc, r, r < c) for doc, c in enumerate(correct_counts) for r in range(10)]
    result = summarize({"aime24": rows}, repeats=10, config={}, log_samples=False)
    task = result.tasks["aime24"]
    for k in (1, 5, 10):
        per_question = [pass_at_k(10, c, k) for c in correct_counts]
        assert task.scores[f"pass@{k}"] == pytest.approx(sum(per_question) / len(per_question))
        if k > 1:
            assert task.intervals[f"pass@{k}"] == bootstrap(per_question)
        lo, hi = task.intervals[f"pass@{k}"]
        assert lo <= task.scores[f"pass@{k}"] <= hi
    assert task.scores["avg@10"] == pytest.approx(sum(correct_counts) / 60) == task.scores["exact_match"]
    flat = result.metrics()
    assert flat["aime24/pass@5"] == task.scores["pass@5"] and "aime24/pass@5.lo" in flat and "aime24/avg@10.hi" in flat
    # the per-question values the intervals are taken over, by document id
    assert flat["aime24/pass@5.questions"] == [pass_at_k(10, c, 5) for c in correct_counts]
    assert flat["aime24/avg@10.questions"] == flat["aime24/exact_match.questions"] == [c / 10 for c in correct_counts]
    shuffled = summarize({"aime24": rows[::-1]}, repeats=10, config={}, log_samples=False).metrics()
    assert shuffled["aime24/pass@5.questions"] == flat["aime24/pass@5.questions"]


def test_harness_reports_no_pass_at_k_beyond_the_repeats():
    rows = [record(doc, r, (doc + r) % 2 == 0) for doc in range(4) for r in range(3)]
    scores = summarize({"aime24": rows}, repeats=3, config={}, log_samples=False).tasks["aime24"].scores
    assert set(scores) == {"exact_match", "avg@3", "pass@1"}


@pytest.mark.parametrize("metric, repeats, problem", [
    ("exact_match", 1, None), ("pass@1", 1, None), ("pass@10", 10, None), ("avg@8", 8, None),
    ("pass@5", 4, "at least 5"), ("avg@8", 4, "avg@8 needs evaluation.repeats: 8"), ("pass@2", 4, "not reported"),
])
def test_repeat_metric_names_are_checked(metric, repeats, problem):
    error = repeat_metric_error(metric, repeats)
    assert (error is None) if problem is None else (problem in error)
