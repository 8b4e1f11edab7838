"""PPO clipped surrogate, clipped value loss, GAE and KL-shaped rewards."""

import math

import pytest
import torch

from components.algorithms.ppo import gae_advantages, kl_penalty_rewards, ppo_policy_loss, value_loss

D = torch.float64
L15, L05 = math.log(1.5), math.log(0.5)


def test_clipped_surrogate_by_hand():
    """eps = 0.2, four tokens (ratio, A):
    (1.5, +1): min(1.5, 1.2) = 1.2 -> loss -1.2 (clipped)
    (0.5, +1): min(0.5, 0.8) = 0.5 -> loss -0.5
    (0.5, -1): min(-0.5, -0.8) = -0.8 -> loss 0.8 (clipped)
    (1.5, -1): min(-1.5, -1.2) = -1.5 -> loss 1.5
    token-mean = 0.6 / 4 = 0.15; clip fraction 1/2."""
    logp = torch.tensor([[L15, L05, L05, L15]], dtype=D, requires_grad=True)
    old = torch.zeros(1, 4, dtype=D)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=D)
    loss, stats = ppo_policy_loss(logp, old, adv, torch.ones(1, 4))
    torch.testing.assert_close(loss, torch.tensor(0.15, dtype=D))
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(0.5, dtype=D))
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(1.0, dtype=D))
    # approx_kl = mean((r - 1) - log r)
    expected_kl = 2 * ((0.5 - L15) + (-0.5 - L05)) / 4
    torch.testing.assert_close(stats["approx_kl"], torch.tensor(expected_kl, dtype=D))
    # gradient: 0 on clipped tokens, d(-r A)/d logp = -r A / 4 elsewhere
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, 1.5 / 4]], dtype=D))


def test_clip_higher_by_hand():
    """clip_high = 0.28: ratio 1.5 with A = +1 is capped at 1.28 -> loss -1.28; the low side keeps 0.2."""
    logp = torch.tensor([[L15, L05]], dtype=D)
    adv = torch.tensor([[1.0, -1.0]], dtype=D)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 2, dtype=D), adv, torch.ones(1, 2), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor((-1.28 + 0.8) / 2, dtype=D))


def test_sequence_advantages_broadcast_and_padding_invariance():
    torch.manual_seed(0)
    logp, old = torch.randn(3, 5, dtype=D), torch.randn(3, 5, dtype=D)
    adv = torch.randn(3, dtype=D)
    mask = torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    for agg in ("token-mean", "seq-mean-token-mean"):
        ref, _ = ppo_policy_loss(logp, old, adv, mask, loss_agg=agg)
        full, _ = ppo_policy_loss(logp, old, adv[:, None].expand(3, 5), mask, loss_agg=agg)
        torch.testing.assert_close(ref, full)
        junk = torch.where(mask, logp, 1e3 * torch.randn(3, 5, dtype=D)).requires_grad_(True)
        out, _ = ppo_policy_loss(junk, torch.where(mask, old, -1e3), adv, mask, loss_agg=agg)
        torch.testing.assert_close(out, ref)
        out.backward()
        assert (junk.grad[~mask] == 0).all()


