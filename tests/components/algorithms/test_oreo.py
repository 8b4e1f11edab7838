"""OREO soft-Bellman value and policy losses (token and step level)."""

import pytest
import torch

from components.algorithms.oreo import oreo_policy_loss, oreo_value_loss

D = torch.float64


def test_token_level_by_hand():
    """Log-ratios rho = logp - ref = [0.5, 0.25], beta = 2, R = 1, V = [0.5, 0.25]:
    residual_0 = 0.5 - 1 + 2 * (0.5 + 0.25) = 1.0;  residual_1 = 0.25 - 1 + 2 * 0.25 = -0.25.
    L = (1.0^2 + 0.25^2) / 2 = 0.53125 for both losses.
    dL_V/dV_t = residual_t (= 2 r_t / 2); dL_pi/dlogp_t = beta * residual_t = [2.0, -0.5]
    (each action only through its own residual); padding gets nothing."""
    logp = torch.tensor([[-1.0, -2.0, 9.0]], dtype=D, requires_grad=True)
    ref = torch.tensor([[-1.5, -2.25, -9.0]], dtype=D)
    values = torch.tensor([[0.5, 0.25, 7.0]], dtype=D, requires_grad=True)
    rewards = torch.tensor([1.0], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    lv = oreo_value_loss(values, logp, ref, rewards, mask, beta=2.0)
    lp = oreo_policy_loss(logp, ref, values, rewards, mask, beta=2.0)
    torch.testing.assert_close(lv, torch.tensor(0.53125, dtype=D))
    torch.testing.assert_close(lp, torch.tensor(0.53125, dtype=D))
    (lv + lp).backward()
    torch.testing.assert_close(values.grad, torch.tensor([[1.0, -0.25, 0.0]], dtype=D))
    torch.testing.assert_close(logp.grad, torch.tensor([[2.0, -0.5, 0.0]], dtype=D))


def test_step_level_by_hand():
    """Steps: token 0 alone (step_end on token 0), tokens 1-2 form the final step.
    Step log-ratios [0.5, 0.25 + 0.25] = [0.5, 0.5]; V read at step starts: [0.5, 0.25] (token 1).
    beta 2, R 1: residuals 0.5 - 1 + 2 * 1.0 = 1.5 and 0.25 - 1 + 2 * 0.5 = 0.25;
    L = (2.25 + 0.0625) / 2 = 1.15625. dL_V/dV = [1.5, 0.25 (token 1), 0 (token 2, not a start)];
    dL_pi/dlogp = beta * residual of the token's step = [3.0, 0.5, 0.5]."""
    logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D, requires_grad=True)
    ref = torch.tensor([[-1.5, -2.25, -3.25]], dtype=D)
    values = torch.tensor([[0.5, 0.25, 99.0]], dtype=D, requires_grad=True)
    args = (torch.tensor([1.0], dtype=D), torch.ones(1, 3))
    ends = torch.tensor([[1, 0, 0]])
    lv = oreo_value_loss(values, logp, ref, *args, beta=2.0, mode="step", step_end_mask=ends)
    lp = oreo_policy_loss(logp, ref, values, *args, beta=2.0, mode="step", step_end_mask=ends)
    torch.testing.assert_close(lv, torch.tensor(1.15625, dtype=D))
    torch.testing.assert_close(lp, torch.tensor(1.15625, dtype=D))
    (lv + lp).backward()
    torch.testing.assert_close(values.grad, torch.tensor([[1.5, 0.25, 0.0]], dtype=D))
    torch.testing.assert_close(logp.grad, torch.tensor([[3.0, 0.5, 0.5]], dtype=D))


def random_batch(seed, b=3, t=6):
    torch.manual_seed(seed)
    logp, ref, values = (torch.randn(b, t, dtype=D) for _ in range(3))
    mask = torch.rand(b, t) > 0.3
    mask[:, 0] = True
    ends = torch.rand(b, t) > 0.6
    return logp, ref, values, torch.randn(b, dtype=D), mask, ends


def naive_steps(logp, ref, values, rewards, mask, ends, beta):
    """Per row: split valid tokens into steps; return [(token indices, V_k - R + beta * sum_{j>=k} rho_j)]."""
    rows = []
    for b in range(logp.shape[0]):
        steps, current = [], []
        for t in range(logp.shape[1]):
            if mask[b, t]:
                current.append(t)
                if ends[b, t]:
                    steps.append(current)
                    current = []
        if current:
            steps.append(current)
        rho = [sum(logp[b, t].item() - ref[b, t].item() for t in s) for s in steps]
        res = [values[b, s[0]].item() - rewards[b].item() + beta * sum(rho[k:]) for k, s in enumerate(steps)]
        rows.append(list(zip(steps, res)))
    return rows


def naive_value_loss(*args):
    """(1/B) sum_b (1/K_b) sum_k residual_k^2."""
    rows = naive_steps(*args)
    return torch.tensor(sum(sum(r * r for _, r in row) / len(row) for row in rows) / len(rows), dtype=D)


