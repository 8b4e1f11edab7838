"""Accuracy and calibration of probabilistic binary predictions (e.g. a PRM's step scores).

Labels may be hard (0/1) or soft (a probability in [0, 1], such as the Monte-Carlo fraction
of correct continuations Math-Shepherd uses as a soft label).

- Brier score: Brier 1950 ("Verification of forecasts expressed in terms of probability").
- Expected calibration error with equal-width bins: Naeini et al. 2015 ("Obtaining well
  calibrated probabilities using Bayesian binning"); Guo et al. 2017 ("On calibration of
  modern neural networks", Sec. 2, Eq. 3). With soft labels the accuracy of a bin is the
  mean label in it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms.validate import check_float, check_int, check_mask, check_same_shape, check_scalar


def _valid(probs: Tensor, labels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The probabilities and labels at valid positions, flattened; checks ranges."""
    check_same_shape("probs", probs, "labels", labels)
    check_float("probs", probs)
    mask = torch.ones_like(probs, dtype=torch.bool) if mask is None else check_mask("mask", mask, "probs", probs)
    p, y = probs[mask], labels[mask].to(probs.dtype)
    if p.numel() == 0:
        raise ValueError("mask: no valid position to score")
    if bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("probs: expected probabilities in [0, 1]")
    if bool(((y < 0) | (y > 1) | y.isnan()).any()):
        raise ValueError("labels: expected labels in [0, 1]")
    return p, y


def binary_accuracy(probs: Tensor, labels: Tensor, mask: Tensor | None = None, threshold: float = 0.5) -> Tensor:
    """Share of valid positions where the prediction and the label fall on the same side of `threshold`.

    Shapes: probs, labels, mask: any one shape -> scalar.
    Formula: mean over valid n of [ (p_n >= t) == (y_n >= t) ].
    """
    threshold = check_scalar("threshold", threshold, low=0.0, high=1.0)
    p, y = _valid(probs, labels, mask)
    return ((p >= threshold) == (y >= threshold)).double().mean()  # float64: exact against a threshold


def brier_score(probs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of probabilities against labels.

    Shapes: probs, labels, mask: any one shape -> scalar. Formula: mean over valid n of (p_n - y_n)^2.
    """
    p, y = _valid(probs, labels, mask)
    return (p - y).square().mean()


def expected_calibration_error(probs: Tensor, labels: Tensor, mask: Tensor | None = None,
                               n_bins: int = 10) -> Tensor:
    """Expected calibration error over `n_bins` equal-width probability bins.

    Shapes: probs, labels, mask: any one shape -> scalar.
    Formula: ECE = sum_b (|B_b| / N) * | mean_{n in B_b} y_n - mean_{n in B_b} p_n |, where bin b
    holds the valid p in [b/n_bins, (b+1)/n_bins) (the last bin also holds p = 1); empty bins add 0.
    """
    n_bins = check_int("n_bins", n_bins, low=1)
    p, y = _valid(probs, labels, mask)
    bins = (p * n_bins).floor().long().clamp_(0, n_bins - 1)
    sum_p = torch.zeros(n_bins, dtype=p.dtype, device=p.device).index_add_(0, bins, p)
    sum_y = torch.zeros_like(sum_p).index_add_(0, bins, y)
    # |B_b| / N * |sum_y / |B_b| - sum_p / |B_b|| = |sum_y - sum_p| / N
    return (sum_y - sum_p).abs().sum() / p.numel()
