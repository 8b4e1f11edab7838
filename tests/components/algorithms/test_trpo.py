"""Conjugate gradient, Fisher-vector products and the TRPO step on a softmax policy."""

import pytest
import torch

from components.algorithms.trpo import conjugate_gradient, fisher_vector_product, trpo_step

D = torch.float64


def test_conjugate_gradient_solves_spd_system():
    """A = [[4, 1], [1, 3]], b = [1, 2] -> x = A^-1 b = [1/11, 7/11] (CG is exact in n = 2 steps)."""
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=D)
    b = torch.tensor([1.0, 2.0], dtype=D)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iters=2), torch.tensor([1 / 11, 7 / 11], dtype=D))
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=D)
    a = m @ m.T + 6 * torch.eye(6, dtype=D)
    b = torch.randn(6, dtype=D)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, iters=20), torch.linalg.solve(a, b))


def softmax_problem(seed):
    torch.manual_seed(seed)
    theta_old = torch.randn(5, dtype=D)
    p_old = torch.softmax(theta_old, -1)
    adv = torch.randn(5, dtype=D)

    def surrogate(theta):
        # E_{a ~ pi_old}[pi(a) / pi_old(a) * A(a)]
        return (p_old * torch.softmax(theta, -1) / p_old * adv).sum()

    def kl(theta):
        # KL(pi_old || pi_theta)
        return (p_old * (p_old.log() - torch.log_softmax(theta, -1))).sum()

    return theta_old, p_old, surrogate, kl


def test_fisher_vector_product_matches_softmax_fisher():
    """For a softmax policy the Hessian of KL(pi_old || pi_theta) at theta_old is diag(p) - p p^T."""
    theta, p, _, kl = softmax_problem(1)
    fisher = torch.diag(p) - torch.outer(p, p)
    v = torch.randn(5, dtype=D)
    fvp = fisher_vector_product(kl, theta, damping=0.1)
    torch.testing.assert_close(fvp(v), fisher @ v + 0.1 * v)


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2, 0.1])
def test_accepted_step_respects_trust_region_and_improves(max_kl):
    for seed in range(5):
        theta, _, surrogate, kl = softmax_problem(seed)
        new, info = trpo_step(theta, surrogate, kl, max_kl=max_kl, cg_iters=10, damping=1e-3)
        assert info.accepted
        assert kl(new).item() <= max_kl and info.kl <= max_kl
        assert surrogate(new) > surrogate(theta)
        torch.testing.assert_close(info.improvement, (surrogate(new) - surrogate(theta)).item())
        assert not new.requires_grad


def test_no_improvement_possible_returns_params_unchanged():
    """Zero advantages: the gradient is 0, so no step is taken."""
    theta, _, _, kl = softmax_problem(2)
    new, info = trpo_step(theta, lambda t: 0.0 * t.sum(), kl)
    assert not info.accepted and info.improvement == 0.0
    torch.testing.assert_close(new, theta)


def test_errors():
    theta, _, surrogate, kl = softmax_problem(3)
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step(theta, surrogate, kl, max_kl=0.0)
    with pytest.raises(ValueError, match="params"):
        trpo_step(theta.view(1, 5), surrogate, kl)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        trpo_step(theta, surrogate, kl, backtrack_ratio=1.0)
    with pytest.raises(ValueError, match="cg_iters"):
        trpo_step(theta, surrogate, kl, cg_iters=0)


def test_conjugate_gradient_tolerance_is_relative():
    """CG(A, c b) = c CG(A, b): a tiny right-hand side is solved as accurately as a large one."""
    torch.manual_seed(4)
    m = torch.randn(6, 6, dtype=D)
    a = m @ m.T + 6 * torch.eye(6, dtype=D)
    b = torch.randn(6, dtype=D)
    exact = torch.linalg.solve(a, b)
    for c in (1.0, 1e-3, 1e-6, 1e-9):
        torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, c * b, iters=20) / c, exact)
    assert torch.equal(conjugate_gradient(lambda v: a @ v, torch.zeros(6, dtype=D)), torch.zeros(6, dtype=D))


@pytest.mark.parametrize("seed", range(3))
def test_step_is_invariant_to_scaling_the_surrogate(seed):
    """A TRPO step must not depend on multiplying the surrogate by a positive constant: the
    accepted parameters, their KL and the accept flag are the same for scales 1, 1e-3 and 1e-6
    (with |g|^2 around 1e-12 at 1e-6, an absolute CG tolerance of 1e-10 rejected the step)."""
    theta, _, surrogate, kl = softmax_problem(seed)
    steps = {}
    for c in (1.0, 1e-3, 1e-6):
        new, info = trpo_step(theta, lambda t, c=c: c * surrogate(t), kl, max_kl=0.01, damping=1e-3)
        steps[c] = (new, info)
    new_1, info_1 = steps[1.0]
    assert info_1.accepted
    for c in (1e-3, 1e-6):
        new_c, info_c = steps[c]
        assert info_c.accepted == info_1.accepted and info_c.n_backtracks == info_1.n_backtracks
        torch.testing.assert_close(new_c, new_1)
        torch.testing.assert_close(info_c.kl, info_1.kl)
        torch.testing.assert_close(info_c.improvement, c * info_1.improvement)


def test_fisher_from_another_kl_only_changes_the_direction_not_the_line_search():
    """With a Fisher KL that is a positive multiple c of the KL, F scales by c: the direction is
    the same, the full step shrinks by sqrt(c), and acceptance is still judged on the real KL."""
    theta, _, surrogate, kl = softmax_problem(0)
    new_1, info_1 = trpo_step(theta, surrogate, kl, max_kl=0.01, damping=0.0)
    new_4, info_4 = trpo_step(theta, surrogate, kl, max_kl=0.01, damping=0.0, fisher_kl_fn=lambda t: 4.0 * kl(t))
    assert info_1.accepted and info_4.accepted and info_4.kl <= 0.01
    step_1, step_4 = new_1 - theta, new_4 - theta
    scale_1, scale_4 = 0.8**info_1.n_backtracks, 0.8**info_4.n_backtracks
    torch.testing.assert_close(step_4 / scale_4, 0.5 * step_1 / scale_1)
