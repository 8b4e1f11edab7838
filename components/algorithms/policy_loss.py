"""Policy-gradient losses behind one signature, chosen by name (verl-style registry).

Every entry is ``fn(logp, old_logp, advantages, mask, *, ref_logp=None, clip_low=0.2,
clip_high=None, beta=0.0, kl_estimator="k3", loss_agg="token-mean", norm_constant=None)
-> (loss, stats)`` with token tensors ``[B, T]`` and advantages ``[B]`` or ``[B, T]``, so a
trainer switches objective by changing one recipe string and never branches on it.

- ``clip``: the PPO clipped surrogate with DAPO clip-higher, plus ``beta`` x a KL estimate to
  the reference inside the loss when ``ref_logp`` is given (GRPO, Shao et al. 2024, Eq. 3).
  With ``beta = 0`` (or no reference) it is exactly ``ppo_policy_loss``.
- ``vanilla``: the unclipped importance-weighted policy gradient, l_t = -rho_t A_t
  (REINFORCE when old_logp = logp.detach(): the gradient is -A_t grad log pi), plus the same
  optional KL term. Useful as the no-trust-region baseline.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.grpo import grpo_loss
from components.algorithms.kl import check_kl_in_loss, token_kl
from components.algorithms.masked import fill_padding, masked_mean
from components.algorithms.ppo import expand_advantages, policy_loss_stats
from components.algorithms.validate import check_scalar, check_token_tensors, lookup


def clip_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                     ref_logp: Tensor | None = None, clip_low: float = 0.2, clip_high: float | None = None,
                     beta: float = 0.0, kl_estimator: str = "k3", loss_agg: str = "token-mean",
                     norm_constant: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    # l_t = -min(rho_t A, clip(rho_t, 1-clip_low, 1+clip_high) A) + beta k(logp_t, ref_logp_t)
    return grpo_loss(logp, old_logp, ref_logp if beta > 0 else None, advantages, mask, clip_low=clip_low,
                     clip_high=clip_high, beta=beta if ref_logp is not None else 0.0, kl_estimator=kl_estimator,
                     loss_agg=loss_agg, norm_constant=norm_constant)


def vanilla_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                        ref_logp: Tensor | None = None, clip_low: float = 0.2, clip_high: float | None = None,
                        beta: float = 0.0, kl_estimator: str = "k3", loss_agg: str = "token-mean",
                        norm_constant: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    # l_t = -rho_t A_t + beta k(logp_t, ref_logp_t);  rho_t = exp(logp_t - old_logp_t)
    beta = check_scalar("beta", beta, low=0.0)
    check_kl_in_loss(kl_estimator, beta if ref_logp is not None else 0.0)
    others = {"old_logp": old_logp} if ref_logp is None else {"old_logp": old_logp, "ref_logp": ref_logp}
    mask = check_token_tensors(mask, "logp", logp, **others)
    adv = fill_padding(expand_advantages(advantages, logp), mask)
    logp, old_logp = fill_padding(logp, mask), fill_padding(old_logp, mask)
    ratio = torch.exp(logp - old_logp)
    surrogate = -ratio * adv
    stats = policy_loss_stats(logp, old_logp, ratio, torch.zeros_like(mask), mask)
    loss_tok = surrogate
    if ref_logp is not None and beta > 0:
        kl = token_kl(logp, fill_padding(ref_logp, mask), kl_estimator)
        loss_tok = surrogate + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    stats["policy_loss"] = aggregate_loss(surrogate.detach(), mask, loss_agg, norm_constant)
    return aggregate_loss(loss_tok, mask, loss_agg, norm_constant), stats


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "clip": clip_policy_loss,
    "vanilla": vanilla_policy_loss,
}


def get_policy_loss(name: str) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """Return the policy loss ``name`` (see ``POLICY_LOSSES``)."""
    return lookup(POLICY_LOSSES, "policy loss", name)
