"""Score intervals: Wilson on known binomial data, bootstrap on repeated samples."""
import math
import random

import pytest

from alloy.evaluation.intervals import bootstrap, score_interval, wilson


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
