"""The gain of one model over another, both scored on the same problems: paired, not pooled.

When two models answer the same held-out problems, their per-problem outcomes are correlated
(most problems both solve or both miss), so the standard error of the difference of their
accuracies is that of the mean per-problem difference (the paired t statistic's denominator),
not the pooled sqrt(se1^2 + se2^2) of two independent samples. Miller 2024, "Adding Error Bars
to Evals: A Statistical Approach to Language Model Evaluations", Sec. 4 (paired differences).

Pure Python (no torch): the pipeline computes it for every evaluated stage, cached runs included.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class PairedGain(NamedTuple):
    gain: float    # mean(after) - mean(before), as a fraction
    stderr: float  # standard error of the mean per-problem difference
    won: int       # problems `after` solves and `before` does not
    lost: int      # problems `before` solves and `after` does not
    n: int


def paired_gain(before: Sequence[bool | float], after: Sequence[bool | float]) -> PairedGain:
    """Accuracy gain of `after` over `before`, both scored on the same n >= 2 problems, in the same order.

    Formula: d_i = after_i - before_i in {-1, 0, 1}, gain = mean(d),
    stderr = sqrt(sum (d_i - gain)^2 / (n - 1) / n) = sqrt((won + lost - n gain^2) / (n (n - 1))).
    Problems both models solve (or both miss) add nothing to the difference, so this error is
    smaller than the unpaired sqrt(se_before^2 + se_after^2) when the two models agree on most problems.
    """
    if len(before) != len(after):
        raise ValueError(f"after: expected {len(before)} outcomes like before, got {len(after)}")
    if len(before) < 2:
        raise ValueError(f"before: a paired standard error needs at least 2 problems, got {len(before)}")
    if any(o not in (0, 1) for o in (*before, *after)):
        raise ValueError("outcomes: expected bools or 0/1 values")
    n = len(before)
    won = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    gain = (won - lost) / n
    return PairedGain(gain, math.sqrt(max(0.0, won + lost - n * gain * gain) / (n * (n - 1))), won, lost, n)
