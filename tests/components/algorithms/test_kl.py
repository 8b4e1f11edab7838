"""KL estimators k1, k2, k3 (Schulman 2020)."""

import math

import pytest
import torch

from components.algorithms.kl import KL_ESTIMATORS, token_kl

D = torch.float64


def test_estimators_by_hand():
    """pi(a) = 1/2, pi_ref(a) = 1/4: log-ratio log 2.
    k1 = log 2; k2 = (log 2)^2 / 2; k3 = pi_ref/pi - log(pi_ref/pi) - 1 = 1/2 + log 2 - 1."""
    logp = torch.tensor([math.log(0.5)], dtype=D)
    ref = torch.tensor([math.log(0.25)], dtype=D)
    l2 = math.log(2.0)
    torch.testing.assert_close(token_kl(logp, ref, "k1"), torch.tensor([l2], dtype=D))
    torch.testing.assert_close(token_kl(logp, ref, "k2"), torch.tensor([0.5 * l2**2], dtype=D))
    torch.testing.assert_close(token_kl(logp, ref, "k3"), torch.tensor([0.5 + l2 - 1.0], dtype=D))


def test_k1_and_k3_are_unbiased_in_exact_expectation():
    """E_{a~pi}[k(a)] = sum_a pi(a) k(a) must equal KL(pi || pi_ref) exactly for k1 and k3."""
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, dtype=D), -1)
    ref = torch.log_softmax(torch.randn(6, dtype=D), -1)
    true_kl = (logp.exp() * (logp - ref)).sum()
    for name in ("k1", "k3"):
        torch.testing.assert_close((logp.exp() * token_kl(logp, ref, name)).sum(), true_kl)


def test_k3_nonnegative_and_zero_iff_equal():
    torch.manual_seed(1)
    logp, ref = torch.randn(50, dtype=D), torch.randn(50, dtype=D)
    assert (token_kl(logp, ref, "k3") >= 0).all()
    assert (token_kl(logp, logp, "k3") == 0).all()


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_gradcheck(name):
    torch.manual_seed(2)
    logp = torch.randn(2, 3, dtype=D, requires_grad=True)
    ref = torch.randn(2, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: token_kl(a, b, name), (logp, ref))


def test_errors():
    with pytest.raises(ValueError, match="ref_logp"):
        token_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        token_kl(torch.zeros(2), torch.zeros(2), "k4")


def test_kl_terms_in_a_loss_have_the_documented_expected_gradients():
    """Samples held fixed, E_pi[grad k]: k2 -> grad KL(pi||ref), k3 -> grad KL(ref||pi), k1 -> 0 (refused)."""
    from components.algorithms import grpo_loss

    z, ref = torch.randn(5, requires_grad=True, generator=torch.Generator().manual_seed(0)), torch.randn(5).log_softmax(-1)
    logp = z.log_softmax(-1)
    p = logp.exp().detach()

    def grad(f):
        return torch.autograd.grad(f, z, retain_graph=True)[0]

    torch.testing.assert_close(grad((p * token_kl(logp, ref, "k2")).sum()), grad((logp.exp() * (logp - ref)).sum()))
    torch.testing.assert_close(grad((p * token_kl(logp, ref, "k3")).sum()), grad((ref.exp() * (ref - logp)).sum()))
    torch.testing.assert_close(grad((p * token_kl(logp, ref, "k1")).sum()), torch.zeros(5))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="zero expected gradient"):
        grpo_loss(x, x, x, torch.ones(2), torch.ones(2, 3), beta=0.04, kl_estimator="k1")
