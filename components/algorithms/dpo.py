"""Direct preference optimisation losses from sequence log-probabilities.

- ``sigmoid``: DPO, Rafailov et al. 2023 ("Direct Preference Optimization",
  Eq. 7), with the label-smoothed "conservative DPO" variant (Mitchell 2023,
  "A note on DPO with noisy preferences") when ``label_smoothing > 0``.
- ``ipo``: Azar et al. 2023 ("A General Theoretical Paradigm to Understand
  Learning from Human Preferences", Sec. 5.1, Eq. 17); IPO is usually paired
  with length-normalised log-probs (``sequence_logprob(..., reduce="mean")``).
- ``hinge``: the SLiC-style hinge loss (Zhao et al. 2023, "SLiC-HF", Eq. 1),
  as in Rafailov et al.'s discussion of alternative objectives.

All variants are functions of h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from components.algorithms.validate import check_float, check_same_shape, check_scalar, check_tensor, lookup


def dpo_sigmoid(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # l = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def dpo_ipo(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # l = (h - 1 / (2 beta))^2   (beta plays the role of IPO's tau)
    return (h - 1.0 / (2.0 * beta)) ** 2


def dpo_hinge(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # l = max(0, 1 - beta h)
    return torch.relu(1.0 - beta * h)


DPO_LOSSES: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "sigmoid": dpo_sigmoid,
    "ipo": dpo_ipo,
    "hinge": dpo_hinge,
}


def get_dpo_loss(name: str) -> Callable[[Tensor, float, float], Tensor]:
    """Return the preference loss ``name``: fn(h, beta, label_smoothing) -> per-pair loss."""
    return lookup(DPO_LOSSES, "DPO loss type", name)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-family loss for a batch of preference pairs.

    Shapes: four [B] sequence log-probs (sum of token log-probs of the
    response, see ``sequence_logprob``) -> (losses [B], chosen_rewards [B],
    rejected_rewards [B]); rewards are detached.
    Formulas: implicit reward r(y) = beta * (log pi(y) - log pi_ref(y));
    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l));
    losses = DPO_LOSSES[loss_type](h, beta, label_smoothing).
    ``label_smoothing`` in [0, 0.5) is only defined for ``sigmoid``.
    """
    fn = get_dpo_loss(loss_type)
    beta = check_scalar("beta", beta, low=0.0, low_open=True)
    label_smoothing = check_scalar("label_smoothing", label_smoothing, low=0.0, high=0.5, high_open=True)
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing: only supported for loss_type='sigmoid', not {loss_type!r}")
    check_tensor("policy_chosen_logps", policy_chosen_logps, 1, "[B]")
    check_float("policy_chosen_logps", policy_chosen_logps)
    for name, x in (
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        check_same_shape("policy_chosen_logps", policy_chosen_logps, name, x)
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    losses = fn(chosen_ratio - rejected_ratio, beta, label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