def test_value_loss_by_hand():
    """eps = 0.5. Token 0: v=2, old=1, R=0: (2-0)^2 = 4 vs (1.5-0)^2 = 2.25 -> 0.5*4 = 2.
    Token 1: v=3, old=1, R=3: 0 vs (1.5-3)^2 = 2.25 -> 0.5*2.25 = 1.125 (clipped branch).
    Mean 1.5625; clip fraction 1/2. Unclipped: 0.5 * (4 + 0) / 2 = 1."""
    v = torch.tensor([[2.0, 3.0, 7.0]], dtype=D)
    old = torch.tensor([[1.0, 1.0, 7.0]], dtype=D)
    ret = torch.tensor([[0.0, 3.0, -7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(v, old, ret, mask, clip_range=0.5)
    torch.testing.assert_close(loss, torch.tensor(1.5625, dtype=D))
    torch.testing.assert_close(stats["value_clip_fraction"], torch.tensor(0.5, dtype=D))
    loss, _ = value_loss(v, old, ret, mask, clip_range=None)
    torch.testing.assert_close(loss, torch.tensor(1.0, dtype=D))


def test_gae_by_hand():
    """rewards [0, 0, 1], values [.5, .5, .5], gamma = lam = 0.5, bootstrap 0 after the end:
    delta_2 = 1 - .5 = .5; delta_1 = 0 + .5*.5 - .5 = -.25; delta_0 = -.25
    A_2 = .5; A_1 = -.25 + .25*.5 = -.125; A_0 = -.25 + .25*(-.125) = -.28125; R = A + V."""
    r = torch.tensor([[0.0, 0.0, 1.0, 5.0]], dtype=D)
    v = torch.tensor([[0.5, 0.5, 0.5, 5.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae_advantages(r, v, mask, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.28125, -0.125, 0.5, 0.0]], dtype=D))
    torch.testing.assert_close(ret, torch.tensor([[0.21875, 0.375, 1.0, 0.0]], dtype=D))


def naive_gae(r, v, mask, gamma, lam):
    adv = torch.zeros_like(r)
    for b in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if mask[b, t]]
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            a = r[b, t].item() + gamma * next_v - v[b, t].item() + gamma * lam * next_a
            adv[b, t] = a
            next_v, next_a = v[b, t].item(), a
    return adv


def random_episode(seed):
    torch.manual_seed(seed)
    b, t = torch.randint(1, 5, (1,)).item(), torch.randint(1, 8, (1,)).item()
    return torch.randn(b, t, dtype=D), torch.randn(b, t, dtype=D), torch.rand(b, t) > 0.3


def test_gae_equals_naive_loop_with_gappy_masks():
    for seed in range(5):
        r, v, mask = random_episode(seed)
        adv, ret = gae_advantages(r, v, mask, gamma=0.9, lam=0.7)
        torch.testing.assert_close(adv, naive_gae(r, v, mask, 0.9, 0.7))
        torch.testing.assert_close(ret, torch.where(mask, adv + v, 0.0))


def test_gae_lambda1_is_monte_carlo_and_lambda0_is_td_error():
    for seed in range(4):
        r, v, mask = random_episode(seed)
        adv1, _ = gae_advantages(r, v, mask, gamma=1.0, lam=1.0)
        adv0, _ = gae_advantages(r, v, mask, gamma=0.9, lam=0.0)
        mc, td = torch.zeros_like(r), torch.zeros_like(r)
        for b in range(r.shape[0]):
            idx = [t for t in range(r.shape[1]) if mask[b, t]]
            for i, t in enumerate(idx):
                mc[b, t] = sum(r[b, j] for j in idx[i:]) - v[b, t]  # G_t - V_t
                v_next = v[b, idx[i + 1]] if i + 1 < len(idx) else 0.0
                td[b, t] = r[b, t] + 0.9 * v_next - v[b, t]  # r_t + gamma V_{t+1} - V_t
        torch.testing.assert_close(adv1, mc)
        torch.testing.assert_close(adv0, td)


def test_gae_gradcheck_and_padding_invariance():
    r, v, mask = random_episode(7)
    mask[:, 0] = True
    rg, vg = r.clone().requires_grad_(True), v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gae_advantages(a, b, mask, 0.9, 0.8), (rg, vg))
    junk_r = torch.where(mask, r, 1e3 * torch.randn_like(r)).requires_grad_(True)
    junk_v = torch.where(mask, v, 1e3 * torch.randn_like(v)).requires_grad_(True)
    adv, ret = gae_advantages(junk_r, junk_v, mask, 0.9, 0.8)
    ref_adv, ref_ret = gae_advantages(r, v, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    (adv.sum() + ret.sum()).backward()
    assert (junk_r.grad[~mask] == 0).all() and (junk_v.grad[~mask] == 0).all()


def test_kl_penalty_rewards_by_hand():
    """beta = 0.1, k1: token 0 has log-ratio log(.5/.25) = log 2 -> -0.1 log 2; token 1 ratio 0 and it
    is the last valid token, so it also gets the score 2; padding is 0."""
    logp = torch.tensor([[math.log(0.5), math.log(0.5), 3.0]], dtype=D)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), -3.0]], dtype=D)
    out = kl_penalty_rewards(torch.tensor([2.0], dtype=D), logp, ref, torch.tensor([[1, 1, 0]]), beta=0.1)
    torch.testing.assert_close(out, torch.tensor([[-0.1 * math.log(2.0), 2.0, 0.0]], dtype=D))


def test_value_loss_and_kl_rewards_ignore_padding():
    torch.manual_seed(3)
    v, old, ret, logp, ref = (torch.randn(2, 4, dtype=D) for _ in range(5))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    junk = lambda x: torch.where(mask, x, 1e3 * torch.randn_like(x))
    jv = junk(v).requires_grad_(True)
    out, _ = value_loss(jv, junk(old), junk(ret), mask)
    torch.testing.assert_close(out, value_loss(v, old, ret, mask)[0])
    out.backward()
    assert (jv.grad[~mask] == 0).all()
    scores = torch.tensor([1.0, -1.0], dtype=D)
    for est in ("k1", "k2", "k3"):
        torch.testing.assert_close(
            kl_penalty_rewards(scores, junk(logp), junk(ref), mask, 0.1, est),
            kl_penalty_rewards(scores, logp, ref, mask, 0.1, est),
        )


def test_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_policy_loss(x, torch.zeros(2, 4), x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(x, x, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        ppo_policy_loss(x, x, x, torch.ones(2, 4))
    with pytest.raises(ValueError, match="clip_low"):
        ppo_policy_loss(x, x, x, torch.ones(2, 3), clip_low=-0.1)
    with pytest.raises(ValueError, match="returns"):
        value_loss(x, x, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="lam"):
        gae_advantages(x, x, torch.ones(2, 3), lam=1.5)
    with pytest.raises(ValueError, match="mask"):
        kl_penalty_rewards(torch.zeros(2), x, x, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="scores"):
        kl_penalty_rewards(torch.zeros(3), x, x, torch.ones(2, 3), 0.1)
