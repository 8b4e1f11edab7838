"""Group-relative advantages and the GRPO loss.

- GRPO: Shao et al. 2024 (DeepSeekMath, Sec. 4.1, Eq. 3 and outcome
  supervision), used by DeepSeek-R1 (Guo et al. 2025, Sec. 2.2.1).
- Dr. GRPO: Liu et al. 2025 ("Understanding R1-Zero-Like Training", Sec. 3.1):
  no division by the group std (and constant-length normalisation, which is
  the ``seq-mean-token-sum-norm`` aggregation).
- RLOO: Ahmadian et al. 2024 ("Back to Basics", Sec. 3.3; Kool et al. 2019):
  leave-one-out baseline.
- Zero-variance groups carry no learning signal; DAPO (Yu et al. 2025,
  Sec. 3.2, "dynamic sampling") filters them out.

Rewards come either flat ``[B*G]`` (consecutive runs of ``group_size`` samples
share a prompt) or as ``[B, G]``; advantages come back in the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.kl import check_kl_in_loss, get_kl_estimator, token_kl
from components.algorithms.masked import fill_padding, masked_mean
from components.algorithms.ppo import clipped_surrogate, expand_advantages, policy_loss_stats
from components.algorithms.validate import (
    check_float,
    check_int,
    check_scalar,
    check_tensor,
    check_token_tensors,
    lookup,
)


def _as_groups(rewards: Tensor, group_size: int | None) -> Tensor:
    """View rewards [B*G] or [B, G] as [B, G], checking group_size."""
    check_tensor("rewards", rewards)
    check_float("rewards", rewards)
    if rewards.ndim == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"group_size: {group_size} disagrees with rewards shape {tuple(rewards.shape)}")
        return rewards
    if rewards.ndim != 1:
        raise ValueError(f"rewards: expected [B*G] or [B, G], got shape {tuple(rewards.shape)}")
    if group_size is None:
        raise ValueError("group_size: required for flat [B*G] rewards")
    check_int("group_size", group_size, low=1)
    if rewards.shape[0] % group_size:
        raise ValueError(f"group_size: {rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def zero_variance_groups(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """Boolean [B] marking groups whose rewards are all identical (no signal).

    Shapes: rewards [B*G] or [B, G] -> [B]; expand to samples with
    ``mask.repeat_interleave(G)``.
    """
    g = _as_groups(rewards, group_size)
    return g.amax(dim=1) == g.amin(dim=1)


def grpo_advantages(rewards: Tensor, group_size: int | None = None, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages: reward standardised within its group.

    Formula: A_i = (r_i - mean_g r) / (std_g r + eps), std with Bessel's
    correction; groups with identical rewards (including G = 1) get exactly 0.
    Shapes: [B*G] or [B, G] -> same.
    """
    check_scalar("eps", eps, low=0.0)
    g = _as_groups(rewards, group_size)
    centered = g - g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True, correction=1 if g.shape[1] > 1 else 0)
    adv = centered / (std + eps)
    adv = torch.where(zero_variance_groups(g).unsqueeze(1), 0.0, adv)
    return adv.view_as(rewards)


def drgrpo_advantages(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """Dr. GRPO advantages: A_i = r_i - mean_g r (no std scaling). Shapes: [B*G] or [B, G] -> same."""
    g = _as_groups(rewards, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    adv = torch.where(zero_variance_groups(g).unsqueeze(1), 0.0, adv)
    return adv.view_as(rewards)


def rloo_advantages(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """RLOO advantages: A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_g r).

    Shapes: [B*G] or [B, G] -> same; needs G >= 2.
    """
    g = _as_groups(rewards, group_size)
    n = g.shape[1]
    if n < 2:
        raise ValueError("group_size: RLOO needs at least 2 samples per group")
    adv = (g - g.mean(dim=1, keepdim=True)) * (n / (n - 1))
    adv = torch.where(zero_variance_groups(g).unsqueeze(1), 0.0, adv)
    return adv.view_as(rewards)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "dr-grpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}


def get_advantage_estimator(name: str) -> Callable[..., Tensor]:
    """Return the group advantage estimator ``name``: fn(rewards, group_size=None) -> advantages."""
    return lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    loss_agg: str = "token-mean",
    norm_constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO objective (Shao et al. 2024, Eq. 3): clipped surrogate + beta * k(logp, ref_logp).

    The KL term's VALUE estimates KL(pi || pi_ref), but as a loss its gradient (samples held
    fixed) is, in expectation: k2 -> grad KL(pi || pi_ref); k3 (GRPO's) -> grad KL(pi_ref || pi);
    k1 -> 0 (E_pi[grad log pi] = 0), so k1 is refused when beta > 0.

    Shapes: logp, old_logp, ref_logp [B, T]; advantages [B] (one per
    completion) or [B, T]; mask [B, T] -> scalar. ``ref_logp`` may be None only
    when beta == 0 (DAPO / Dr. GRPO drop the KL term).
    Formula: l_t = -min(rho_t A, clip(rho_t, 1-clip_low, 1+clip_high) A) + beta * k(logp_t, ref_logp_t),
    rho_t = exp(logp_t - old_logp_t); loss = aggregate_loss(l, mask, loss_agg).
    Stats: those of ``ppo_policy_loss`` plus ``kl`` (token-mean KL estimate,
    only when ref_logp is given) and ``policy_loss`` (surrogate part, aggregated).
    """
    clip_low = check_scalar("clip_low", clip_low, low=0.0, high=1.0)
    clip_high = clip_low if clip_high is None else check_scalar("clip_high", clip_high, low=0.0)
    beta = check_scalar("beta", beta, low=0.0)
    get_kl_estimator(kl_estimator)
    check_kl_in_loss(kl_estimator, beta)
    if ref_logp is None and beta > 0:
        raise ValueError("ref_logp: required when beta > 0")
    others = {"old_logp": old_logp} if ref_logp is None else {"old_logp": old_logp, "ref_logp": ref_logp}
    mask = check_token_tensors(mask, "logp", logp, **others)
    adv = fill_padding(expand_advantages(advantages, logp), mask)
    logp, old_logp = fill_padding(logp, mask), fill_padding(old_logp, mask)
    surrogate, ratio, is_clipped = clipped_surrogate(logp, old_logp, adv, clip_low, clip_high)
    loss_tok = surrogate
    stats = policy_loss_stats(logp, old_logp, ratio, is_clipped, mask)
    if ref_logp is not None:
        kl = token_kl(logp, fill_padding(ref_logp, mask), kl_estimator)
        loss_tok = surrogate + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    stats["policy_loss"] = aggregate_loss(surrogate.detach(), mask, loss_agg, norm_constant)
    return aggregate_loss(loss_tok, mask, loss_agg, norm_constant), stats
