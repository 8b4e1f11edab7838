"""pass@k, maj@k and accuracy confidence intervals."""

import math

import pytest

from components.algorithms.metrics import (
    accuracy_ci,
    accuracy_with_ci,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
)


def test_pass_at_k_by_hand():
    """n=2, c=1, k=1: 1/2. n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7.
    n - c < k: every k-subset holds a correct sample -> 1. c = 0 -> 0."""
    assert pass_at_k(2, 1, 1) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    # large n stays finite and in [0, 1] where the binomials would be huge
    assert 0.0 < pass_at_k(10_000, 3, 100) < 1.0
    assert mean_pass_at_k([2, 5], [1, 2], 1) == pytest.approx((0.5 + 0.4) / 2)


def test_maj_at_k_by_hand():
    """'4' gets 2 votes vs 1 for '5' (None abstains) -> majority '4', which is correct."""
    answers, correct = ["4", "5", "4", None], [True, False, True, False]
    assert maj_at_k(answers, correct) == 1.0
    # first two only: tie '4' vs '5' -> the first seen ('4') wins
    assert maj_at_k(answers, correct, k=2) == 1.0
    assert maj_at_k(["5", "4", "4", "5"], [False, True, True, False]) == 0.0  # tie -> '5'
    assert maj_at_k([None, None], [False, False]) == 0.0
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"


def test_accuracy_ci_by_hand():
    """8/10 at 95%: z = 1.959964, p = 0.8;
    centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.71674, half = z/(1 + z^2/10) * sqrt(0.016 + z^2/400) = 0.22658
    -> Wilson (0.49016, 0.94332); stderr sqrt(0.8 * 0.2 / 10) = 0.126491."""
    ci = accuracy_ci(8, 10)
    assert ci.accuracy == 0.8
    assert ci.stderr == pytest.approx(math.sqrt(0.016))
    assert ci.low == pytest.approx(0.49016, abs=1e-5)
    assert ci.high == pytest.approx(0.94332, abs=1e-5)
    zero = accuracy_ci(0, 20)
    assert zero.low == 0.0 and 0.0 < zero.high < 0.2 and zero.stderr == 0.0
    assert accuracy_with_ci([True] * 8 + [False] * 2) == ci


def test_errors():
    with pytest.raises(ValueError, match="c:"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k:"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="num_correct"):
        mean_pass_at_k([3, 3], [1], 1)
    with pytest.raises(ValueError, match="correct"):
        maj_at_k(["a"], [True, False])
    with pytest.raises(ValueError, match="k:"):
        maj_at_k(["a"], [True], k=2)
    with pytest.raises(ValueError, match="n:"):
        accuracy_ci(0, 0)
    with pytest.raises(ValueError, match="outcomes"):
        accuracy_with_ci([])
    with pytest.raises(ValueError, match="outcomes"):
        accuracy_with_ci([0.5])
    with pytest.raises(ValueError, match="confidence"):
        accuracy_ci(1, 2, confidence=1.0)
