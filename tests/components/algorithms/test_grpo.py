"""Group-relative advantages and the GRPO loss."""

import math

import pytest
import torch

from components.algorithms.grpo import (
    drgrpo_advantages,
    grpo_advantages,
    grpo_loss,
    rloo_advantages,
    zero_variance_groups,
)
from components.algorithms.ppo import ppo_policy_loss

D = torch.float64


def test_grpo_advantages_by_hand():
    """Group [1, 0, 0, 1]: mean 1/2, Bessel std sqrt(4 * 1/4 / 3) = sqrt(1/3) -> +-(1/2) sqrt(3).
    Same rewards as two groups of 2: [1, 0] has std sqrt(1/2) -> +-(1/2)/sqrt(1/2) = +-sqrt(1/2)."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D)
    a = math.sqrt(3.0) / 2
    torch.testing.assert_close(grpo_advantages(r, 4, eps=0.0), torch.tensor([a, -a, -a, a], dtype=D))
    b = math.sqrt(0.5)
    torch.testing.assert_close(grpo_advantages(r, 2, eps=0.0), torch.tensor([b, -b, -b, b], dtype=D))
    torch.testing.assert_close(grpo_advantages(r.view(2, 2), eps=0.0), torch.tensor([[b, -b], [-b, b]], dtype=D))


def test_drgrpo_and_rloo_by_hand():
    """Dr. GRPO: r - mean = +-1/2. RLOO: 1 - mean(0, 0, 1) = 2/3 and 0 - mean(1, 0, 1) = -2/3."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D)
    torch.testing.assert_close(drgrpo_advantages(r, 4), torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=D))
    t = 2.0 / 3.0
    torch.testing.assert_close(rloo_advantages(r, 4), torch.tensor([t, -t, -t, t], dtype=D))


@pytest.mark.parametrize("fn", [grpo_advantages, drgrpo_advantages, rloo_advantages])
def test_advantages_sum_to_zero_per_group_and_identical_groups_are_zero(fn):
    torch.manual_seed(0)
    r = torch.randn(5, 6, dtype=D)
    r[1] = 0.1  # identical rewards whose mean is not exactly representable
    r[3] = 1.0
    adv = fn(r)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(5, dtype=D))
    assert (adv[1] == 0).all() and (adv[3] == 0).all()
    assert torch.isfinite(adv).all()


def test_group_of_one_and_zero_variance_mask():
    assert (grpo_advantages(torch.tensor([0.3, 2.0]), 1) == 0).all()
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(zero_variance_groups(r, 2), torch.tensor([True, False, True]))


def test_grpo_loss_by_hand():
    """On-policy (old = logp) with ref = logp: ratio 1, KL 0, so loss = -mean(A).
    Rows of 3 and 1 tokens with A = +1, -1: token-mean (3 - 1)/4 -> -0.5; seq-mean-token-mean -> 0.
    With ref = logp + log 2 (A = 0): k3 = 2 - log 2 - 1 per token -> loss = 0.1 * (1 - log 2)."""
    logp = torch.zeros(2, 3, dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=D)
    loss, stats = grpo_loss(logp, logp, logp, adv, mask, beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(-0.5, dtype=D))
    torch.testing.assert_close(stats["kl"], torch.tensor(0.0, dtype=D))
    loss, _ = grpo_loss(logp, logp, logp, adv, mask, beta=0.1, loss_agg="seq-mean-token-mean")
    torch.testing.assert_close(loss, torch.tensor(0.0, dtype=D))
    loss, stats = grpo_loss(logp, logp, logp + math.log(2.0), torch.zeros(2, dtype=D), mask, beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * (1 - math.log(2.0)), dtype=D))
    torch.testing.assert_close(stats["kl"], torch.tensor(1 - math.log(2.0), dtype=D))


def test_grpo_loss_without_kl_equals_ppo_and_gradient_direction():
    torch.manual_seed(1)
    logp = torch.randn(3, 4, dtype=D, requires_grad=True)
    old = logp.detach() + 0.05 * torch.randn(3, 4, dtype=D)
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=D)
    mask = torch.ones(3, 4)
    g, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, clip_high=0.28)
    p, _ = ppo_policy_loss(logp, old, adv, mask, clip_high=0.28)
    torch.testing.assert_close(g, p)
    g.backward()
    # descent raises log-probs of positive-advantage samples and lowers negative ones
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()


def test_grpo_loss_padding_invariance():
    torch.manual_seed(2)
    logp, old, ref = (torch.randn(3, 5, dtype=D) for _ in range(3))
    adv = torch.randn(3, dtype=D)
    mask = torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    expected, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.1)
    junk = torch.where(mask, logp, 1e3 * torch.randn(3, 5, dtype=D)).requires_grad_(True)
    out, _ = grpo_loss(junk, torch.where(mask, old, 1e3), torch.where(mask, ref, -1e3), adv, mask, beta=0.1)
    torch.testing.assert_close(out, expected)
    out.backward()
    assert (junk.grad[~mask] == 0).all()


def test_errors():
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(6))
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages(torch.zeros(2, 2, 2))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, None, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        grpo_loss(x, x, None, torch.zeros(2), torch.ones(2, 3), beta=0.0, kl_estimator="k9")
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(x, x, x, torch.zeros(2), torch.ones(3, 3))
