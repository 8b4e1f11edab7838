"""Accuracy, Brier score and expected calibration error of binary probabilities, by hand."""

import pytest
import torch

from components.algorithms.calibration import binary_accuracy, brier_score, expected_calibration_error

D = torch.float64


def test_brier_by_hand():
    """(0.9-1)^2 + (0.2-0)^2 + (0.5-0.25)^2 = 0.01 + 0.04 + 0.0625; the masked 4th item is ignored."""
    p = torch.tensor([[0.9, 0.2], [0.5, 0.0]], dtype=D)
    y = torch.tensor([[1.0, 0.0], [0.25, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(brier_score(p, y, mask), torch.tensor(0.1125 / 3, dtype=D))


def test_ece_by_hand():
    """Two bins used out of 2: [0, .5) holds p = .1, .3 with labels 0, 1 -> |0.5 - 0.2| = 0.3 (weight 2/5);
    [.5, 1] holds p = .6, .8, 1.0 with labels 1, 1, 1 -> |1 - 0.8| = 0.2 (weight 3/5) -> 0.12 + 0.12."""
    p = torch.tensor([0.1, 0.3, 0.6, 0.8, 1.0], dtype=D)
    y = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0], dtype=D)
    torch.testing.assert_close(expected_calibration_error(p, y, n_bins=2), torch.tensor(0.24, dtype=D))
    # one bin: |mean y - mean p| = |0.8 - 0.56|
    torch.testing.assert_close(expected_calibration_error(p, y, n_bins=1), torch.tensor(0.24, dtype=D))
    # perfectly calibrated soft labels (y == p) and a constant predictor at the base rate
    torch.testing.assert_close(expected_calibration_error(p, p), torch.tensor(0.0, dtype=D))
    base = torch.full((4,), 0.75, dtype=D)
    torch.testing.assert_close(expected_calibration_error(base, torch.tensor([1.0, 1, 1, 0], dtype=D)),
                               torch.tensor(0.0, dtype=D))


def test_ece_equals_a_loop_over_bins():
    torch.manual_seed(0)
    p, y = torch.rand(200, dtype=D), (torch.rand(200) > 0.4).to(D)
    n, total = 7, 0.0
    for b in range(n):
        inside = (p >= b / n) & ((p < (b + 1) / n) if b < n - 1 else (p <= 1))
        if inside.any():
            total += inside.sum().item() / 200 * abs(y[inside].mean().item() - p[inside].mean().item())
    assert abs(expected_calibration_error(p, y, n_bins=n).item() - total) < 1e-12


def test_binary_accuracy_with_soft_labels():
    p = torch.tensor([0.9, 0.4, 0.6, 0.1])
    y = torch.tensor([1.0, 0.75, 0.5, 0.0])  # sides: agree, disagree, agree (0.5 >= 0.5), agree
    torch.testing.assert_close(binary_accuracy(p, y), torch.tensor(0.75, dtype=torch.float64))


def test_errors():
    with pytest.raises(ValueError, match="probs: expected probabilities"):
        brier_score(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="labels: expected labels"):
        expected_calibration_error(torch.tensor([0.5]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="mask: no valid position"):
        binary_accuracy(torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels: expected shape"):
        brier_score(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.zeros(2), torch.zeros(2), n_bins=0)
