"""OREO: offline RL for multi-step reasoning via soft Bellman consistency.

Wang et al. 2024, "Offline Reinforcement Learning for LLM Multi-Step
Reasoning" (OREO), Sec. 3, building on path consistency learning (Nachum et al.
2017). In the KL-regularised MDP with deterministic transitions and a sparse
terminal reward R, the optimal policy and value satisfy, for every state s_k
of a trajectory of actions a_0..a_{K-1} (soft Bellman equation, telescoped):

    V(s_k) = R - beta * sum_{j >= k} log pi(a_j | s_j) / pi_ref(a_j | s_j)

Exactly what this module computes, with rho_j = log pi(a_j|s_j) - log pi_ref(a_j|s_j)
and sg[.] = stop-gradient (detach):

    value loss  (trains V):  L_V  = agg_k ( V(s_k) - R + beta * sg[ sum_{j>=k} rho_j ] )^2
    policy loss (trains pi): L_pi = agg_k ( sg[V(s_k)] - R + beta * rho_k + beta * sg[ sum_{j>k} rho_j ] )^2

so the value regresses onto the Monte-Carlo soft return under the current
policy, and each action's log-ratio is pushed towards the one that makes the
equation hold given the (fixed) value. ``agg`` is ``aggregate_loss`` over
actions; the default ``seq-mean-token-mean`` is the paper's (1/K) sum_k per
trajectory. The paper adds alpha * KL(pi || pi_ref) as a regulariser; compute
it separately (e.g. ``distill_loss(policy_logits, ref_logits, mask, "reverse-kl")``).

Actions (``mode``):
- ``"token"``: every valid token is an action; rho_k is the token log-ratio and
  V(s_k) the value read at that token.
- ``"step"``: a reasoning step is an action. ``step_end_mask[b, t]`` is True on
  the last token of each step (the last valid token always closes the final
  step); rho_k sums the token log-ratios of step k and V(s_k) is the value read
  at the step's first token. An all-False ``step_end_mask`` makes the whole
  response one action (response-level consistency).
``values[b, t]`` is V of the state in which token t is generated (aligned like logp).
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.algorithms.aggregate import aggregate_loss
from components.algorithms.validate import (
    check_choice,
    check_float,
    check_mask,
    check_same_shape,
    check_scalar,
    check_tensor,
)

OREO_MODES = ("token", "step")


def _validate(logp, ref_logp, values, rewards, mask, beta, mode, step_end_mask):
    check_choice("mode", mode, OREO_MODES)
    beta = check_scalar("beta", beta, low=0.0)
    check_tensor("logp", logp, 2, "[B, T]")
    check_float("logp", logp)
    check_same_shape("logp", logp, "ref_logp", ref_logp)
    check_same_shape("logp", logp, "values", values)
    check_float("values", values)
    check_tensor("rewards", rewards, 1, "[B]")
    if rewards.shape[0] != logp.shape[0]:
        raise ValueError(f"rewards: expected {logp.shape[0]} entries like logp, got {rewards.shape[0]}")
    mask = check_mask("mask", mask, "logp", logp)
    if mode == "token":
        if step_end_mask is not None:
            raise ValueError("step_end_mask: only used with mode='step'")
        return beta, mask, mask
    if step_end_mask is None:
        raise ValueError("step_end_mask: required with mode='step'")
    return beta, mask, check_mask("step_end_mask", step_end_mask, "logp", logp)


def _steps(logp, ref_logp, values, mask, step_end) -> tuple[Tensor, Tensor, Tensor]:
    """Collapse tokens into actions -> (rho [B, K], V [B, K], valid [B, K]) with K = T slots."""
    b, t = mask.shape
    ends = (step_end & mask).long()
    step_id = torch.cumsum(ends, dim=1) - ends  # index of the action each token belongs to
    log_ratio = torch.where(mask, logp - ref_logp, 0.0)
    rho = torch.zeros_like(log_ratio).scatter_add(1, step_id, log_ratio)
    positions = torch.arange(t, device=mask.device).expand(b, t)
    first = torch.full_like(step_id, t).scatter_reduce(
        1, step_id, torch.where(mask, positions, t), reduce="amin"
    )
    valid = first < t
    v = torch.where(valid, values.gather(1, first.clamp(max=t - 1)), 0.0)
    return rho, v, valid


def _reverse_cumsum(x: Tensor) -> Tensor:
    # out_k = sum_{j >= k} x_j
    return x.flip(-1).cumsum(-1).flip(-1)


def oreo_value_loss(
    values: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    rewards: Tensor,
    mask: Tensor,
    beta: float,
    mode: str = "token",
    step_end_mask: Tensor | None = None,
    loss_agg: str = "seq-mean-token-mean",
) -> Tensor:
    """OREO value loss L_V (module docstring); gradients reach ``values`` only.

    Shapes: values, logp, ref_logp, mask, step_end_mask [B, T]; rewards [B] -> scalar.
    """
    beta, mask, step_end = _validate(logp, ref_logp, values, rewards, mask, beta, mode, step_end_mask)
    rho, v, valid = _steps(logp.detach(), ref_logp.detach(), values, mask, step_end)
    residual = v - rewards.to(v.dtype).unsqueeze(1) + beta * _reverse_cumsum(rho)
    return aggregate_loss(residual**2, valid, loss_agg)


def oreo_policy_loss(
    logp: Tensor,
    ref_logp: Tensor,
    values: Tensor,
    rewards: Tensor,
    mask: Tensor,
    beta: float,
    mode: str = "token",
    step_end_mask: Tensor | None = None,
    loss_agg: str = "seq-mean-token-mean",
) -> Tensor:
    """OREO policy loss L_pi (module docstring); gradients reach ``logp`` only,
    each action through its own log-ratio.

    Shapes: logp, ref_logp, values, mask, step_end_mask [B, T]; rewards [B] -> scalar.
    """
    beta, mask, step_end = _validate(logp, ref_logp, values, rewards, mask, beta, mode, step_end_mask)
    rho, v, valid = _steps(logp, ref_logp.detach(), values.detach(), mask, step_end)
    future = (_reverse_cumsum(rho) - rho).detach()
    residual = v - rewards.to(v.dtype).unsqueeze(1) + beta * (rho + future)
    return aggregate_loss(residual**2, valid, loss_agg)
