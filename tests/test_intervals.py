"""Score intervals: Wilson on known binomial data, bootstrap on repeated samples, paired gaps."""
import math
import random

import pytest

from alloy.evaluation.intervals import bootstrap, paired_gap, score_interval, wilson


def test_wilson_matches_known_values():
    # Wilson 95% interval for 8/30 (reference values from the closed form with z = 1.959964)
    lo, hi = wilson(8, 30)
    assert lo == pytest.approx(0.1418, abs=1e-4) and hi == pytest.approx(0.4445, abs=1e-4)
    assert wilson(0, 30)[0] == 0.0 and wilson(30, 30)[1] == 1.0
    assert all(wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0 for n in range(1, 201))  # not 6.9e-18 at 40
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(31, 30)


def test_wilson_covers_the_true_proportion_at_its_level():
    rng = random.Random(1)
    p, n, trials = 0.3, 30, 2000
    covered = 0
    for _ in range(trials):
        lo, hi = wilson(sum(rng.random() < p for _ in range(n)), n)
        covered += lo <= p <= hi
    assert 0.93 <= covered / trials <= 0.975


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.0, 0.5]
    a, b = bootstrap(values, seed=3), bootstrap(values, seed=3)
    assert a == b
    mean = sum(values) / len(values)
    assert a[0] < mean < a[1]
    assert bootstrap([0.5, 0.5]) == (0.5, 0.5)


def test_score_interval_picks_wilson_for_single_binary_answers():
    values = [1.0] * 8 + [0.0] * 22
    assert score_interval(values, repeats=1) == wilson(8, 30)
    lo, hi = score_interval([0.5] * 10 + [1.0] * 10, repeats=2)
    assert 0.5 <= lo < 0.75 < hi <= 1.0
    assert math.isclose(score_interval([0.0, 1.0], repeats=4)[0], 0.0)


def test_paired_gap_tells_a_consistent_lead_from_a_noisy_one():
    """Two leads of 6 questions in 40, both within the two Wilson intervals side by side: the merge that
    also answers every question the expert answers leads beyond the paired interval; the one that wins
    13 and loses 7 does not."""
    expert = [1.0] * 20 + [0.0] * 20
    consistent = [1.0] * 26 + [0.0] * 14
    noisy = [0.0] * 7 + [1.0] * 13 + [1.0] * 13 + [0.0] * 7
    assert sum(consistent) == sum(noisy) == 26
    assert wilson(26, 40)[0] < wilson(20, 40)[1]  # the separate intervals overlap
    gap, lo, hi = paired_gap([(consistent, expert)])
    assert gap == pytest.approx(0.15) and 0.0 < lo < 0.15 < hi
    gap, lo, hi = paired_gap([(noisy, expert)])
    assert gap == pytest.approx(0.15) and lo < 0.0 < 0.15 < hi
    assert paired_gap([(expert, expert)]) == (0.0, 0.0, 0.0)
    assert paired_gap([(consistent, expert)], seed=5) == paired_gap([(consistent, expert)], seed=5)


def test_paired_gap_averages_tasks_and_covers_at_its_level():
    gap, lo, hi = paired_gap([([1.0] * 10, [0.0] * 10), ([0.0] * 30, [0.0] * 30)])
    assert (gap, lo, hi) == (0.5, 0.5, 0.5)  # no spread: the mean of a gap of 1 and a gap of 0
    rng = random.Random(2)
    covered, trials = 0, 300
    for _ in range(trials):  # two candidates right with probability 0.6 and 0.5, correlated per question
        hard = [rng.random() for _ in range(60)]
        a = [float(h < 0.6) for h in hard]
        b = [float(h < 0.5) if rng.random() < 0.8 else float(rng.random() < 0.5) for h in hard]
        _, lo, hi = paired_gap([(a, b)], seed=rng.randrange(10**6))
        covered += lo <= 0.1 <= hi
    assert 0.90 <= covered / trials <= 0.99
    with pytest.raises(ValueError, match="same, non-zero number of questions"):
        paired_gap([([1.0, 0.0], [1.0])])
    with pytest.raises(ValueError, match="at least one task"):
        paired_gap([])