def test_step_mode_equals_naive_loop_with_gappy_masks():
    for seed in range(4):
        logp, ref, values, rewards, mask, ends = random_batch(seed)
        out = oreo_value_loss(values, logp, ref, rewards, mask, 0.3, "step", ends)
        torch.testing.assert_close(out, naive_value_loss(logp, ref, values, rewards, mask, ends, 0.3))
        # the policy loss has the same value (only its gradient path differs)
        torch.testing.assert_close(oreo_policy_loss(logp, ref, values, rewards, mask, 0.3, "step", ends), out)
        # token mode == step mode where every valid token ends a step
        torch.testing.assert_close(
            oreo_value_loss(values, logp, ref, rewards, mask, 0.3),
            oreo_value_loss(values, logp, ref, rewards, mask, 0.3, "step", mask),
        )


def test_consistent_value_gives_zero_loss():
    """If V(s_t) = R - beta * sum_{i>=t} rho_i exactly, the soft Bellman equation holds: both losses 0."""
    logp, ref, _, rewards, _, _ = random_batch(5)
    mask = torch.ones_like(logp, dtype=torch.bool)
    suffix = (logp - ref).flip(-1).cumsum(-1).flip(-1)
    values = rewards[:, None] - 0.5 * suffix
    torch.testing.assert_close(oreo_value_loss(values, logp, ref, rewards, mask, 0.5), torch.tensor(0.0, dtype=D))
    torch.testing.assert_close(oreo_policy_loss(logp, ref, values, rewards, mask, 0.5), torch.tensor(0.0, dtype=D))


def test_response_level_is_one_action():
    """All-False step_end_mask: a single action, loss = mean_b (V_0 - R + beta * sum_t rho_t)^2."""
    logp, ref, values, rewards, _, _ = random_batch(6)
    mask = torch.ones_like(logp, dtype=torch.bool)
    out = oreo_value_loss(values, logp, ref, rewards, mask, 0.5, "step", torch.zeros_like(mask))
    expected = ((values[:, 0] - rewards + 0.5 * (logp - ref).sum(-1)) ** 2).mean()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("mode", ["token", "step"])
def test_padding_junk_changes_nothing(mode):
    logp, ref, values, rewards, mask, ends = random_batch(7)
    ends = ends if mode == "step" else None
    junk = lambda x: torch.where(mask, x, 1e3 * torch.randn_like(x))
    jl, jv = junk(logp).requires_grad_(True), junk(values).requires_grad_(True)
    lv = oreo_value_loss(jv, jl, junk(ref), rewards, mask, 0.3, mode, ends)
    lp = oreo_policy_loss(jl, junk(ref), jv, rewards, mask, 0.3, mode, ends)
    torch.testing.assert_close(lv, oreo_value_loss(values, logp, ref, rewards, mask, 0.3, mode, ends))
    torch.testing.assert_close(lp, oreo_policy_loss(logp, ref, values, rewards, mask, 0.3, mode, ends))
    (lv + lp).backward()
    assert (jl.grad[~mask] == 0).all() and (jv.grad[~mask] == 0).all()


def test_value_gradcheck_and_policy_semi_gradient():
    """L_V is an ordinary function of V: gradcheck. L_pi is a semi-gradient by design (future
    log-ratios are stop-gradient), so instead check dL_pi/dlogp_t = 2 beta residual_k(t) / (K_b B)."""
    logp, ref, values, rewards, mask, ends = random_batch(8, b=2, t=4)
    vg = values.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: oreo_value_loss(v, logp, ref, rewards, mask, 0.3, "step", ends), (vg,))
    lg = logp.clone().requires_grad_(True)
    oreo_policy_loss(lg, ref, values, rewards, mask, 0.3, "step", ends).backward()
    expected = torch.zeros_like(logp)
    rows = naive_steps(logp, ref, values, rewards, mask, ends, 0.3)
    for b, row in enumerate(rows):
        for tokens, res in row:
            expected[b, tokens] = 2 * 0.3 * res / (len(row) * len(rows))
    torch.testing.assert_close(lg.grad, expected)


def test_errors():
    x = torch.zeros(2, 3)
    r = torch.zeros(2)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="step_end_mask"):
        oreo_value_loss(x, x, x, r, m, 0.1, mode="step")
    with pytest.raises(ValueError, match="step_end_mask"):
        oreo_policy_loss(x, x, x, r, m, 0.1, mode="token", step_end_mask=m)
    with pytest.raises(ValueError, match="mode"):
        oreo_value_loss(x, x, x, r, m, 0.1, mode="sentence")
    with pytest.raises(ValueError, match="rewards"):
        oreo_value_loss(x, x, x, torch.zeros(3), m, 0.1)
    with pytest.raises(ValueError, match="values"):
        oreo_policy_loss(x, x, torch.zeros(2, 4), r, m, 0.1)
    with pytest.raises(ValueError, match="mask"):
        oreo_policy_loss(x, x, x, r, torch.ones(2, 2), 0.1)
