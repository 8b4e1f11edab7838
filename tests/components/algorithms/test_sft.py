"""Masked next-token NLL."""

import math

import pytest
import torch
import torch.nn.functional as F

from components.algorithms.sft import sft_loss

D = torch.float64


def test_sft_loss_by_hand():
    """Token 0: logits [log 3, 0], label 0 -> NLL -log(3/4). Token 1: logits [0, 0] -> NLL log 2.
    Token 2 is prompt (masked). token-mean = (-log .75 + log 2) / 2."""
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [9.0, -9.0]]], dtype=D)
    labels = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.tensor((-math.log(0.75) + math.log(2.0)) / 2, dtype=D)
    torch.testing.assert_close(sft_loss(logits, labels, mask), expected)


def test_matches_cross_entropy_with_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, dtype=D)
    labels = torch.randint(0, 6, (3, 4))
    mask = torch.rand(3, 4) > 0.4
    mask[0, 0] = True
    ce = F.cross_entropy(logits.view(-1, 6), torch.where(mask, labels, -100).view(-1))
    torch.testing.assert_close(sft_loss(logits, labels, mask), ce)


def test_masked_positions_never_matter():
    """Junk logits/labels at prompt or padding positions: same loss and zero gradient there."""
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, dtype=D)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    ref = sft_loss(logits, labels, mask)
    pad = ~mask.bool()
    junk = torch.where(pad.unsqueeze(-1), 1e3 * torch.randn(2, 5, 7, dtype=D), logits).requires_grad_(True)
    out = sft_loss(junk, torch.where(pad, -100, labels), mask)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert (junk.grad[pad] == 0).all()


def test_errors():
    with pytest.raises(ValueError, match="mask"):
        sft_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))
