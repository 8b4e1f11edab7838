"""ORPO: monolithic preference optimisation without a reference model.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
Model", Sec. 4 (Eq. 6-8): L = L_SFT + lambda * L_OR with
L_OR = -log sigmoid(log odds(y_w) - log odds(y_l)), odds(y) = P(y) / (1 - P(y)),
where P(y) is the length-normalised likelihood exp(mean_t log p(y_t)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from components.algorithms.validate import check_float, check_same_shape, check_scalar, check_tensor


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012, "Accurately
    Computing log(1 - exp(-|a|))"): log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2.
    Inputs above -tiny are clamped to -tiny so the result stays finite.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -math.log(2.0)
    # evaluate each branch only on inputs where it is accurate (and finite)
    a = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    b = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    return torch.where(near_zero, a, b)


def log_odds(logp: Tensor) -> Tensor:
    """log(p / (1 - p)) from log p (p in (0, 1)). Formula: logp - log1mexp(logp)."""
    return logp - log1mexp(logp)


def orpo_loss(
    chosen_logps: Tensor, rejected_logps: Tensor, lam: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Per-pair ORPO loss from LENGTH-NORMALISED log-probs.

    Shapes: chosen_logps, rejected_logps [B] = mean per-token log-prob of each
    response (``sequence_logprob(logp, mask, reduce="mean")``), all < 0
    -> (losses [B], log_odds_ratio [B] detached).
    Formula: losses = -chosen_logps + lam * (-log sigmoid(log_odds(chosen) - log_odds(rejected))).
    With lam = 0 this is the per-sequence mean-token NLL of the chosen response.
    """
    lam = check_scalar("lam", lam, low=0.0)
    check_tensor("chosen_logps", chosen_logps, 1, "[B]")
    check_float("chosen_logps", chosen_logps)
    check_same_shape("chosen_logps", chosen_logps, "rejected_logps", rejected_logps)
    ratio = log_odds(chosen_logps) - log_odds(rejected_logps)
    losses = -chosen_logps - lam * F.logsigmoid(ratio)
    return losses, ratio.detach()
