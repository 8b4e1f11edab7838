"""Evaluation metrics for sampled reasoning: pass@k, maj@k, accuracy with intervals.

- pass@k: unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code", Sec. 2.1, Eq. 1 and the numerically stable product form).
- maj@k: majority vote / self-consistency (Wang et al. 2023, "Self-Consistency
  Improves Chain of Thought Reasoning", Sec. 2), reported as maj@k by Lewkowycz
  et al. 2022 (Minerva) and DeepSeek-R1 (cons@64).
- Wilson score interval: Wilson 1927; Agresti & Coull 1998 (Eq. 2).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist
from typing import NamedTuple

from components.algorithms.validate import check_int, check_scalar


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct.

    Formula: 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)  (1.0 if n - c < k).
    """
    n, c, k = check_int("n", n, low=1), check_int("c", c, low=0), check_int("k", k, low=1)
    if c > n:
        raise ValueError(f"c: number correct ({c}) exceeds number of samples n ({n})")
    if k > n:
        raise ValueError(f"k: must be <= n ({n}), got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems. Shapes: two equal-length sequences of ints -> float."""
    if len(num_samples) != len(num_correct) or len(num_samples) == 0:
        raise ValueError(
            f"num_correct: expected a non-empty sequence as long as num_samples ({len(num_samples)}), "
            f"got {len(num_correct)}"
        )
    return sum(pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)) / len(num_samples)


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent non-None answer; ties go to the answer that appeared first. None if all None.

    Answers are compared with ``==``/hash, so canonicalise them (e.g. normalised strings) first.
    """
    counts: dict[Hashable, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1  # dicts keep first-seen order -> deterministic ties
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a, n in counts.items() if n == best)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int | None = None) -> float:
    """maj@k for one problem: 1.0 if the majority answer among the first k samples is correct.

    ``answers[i]`` is sample i's extracted answer (None = unparseable, abstains),
    ``correct[i]`` whether the verifier accepted it. Returns 0.0 if every answer is None.
    """
    if len(answers) != len(correct) or len(answers) == 0:
        raise ValueError(f"correct: expected {len(answers)} flags like answers (non-empty), got {len(correct)}")
    k = len(answers) if k is None else check_int("k", k, low=1)
    if k > len(answers):
        raise ValueError(f"k: must be <= number of answers ({len(answers)}), got {k}")
    winner = majority_vote(answers[:k])
    if winner is None:
        return 0.0
    return float(bool(next(c for a, c in zip(answers[:k], correct[:k]) if a == winner)))


class AccuracyCI(NamedTuple):
    accuracy: float
    stderr: float  # sqrt(p (1 - p) / n), the normal-approximation standard error
    low: float  # Wilson score interval
    high: float


def accuracy_ci(num_correct: int, n: int, confidence: float = 0.95) -> AccuracyCI:
    """Accuracy with standard error and Wilson score confidence interval.

    Formula: p = c/n, z = Phi^{-1}((1 + confidence)/2),
    centre = (p + z^2/(2n)) / (1 + z^2/n),
    half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2)).
    """
    n = check_int("n", n, low=1)
    c = check_int("num_correct", num_correct, low=0)
    if c > n:
        raise ValueError(f"num_correct: {c} exceeds n ({n})")
    confidence = check_scalar("confidence", confidence, low=0.0, high=1.0, low_open=True, high_open=True)
    p = c / n
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return AccuracyCI(p, math.sqrt(p * (1 - p) / n), max(0.0, centre - half), min(1.0, centre + half))


def accuracy_with_ci(outcomes: Sequence[bool | float], confidence: float = 0.95) -> AccuracyCI:
    """``accuracy_ci`` from per-example outcomes (bools, or 0/1 numbers). Non-empty."""
    if len(outcomes) == 0:
        raise ValueError("outcomes: expected at least one outcome")
    if any(o not in (0, 1) for o in outcomes):
        raise ValueError("outcomes: expected bools or 0/1 values")
    return accuracy_ci(int(sum(bool(o) for o in outcomes)), len(outcomes), confidence)
