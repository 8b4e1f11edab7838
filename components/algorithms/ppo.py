"""PPO pieces: clipped policy surrogate, clipped value loss, GAE, KL-shaped rewards.

References: Schulman et al. 2017 (PPO, Eq. 7 clipped surrogate, Eq. 9 value
term); Schulman et al. 2016 (GAE, Eq. 16); DAPO (Yu et al. 2025, Sec. 3.1)
for the decoupled ``clip_low``/``clip_high`` ("clip-higher"); Ziegler et al.
2019 / Ouyang et al. 2022 (Eq. 2) for the per-token KL penalty in the reward.

Token tensors are ``[B, T]`` with a ``mask`` (True on response tokens); all
outputs are 0 at padding and padding never reaches a loss or gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.kl import token_kl
from components.algorithms.masked import fill_padding, last_valid_index, masked_mean
from components.algorithms.validate import check_scalar, check_tensor, check_token_tensors


def expand_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast sequence-level advantages [B] to tokens [B, T]; [B, T] passes through."""
    check_tensor("advantages", advantages)
    if advantages.ndim == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.unsqueeze(-1).expand_as(like)
    if advantages.shape != like.shape:
        raise ValueError(
            f"advantages: expected shape ({like.shape[0]},) or {tuple(like.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    return advantages


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped surrogate loss (no validation, no masking; see ``ppo_policy_loss``).

    Returns (loss [B, T], ratio [B, T], is_clipped [B, T] bool).
    """
    # ratio = pi/pi_old = exp(logp - old_logp)
    # loss  = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), ratio, clipped < unclipped


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    loss_agg: str = "token-mean",
    norm_constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped policy loss with DAPO clip-higher.

    Shapes: logp, old_logp [B, T]; advantages [B, T] or [B]; mask [B, T] -> scalar.
    ``clip_high`` defaults to ``clip_low`` (symmetric PPO clipping).
    Stats (detached 0-dim tensors, token means over the mask): ``clip_fraction``
    (tokens where the clipped branch is active), ``approx_kl`` (k3 estimate of
    KL(pi_old || pi) = mean((ratio - 1) - log ratio)), ``ratio_mean``.
    """
    clip_low = check_scalar("clip_low", clip_low, low=0.0, high=1.0)
    clip_high = clip_low if clip_high is None else check_scalar("clip_high", clip_high, low=0.0)
    mask = check_token_tensors(mask, "logp", logp, old_logp=old_logp)
    adv = fill_padding(expand_advantages(advantages, logp), mask)
    logp, old_logp = fill_padding(logp, mask), fill_padding(old_logp, mask)
    loss_tok, ratio, is_clipped = clipped_surrogate(logp, old_logp, adv, clip_low, clip_high)
    loss = aggregate_loss(loss_tok, mask, loss_agg, norm_constant)
    return loss, policy_loss_stats(logp, old_logp, ratio, is_clipped, mask)


def policy_loss_stats(
    logp: Tensor, old_logp: Tensor, ratio: Tensor, is_clipped: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """Detached token-mean diagnostics of a clipped policy update (all inputs [B, T])."""
    with torch.no_grad():
        log_ratio = logp - old_logp
        return {
            "clip_fraction": masked_mean(is_clipped.to(logp.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
    loss_agg: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss.

    Shapes: values, old_values, returns, mask [B, T] -> scalar.
    Formula: v_clip = old_v + clip(v - old_v, -eps, eps);
    l = 0.5 * max((v - R)^2, (v_clip - R)^2); with clip_range=None l = 0.5 (v - R)^2.
    Stats: ``value_clip_fraction`` (tokens where the clipped error is the larger).
    """
    mask = check_token_tensors(mask, "values", values, old_values=old_values, returns=returns)
    v, old_v, ret = (fill_padding(x, mask) for x in (values, old_values, returns))
    err = (v - ret) ** 2
    if clip_range is None:
        loss_tok, is_clipped = err, torch.zeros_like(mask)
    else:
        eps = check_scalar("clip_range", clip_range, low=0.0)
        err_clip = (old_v + torch.clamp(v - old_v, -eps, eps) - ret) ** 2
        loss_tok, is_clipped = torch.maximum(err, err_clip), err_clip > err
    loss = aggregate_loss(0.5 * loss_tok, mask, loss_agg)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean(is_clipped.to(v.dtype), mask)}
    return loss, stats


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over masked token sequences.

    Shapes: rewards, values, mask [B, T] -> (advantages [B, T], returns [B, T]), 0 at padding.
    Only valid tokens are steps of the episode: masked positions are skipped
    (their rewards and values are ignored, even inside gaps), and the value
    after the last valid token is 0 (the episode terminated).
    Formula (next(t) = next valid position after t):
        delta_t = r_t + gamma * V_{next(t)} - V_t
        A_t     = delta_t + gamma * lam * A_{next(t)}
        R_t     = A_t + V_t   (the value-function target)
    Linear in (rewards, values); differentiable, though usually run under no_grad.
    """
    gamma = check_scalar("gamma", gamma, low=0.0, high=1.0)
    lam = check_scalar("lam", lam, low=0.0, high=1.0)
    mask = check_token_tensors(mask, "rewards", rewards, values=values)
    r, v = fill_padding(rewards, mask), fill_padding(values, mask)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    advs = []
    for t in reversed(range(r.shape[1])):
        m = mask[:, t]
        adv = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        adv = torch.where(m, adv, 0.0)
        advs.append(adv)
        next_value = torch.where(m, v[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    advantages = torch.stack(advs[::-1], dim=1)
    return advantages, fill_padding(advantages + v, mask)


def kl_penalty_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tensor:
    """Per-token RLHF rewards: -beta * KL estimate everywhere, plus the score at the end.

    Shapes: scores [B] (sequence reward, e.g. RM or verifier), logp, ref_logp,
    mask [B, T] -> rewards [B, T], 0 at padding.
    Formula: r_t = -beta * k(logp_t, ref_logp_t) + [t = last valid token] * score.
    Every row needs at least one valid token to carry its score.
    """
    beta = check_scalar("beta", beta, low=0.0)
    mask = check_token_tensors(mask, "logp", logp, ref_logp=ref_logp)
    check_tensor("scores", scores, 1, "[B]")
    if scores.shape[0] != logp.shape[0]:
        raise ValueError(f"scores: expected {logp.shape[0]} entries like logp, got {scores.shape[0]}")
    last = last_valid_index(mask)
    if bool((last < 0).any()):
        raise ValueError("mask: every row needs at least one valid token to carry its score")
    kl = token_kl(fill_padding(logp, mask), fill_padding(ref_logp, mask), estimator)
    at_end = torch.arange(logp.shape[1], device=logp.device).unsqueeze(0) == last.unsqueeze(1)
    rewards = -beta * kl + torch.where(at_end, scores.to(kl.dtype).unsqueeze(1), 0.0)
    return fill_padding(rewards, mask)
