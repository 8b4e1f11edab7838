"""ORPO odds-ratio preference loss."""

import math

import pytest
import torch

from components.algorithms.logprobs import sequence_logprob
from components.algorithms.orpo import log_odds, orpo_loss
from components.algorithms.sft import sft_loss

D = torch.float64


def test_orpo_by_hand():
    """chosen P = 1/2 -> odds 1 -> log odds 0; rejected P = 1/5 -> odds 1/4 -> log odds -log 4.
    log odds ratio = log 4; L_OR = -log sigmoid(log 4) = log(1 + 1/4).
    lam = 0.1: loss = -log(1/2) + 0.1 log(5/4)."""
    c = torch.tensor([math.log(0.5)], dtype=D)
    r = torch.tensor([math.log(0.2)], dtype=D)
    losses, ratio = orpo_loss(c, r, lam=0.1)
    torch.testing.assert_close(losses, torch.tensor([math.log(2.0) + 0.1 * math.log(1.25)], dtype=D))
    torch.testing.assert_close(ratio, torch.tensor([math.log(4.0)], dtype=D))


def test_lambda_zero_is_the_nll_term():
    """With lam = 0 the batch mean equals SFT's seq-mean-token-mean NLL on the chosen responses."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, dtype=D)
    labels = torch.randint(0, 5, (3, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    chosen = sequence_logprob(logp, mask, "mean")
    losses, _ = orpo_loss(chosen, chosen - 1.0, lam=0.0)
    torch.testing.assert_close(losses, -chosen)
    torch.testing.assert_close(losses.mean(), sft_loss(logits, labels, mask, "seq-mean-token-mean"))


def test_log_odds_is_stable_at_the_extremes():
    x = torch.tensor([-1e-12, -1e-6, -0.5, -50.0, 0.0], dtype=D)
    out = log_odds(x)
    assert torch.isfinite(out).all()
    # p -> 1: log odds ~ -log(-x); p -> 0: log odds ~ x
    torch.testing.assert_close(out[:2], -torch.log(-x[:2]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out[3], x[3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[2], torch.tensor(-0.5 - math.log(-math.expm1(-0.5)), dtype=D))


def test_gradcheck_and_direction():
    torch.manual_seed(1)
    c = (-0.1 - torch.rand(4, dtype=D)).requires_grad_(True)
    r = (-0.1 - torch.rand(4, dtype=D)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: orpo_loss(a, b, 0.5)[0], (c, r))
    orpo_loss(c, r, 0.5)[0].sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


def test_errors():
    with pytest.raises(ValueError, match="rejected_logps"):
        orpo_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="lam"):
        orpo_loss(torch.zeros(3), torch.zeros(3), lam=-1.0)
