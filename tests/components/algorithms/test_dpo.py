"""DPO (sigmoid), IPO and hinge preference losses."""

import math

import pytest
import torch

from components.algorithms.dpo import DPO_LOSSES, dpo_loss

D = torch.float64


def pair(*values):
    return [torch.tensor([v], dtype=D) for v in values]


def test_dpo_by_hand():
    """policy (chosen, rejected) = (-1, -2), reference (-1.5, -1.5):
    chosen log-ratio 0.5, rejected -0.5, h = 1.
    sigmoid, beta 1: -log sigmoid(1) = log(1 + e^-1); rewards beta*ratio = 0.5, -0.5.
    label smoothing 0.1: 0.9 log(1 + e^-1) + 0.1 log(1 + e^1).
    ipo, beta 0.5: (h - 1/(2*0.5))^2 = 0.   hinge, beta 0.5: max(0, 1 - 0.5) = 0.5."""
    args = pair(-1.0, -2.0, -1.5, -1.5)
    losses, cr, rr = dpo_loss(*args, beta=1.0)
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-1))], dtype=D))
    torch.testing.assert_close(cr, torch.tensor([0.5], dtype=D))
    torch.testing.assert_close(rr, torch.tensor([-0.5], dtype=D))
    smooth, _, _ = dpo_loss(*args, beta=1.0, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))
    torch.testing.assert_close(smooth, torch.tensor([expected], dtype=D))
    torch.testing.assert_close(dpo_loss(*args, beta=0.5, loss_type="ipo")[0], torch.tensor([0.0], dtype=D))
    torch.testing.assert_close(dpo_loss(*args, beta=0.5, loss_type="hinge")[0], torch.tensor([0.5], dtype=D))


def test_policy_equal_to_reference_gives_log2():
    torch.manual_seed(0)
    c, r = torch.randn(4, dtype=D), torch.randn(4, dtype=D)
    losses, cr, rr = dpo_loss(c, r, c, r, beta=0.3)
    torch.testing.assert_close(losses, torch.full((4,), math.log(2.0), dtype=D))
    assert (cr == 0).all() and (rr == 0).all()


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_gradient_raises_chosen_and_lowers_rejected(loss_type):
    torch.manual_seed(1)
    pc = torch.randn(5, dtype=D, requires_grad=True)
    pr = torch.randn(5, dtype=D, requires_grad=True)
    rc, rr = pc.detach() + 0.1, pr.detach() - 0.1  # h = -0.2: inside every loss's active region
    losses, chosen_rewards, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert not chosen_rewards.requires_grad


@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_gradcheck(loss_type, smoothing):
    torch.manual_seed(2)
    xs = tuple(torch.randn(3, dtype=D, requires_grad=True) for _ in range(4))
    fn = lambda *a: dpo_loss(*a, beta=0.7, label_smoothing=smoothing, loss_type=loss_type)[0]
    assert torch.autograd.gradcheck(fn, xs)


def test_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(x, x, x, torch.zeros(4))
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        dpo_loss(torch.zeros(3, 2), x, x, x)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, label_smoothing=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="valid names: hinge, ipo, sigmoid"):
        dpo_loss(x, x, x, x, loss_type="kto")
